// Splits a template into tokens the way jinja2's lexer does under transformers' settings
// (trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False): template text, the
// {{ }} / {% %} delimiters and the names, literals and operators between them. Comments vanish,
// raw blocks become text, and the whitespace control (-, +, trim and lstrip) is applied here.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace uniattn::jinja {

enum class TokType {
  Data,
  BlockBegin,
  BlockEnd,
  VarBegin,
  VarEnd,
  Name,
  String,
  Int,
  Float,
  Op,
  Eof
};

struct Token {
  TokType type = TokType::Eof;
  std::string text;  // Data/Name/Op text; String: the unescaped value
  int line = 1;
  int64_t ival = 0;
  double fval = 0;
};

// Throws TemplateError (with the line) on malformed input: an unterminated tag, comment, raw
// block or string, an unexpected character, unbalanced brackets, or a literal this build cannot
// represent exactly (integers beyond 64 bits, \N{...} escapes).
std::vector<Token> tokenize(std::string_view source);

}  // namespace uniattn::jinja
