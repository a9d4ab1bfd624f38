// The recursive-descent parser behind parse_template (jinja_ast.h), following jinja2's
// parser.py rule for rule so precedence and associativity match: expressions live in
// jinja_parse_expr.cpp, statements in jinja_parse_stmt.cpp.
#pragma once
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "io/chat/jinja_ast.h"
#include "io/chat/jinja_lexer.h"

namespace uniattn::jinja {

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : toks_(std::move(tokens)) {}
  Body parse();

 private:
  // ---- token stream
  const Token& cur() const { return toks_[pos_]; }
  const Token& look(size_t k = 1) const;
  void next() {
    if (pos_ + 1 < toks_.size()) ++pos_;
  }
  bool is_op(std::string_view op) const;
  bool is_name(std::string_view name) const;
  bool skip_op(std::string_view op);
  bool skip_name(std::string_view name);
  void expect_op(std::string_view op);
  void expect(TokType type, std::string_view what);
  std::string expect_name();
  [[noreturn]] void fail(const std::string& msg) const;
  [[noreturn]] void unsupported(const std::string& what) const;
  std::string describe(const Token& t) const;

  // ---- statements (jinja_parse_stmt.cpp)
  Body subparse(std::initializer_list<std::string_view> end_names);
  Body parse_statements(std::initializer_list<std::string_view> end_names, bool drop_needle);
  StmtPtr parse_statement();
  StmtPtr parse_if();
  StmtPtr parse_for();
  StmtPtr parse_set();
  StmtPtr parse_macro();
  StmtPtr parse_scope();
  void parse_targets(Stmt& s, std::string_view end_name);

  // ---- expressions (jinja_parse_expr.cpp)
  ExprPtr parse_expression(bool with_condexpr = true);
  ExprPtr parse_tuple(bool with_condexpr = true, std::string_view extra_end = {},
                      bool explicit_parens = false);
  bool is_tuple_end(std::string_view extra_end) const;
  ExprPtr parse_condexpr();
  ExprPtr parse_or();
  ExprPtr parse_and();
  ExprPtr parse_not();
  ExprPtr parse_compare();
  ExprPtr parse_math1();
  ExprPtr parse_concat();
  ExprPtr parse_math2();
  ExprPtr parse_pow();
  ExprPtr parse_unary(bool with_filter = true);
  ExprPtr parse_primary();
  ExprPtr parse_sequence(Expr::Kind kind, std::string_view close);
  ExprPtr parse_dict();
  ExprPtr parse_postfix(ExprPtr node);
  ExprPtr parse_filter_expr(ExprPtr node);
  ExprPtr parse_subscript(ExprPtr node);
  ExprPtr parse_subscribed(ExprPtr node);
  void parse_call_args(Expr& call);
  ExprPtr parse_filter(ExprPtr node);
  ExprPtr parse_test(ExprPtr node);
  ExprPtr make(Expr::Kind kind, int line) const;
  ExprPtr make_binary(Expr::Kind kind, std::string op, ExprPtr l, ExprPtr r, int line) const;

  std::vector<Token> toks_;
  size_t pos_ = 0;
  int depth_ = 0;       // expression nesting, bounded so a hostile template cannot overflow
  int loop_depth_ = 0;  // for loops around the current statement (break/continue need one)
};

// Counts nesting on the way down and fails past a fixed depth.
class DepthGuard {
 public:
  DepthGuard(int& depth, int line);
  ~DepthGuard() { --depth_; }
  DepthGuard(const DepthGuard&) = delete;
  DepthGuard& operator=(const DepthGuard&) = delete;

 private:
  int& depth_;
};

}  // namespace uniattn::jinja
