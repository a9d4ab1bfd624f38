// Runs a parsed template (jinja_ast.h) the way jinja2 renders it: scoping (a for loop body and a
// macro each get their own scope, `if` does not), loop variables and loop controls, macros,
// namespaces, and output. The builtins live in jinja_builtins.h.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

#include "io/chat/jinja_ast.h"

namespace uniattn::jinja {

// Bounds that keep a hostile or broken template from exhausting memory or time.
struct Limits {
  size_t max_output = size_t{16} << 20;  // bytes of any one string, the output included
  int max_call_depth = 64;               // nested macro calls
  int max_nesting = 1500;                // nested statements + expressions being evaluated,
                                         // which bounds the C++ stack the interpreter uses
  int64_t max_steps = 10'000'000;        // loop iterations + calls + output pieces
};

class Interpreter {
 public:
  // `globals` are jinja2's environment globals; `vars` the render() keyword arguments, which
  // shadow them.
  Interpreter(const Limits& limits, const Dict& globals, const Dict& vars);

  // Throws TemplateError (with the template line) for anything that fails or is unsupported.
  std::string render(const Body& body);

  // For the builtins: calling a value, and the filters and tests by name (map, select, ...).
  Value call(const Value& callee, CallArgs& args);
  Value filter(const std::string& name, const Value& input, CallArgs& args);
  bool test(const std::string& name, const Value& value, CallArgs& args);
  // Fails when a string of `bytes` would exceed the output limit.
  void check_size(size_t bytes) const;
  // Counts one unit of work against max_steps.
  void step();

 private:
  struct Frame {
    Frame* parent = nullptr;
    Dict vars;
  };
  enum class Flow { Normal, Break, Continue };

  Value lookup(const std::string& name, const Frame& f) const;
  void emit(std::string& out, std::string_view piece);

  Flow exec(const Body& body, Frame& f, std::string& out);
  Flow exec_stmt(const Stmt& s, Frame& f, std::string& out);
  Flow exec_if(const Stmt& s, Frame& f, std::string& out);
  void exec_for(const Stmt& s, Frame& f, std::string& out);
  void exec_set(const Stmt& s, Frame& f);
  void assign(const Stmt& s, Frame& f, Value v);
  void define_macro(const Stmt& s, Frame& f);
  Value call_macro(const Stmt& s, CallArgs& args);

  Value eval(const Expr& e, Frame& f);
  Value eval_node(const Expr& e, Frame& f);
  Value eval_call(const Expr& e, Frame& f);
  Value eval_operator(const Expr& e, Frame& f);
  Value eval_literal(const Expr& e, Frame& f);
  Value eval_slice(const Expr& e, Frame& f);
  Value eval_compare(const Expr& e, Frame& f);
  CallArgs eval_args(const Expr& e, Frame& f, size_t first);

  Limits limits_;
  const Dict& globals_;
  Frame root_;
  int call_depth_ = 0;
  int nesting_ = 0;
  int64_t steps_ = 0;
};

}  // namespace uniattn::jinja
