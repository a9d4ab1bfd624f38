#include "io/chat/jinja_eval.h"

#include <algorithm>

#include "io/chat/jinja_builtins.h"
#include "io/chat/jinja_text.h"

namespace uniattn::jinja {

namespace {

// Rethrows a TemplateError that does not know its line yet with `line`.
template <typename F>
auto at_line(int line, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (TemplateError& e) {
    if (e.line == 0) e.line = line;
    throw;
  }
}

// Counts one level of evaluation nesting for the duration of a scope.
class Nesting {
 public:
  Nesting(int& n, int max) : n_(n) {
    if (++n_ > max) {
      --n_;
      raise("the template nests deeper than ", std::to_string(max),
            " levels while rendering (macro recursion)");
    }
  }
  ~Nesting() { --n_; }
  Nesting(const Nesting&) = delete;
  Nesting& operator=(const Nesting&) = delete;

 private:
  int& n_;
};

}  // namespace

Interpreter::Interpreter(const Limits& limits, const Dict& globals, const Dict& vars)
    : limits_(limits), globals_(globals) {
  root_.vars = vars;
}

std::string Interpreter::render(const Body& body) {
  std::string out;
  exec(body, root_, out);
  return out;
}

void Interpreter::check_size(size_t bytes) const {
  if (bytes > limits_.max_output)
    raise("output larger than the limit of ", std::to_string(limits_.max_output), " bytes");
}

void Interpreter::step() {
  if (++steps_ > limits_.max_steps)
    raise("the template ran more than ", std::to_string(limits_.max_steps),
          " steps (loop iterations, calls and outputs)");
}

Value Interpreter::lookup(const std::string& name, const Frame& f) const {
  for (const Frame* p = &f; p; p = p->parent)
    if (const Value* v = p->vars.find(name)) return *v;
  if (const Value* g = globals_.find(name)) return *g;
  return Value::undefined("'" + name + "' is undefined");
}

void Interpreter::emit(std::string& out, std::string_view piece) {
  check_size(out.size() + piece.size());
  out.append(piece);
}

Value Interpreter::call(const Value& callee, CallArgs& args) {
  if (callee.is_undefined()) undefined_error(callee);
  if (!callee.is_callable()) raise("'", callee.type_name(), "' object is not callable");
  step();
  return callee.fn().fn(*this, args);
}

Value Interpreter::filter(const std::string& name, const Value& input, CallArgs& args) {
  step();
  return apply_filter(*this, name, input, args);
}

bool Interpreter::test(const std::string& name, const Value& value, CallArgs& args) {
  return apply_test(*this, name, value, args);
}

// ---- statements -------------------------------------------------------------------------------

Interpreter::Flow Interpreter::exec(const Body& body, Frame& f, std::string& out) {
  Nesting nesting(nesting_, limits_.max_nesting);
  for (const auto& s : body) {
    const Flow flow = exec_stmt(*s, f, out);
    if (flow != Flow::Normal) return flow;
  }
  return Flow::Normal;
}

Interpreter::Flow Interpreter::exec_stmt(const Stmt& s, Frame& f, std::string& out) {
  return at_line(s.line, [&] {
    switch (s.kind) {
      case Stmt::Kind::Text:
        emit(out, s.text);
        break;
      case Stmt::Kind::Output:
        step();
        emit(out, to_str(eval(*s.expr, f)));
        break;
      case Stmt::Kind::If:
        return exec_if(s, f, out);
      case Stmt::Kind::For:
        exec_for(s, f, out);
        break;
      case Stmt::Kind::Set:
      case Stmt::Kind::SetBlock:
        exec_set(s, f);
        break;
      case Stmt::Kind::Macro:
        define_macro(s, f);
        break;
      case Stmt::Kind::Break:
        return Flow::Break;
      case Stmt::Kind::Continue:
        return Flow::Continue;
      case Stmt::Kind::Scope: {
        Frame inner{&f, {}};
        return exec(s.bodies[0], inner, out);
      }
    }
    return Flow::Normal;
  });
}

Interpreter::Flow Interpreter::exec_if(const Stmt& s, Frame& f, std::string& out) {
  for (size_t i = 0; i < s.conds.size(); ++i)
    if (truthy(eval(*s.conds[i], f))) return exec(s.bodies[i], f, out);
  return s.has_else ? exec(s.bodies.back(), f, out) : Flow::Normal;
}

namespace {

std::shared_ptr<Object> make_loop(const std::shared_ptr<const std::vector<Value>>& items,
                                  size_t i) {
  auto loop = std::make_shared<Object>();
  loop->type = "LoopContext";
  loop->loop_items = items;
  loop->loop_index = static_cast<int64_t>(i);
  return loop;
}

}  // namespace

void Interpreter::exec_for(const Stmt& s, Frame& f, std::string& out) {
  std::vector<Value> items = iterate(eval(*s.expr, f));
  auto bind = [&](Frame& fr, const Value& item) {
    if (!s.unpack) {
      fr.vars.set(s.targets[0], item);
      return;
    }
    const auto parts = iterate(item);
    if (parts.size() != s.targets.size())
      raise(parts.size() > s.targets.size() ? "too many" : "not enough", " values to unpack");
    for (size_t k = 0; k < parts.size(); ++k) fr.vars.set(s.targets[k], parts[k]);
  };
  if (s.cond) {  // the loop filter sees the loop variables but not `loop`
    std::vector<Value> kept;
    for (const auto& item : items) {
      step();
      Frame probe{&f, {}};
      bind(probe, item);
      if (truthy(eval(*s.cond, probe))) kept.push_back(item);
    }
    items = std::move(kept);
  }
  if (items.empty() && s.has_else) {
    Frame inner{&f, {}};
    exec(s.bodies[1], inner, out);
    return;
  }
  const auto shared = std::make_shared<const std::vector<Value>>(std::move(items));
  for (size_t i = 0; i < shared->size(); ++i) {
    step();
    Frame iter{&f, {}};  // fresh per iteration: a `set` in the body does not outlive it
    bind(iter, (*shared)[i]);
    iter.vars.set("loop", Value::object(make_loop(shared, i)));
    if (exec(s.bodies[0], iter, out) == Flow::Break) break;
  }
}

void Interpreter::exec_set(const Stmt& s, Frame& f) {
  if (s.kind == Stmt::Kind::SetBlock) {
    Frame inner{&f, {}};
    std::string buf;
    exec(s.bodies[0], inner, buf);
    assign(s, f, Value::string(std::move(buf)));
    return;
  }
  assign(s, f, eval(*s.expr, f));
}

void Interpreter::assign(const Stmt& s, Frame& f, Value v) {
  if (!s.attr.empty()) {
    const Value ns = lookup(s.targets[0], f);
    if (!ns.is_object() || !ns.object().mutable_attrs)
      raise("cannot assign attribute on non-namespace object");
    if (s.attr[0] == '_') raise("cannot store underscore-prefixed attributes on a namespace");
    ns.object().attrs.set(s.attr, std::move(v));
    return;
  }
  if (!s.unpack) {
    f.vars.set(s.targets[0], std::move(v));
    return;
  }
  const auto parts = iterate(v);
  if (parts.size() != s.targets.size())
    raise(parts.size() > s.targets.size() ? "too many" : "not enough", " values to unpack");
  for (size_t k = 0; k < parts.size(); ++k) f.vars.set(s.targets[k], parts[k]);
}

void Interpreter::define_macro(const Stmt& s, Frame& f) {
  const Stmt* def = &s;
  f.vars.set(s.name, Value::callable(s.name, [def](Interpreter& in, CallArgs& args) {
               return in.call_macro(*def, args);
             }));
}

Value Interpreter::call_macro(const Stmt& s, CallArgs& args) {
  if (call_depth_ >= limits_.max_call_depth)
    raise("macro calls nested deeper than ", std::to_string(limits_.max_call_depth));
  struct Depth {
    int& d;
    ~Depth() { --d; }
  } depth{++call_depth_};
  if (args.args.size() > s.params.size())
    raise("macro '", s.name, "' takes not more than ", std::to_string(s.params.size()),
          " argument(s)");
  Frame mf{&root_, {}};  // macros see the template's top-level variables as they are now
  for (size_t i = 0; i < s.params.size(); ++i) {
    const bool given = i < args.args.size() ||
                       std::any_of(args.kwargs.begin(), args.kwargs.end(),
                                   [&](const auto& kw) { return kw.first == s.params[i]; });
    Value v;
    if (given)
      v = args.take(s.params[i], i);
    else if (s.defaults[i])
      v = eval(*s.defaults[i], mf);  // after the earlier parameters, which it may read
    else
      v = Value::undefined("parameter '" + s.params[i] + "' was not provided");
    mf.vars.set(s.params[i], std::move(v));
  }
  if (!args.kwargs.empty())
    raise("macro '", s.name, "' takes no keyword argument '", args.kwargs.front().first, "'");
  std::string out;
  exec(s.bodies[0], mf, out);
  return Value::string(std::move(out));
}

// ---- expressions ------------------------------------------------------------------------------

Value Interpreter::eval(const Expr& e, Frame& f) {
  Nesting nesting(nesting_, limits_.max_nesting);
  return at_line(e.line, [&] { return eval_node(e, f); });
}

CallArgs Interpreter::eval_args(const Expr& e, Frame& f, size_t first) {
  CallArgs a;
  for (size_t i = first; i < e.args.size(); ++i) a.args.push_back(eval(*e.args[i], f));
  for (const auto& [k, v] : e.kwargs) a.kwargs.emplace_back(k, eval(*v, f));
  return a;
}

Value Interpreter::eval_node(const Expr& e, Frame& f) {
  using K = Expr::Kind;
  switch (e.kind) {
    case K::Const:
      return e.value;
    case K::Name:
      return lookup(e.name, f);
    case K::List:
    case K::Tuple:
    case K::Dict:
      return eval_literal(e, f);
    case K::Slice:
      return eval_slice(e, f);
    case K::Call:
    case K::Filter:
    case K::Test:
      return eval_call(e, f);
    case K::Compare:
      return eval_compare(e, f);
    case K::Cond:  // args: the value if true, the test, the value if false (may be absent)
      if (truthy(eval(*e.args[1], f))) return eval(*e.args[0], f);
      return e.args[2] ? eval(*e.args[2], f)
                       : Value::undefined(
                             "the inline if-expression evaluated to false and no "
                             "else section was defined");
    default:
      return eval_operator(e, f);
  }
}

Value Interpreter::eval_call(const Expr& e, Frame& f) {
  const Value target = eval(*e.args[0], f);  // the callee, or the filtered / tested value
  CallArgs a = eval_args(e, f, 1);
  if (e.kind == Expr::Kind::Call) return call(target, a);
  if (e.kind == Expr::Kind::Filter) return filter(e.name, target, a);
  return Value::boolean(test(e.name, target, a) != e.negated);
}

Value Interpreter::eval_operator(const Expr& e, Frame& f) {
  using K = Expr::Kind;
  const Value left = eval(*e.args[0], f);  // Python evaluates left to right
  switch (e.kind) {
    case K::Attr:
      return get_attr(left, e.name);
    case K::Item:
      return get_item(left, eval(*e.args[1], f));
    case K::Neg:
      return negate(left);
    case K::Pos:
      if (!left.is_number()) raise("bad operand type for unary +: '", left.type_name(), "'");
      return left.is_bool() ? Value::integer(left.as_int()) : left;
    case K::Not:
      return Value::boolean(!truthy(left));
    case K::And:
    case K::Or:
      return truthy(left) == (e.kind == K::And) ? eval(*e.args[1], f) : left;
    case K::Binary:
      return binary_op(*this, e.name, left, eval(*e.args[1], f));
    case K::Concat: {
      std::string s = to_str(left);
      for (size_t i = 1; i < e.args.size(); ++i) {
        s += to_str(eval(*e.args[i], f));
        check_size(s.size());
      }
      return Value::string(std::move(s));
    }
    default:
      raise("internal error: unknown expression");
  }
}

Value Interpreter::eval_literal(const Expr& e, Frame& f) {
  if (e.kind != Expr::Kind::Dict) {
    List items;
    for (const auto& a : e.args) items.push_back(eval(*a, f));
    return Value::list(std::move(items), e.kind == Expr::Kind::Tuple);
  }
  Dict d;
  for (size_t i = 0; i < e.args.size(); i += 2) {
    const Value key = eval(*e.args[i], f);
    if (!key.is_string()) raise("unsupported: a dict key of type ", key.type_name());
    d.set(key.str(), eval(*e.args[i + 1], f));
  }
  return Value::dict(std::move(d));
}

Value Interpreter::eval_slice(const Expr& e, Frame& f) {
  const Value obj = eval(*e.args[0], f);
  std::optional<int64_t> part[3];
  for (int k = 0; k < 3; ++k) {
    if (!e.args[k + 1]) continue;
    const Value v = eval(*e.args[k + 1], f);
    if (v.is_none()) continue;
    if (!v.is_int() && !v.is_bool()) raise("slice indices must be integers or None");
    part[k] = v.as_int();
  }
  if (obj.is_undefined()) undefined_error(obj);
  if (obj.is_string()) return Value::string(py_slice(obj.str(), part[0], part[1], part[2]));
  if (!obj.is_list() || obj.is_view())
    return Value::undefined("'" + std::string(obj.type_name()) + "' object is not subscriptable");
  const auto& items = obj.items();
  const auto r = slice_range(static_cast<int64_t>(items.size()), part[0], part[1], part[2]);
  List out;
  for (int64_t k = 0; k < r.count; ++k) out.push_back(items[r.start + k * r.step]);
  return Value::list(std::move(out), obj.is_tuple());
}

Value Interpreter::eval_compare(const Expr& e, Frame& f) {
  Value left = eval(*e.args[0], f);
  for (size_t i = 0; i < e.ops.size(); ++i) {
    Value right = eval(*e.args[i + 1], f);
    if (!compare(e.ops[i], left, right)) return Value::boolean(false);
    left = std::move(right);
  }
  return Value::boolean(true);
}

}  // namespace uniattn::jinja
