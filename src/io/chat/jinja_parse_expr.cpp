// Expressions, as jinja2's parser.py parses them (parse_tuple down to parse_primary).
#include "io/chat/jinja_parser.h"

namespace uniattn::jinja {

namespace {
constexpr int kMaxDepth = 200;
}

DepthGuard::DepthGuard(int& depth, int line) : depth_(depth) {
  if (++depth_ > kMaxDepth) {
    --depth_;
    throw TemplateError("template nested too deeply (more than 200 levels)", line);
  }
}

// ---- token stream -----------------------------------------------------------------------------

const Token& Parser::look(size_t k) const { return toks_[std::min(pos_ + k, toks_.size() - 1)]; }

bool Parser::is_op(std::string_view op) const {
  return cur().type == TokType::Op && cur().text == op;
}

bool Parser::is_name(std::string_view name) const {
  return cur().type == TokType::Name && cur().text == name;
}

bool Parser::skip_op(std::string_view op) {
  if (!is_op(op)) return false;
  next();
  return true;
}

bool Parser::skip_name(std::string_view name) {
  if (!is_name(name)) return false;
  next();
  return true;
}

void Parser::expect_op(std::string_view op) {
  if (!skip_op(op)) fail("expected '" + std::string(op) + "', got " + describe(cur()));
}

void Parser::expect(TokType type, std::string_view what) {
  if (cur().type != type) fail("expected " + std::string(what) + ", got " + describe(cur()));
  next();
}

std::string Parser::expect_name() {
  if (cur().type != TokType::Name) fail("expected a name, got " + describe(cur()));
  std::string n = cur().text;
  next();
  return n;
}

void Parser::fail(const std::string& msg) const { throw TemplateError(msg, cur().line); }

void Parser::unsupported(const std::string& what) const {
  throw TemplateError("unsupported: " + what, cur().line);
}

std::string Parser::describe(const Token& t) const {
  switch (t.type) {
    case TokType::Eof:
      return "end of template";
    case TokType::BlockEnd:
      return "'%}'";
    case TokType::VarEnd:
      return "'}}'";
    case TokType::BlockBegin:
      return "'{%'";
    case TokType::VarBegin:
      return "'{{'";
    case TokType::Data:
      return "template text";
    case TokType::String:
      return "a string";
    default:
      return "'" + t.text + "'";
  }
}

ExprPtr Parser::make(Expr::Kind kind, int line) const {
  auto e = std::make_unique<Expr>();
  e->kind = kind;
  e->line = line;
  return e;
}

ExprPtr Parser::make_binary(Expr::Kind kind, std::string op, ExprPtr l, ExprPtr r, int line) const {
  auto e = make(kind, line);
  e->name = std::move(op);
  e->args.push_back(std::move(l));
  e->args.push_back(std::move(r));
  return e;
}

// ---- expressions ------------------------------------------------------------------------------

ExprPtr Parser::parse_expression(bool with_condexpr) {
  DepthGuard guard(depth_, cur().line);
  return with_condexpr ? parse_condexpr() : parse_or();
}

bool Parser::is_tuple_end(std::string_view extra_end) const {
  const auto t = cur().type;
  if (t == TokType::VarEnd || t == TokType::BlockEnd || t == TokType::Eof || is_op(")"))
    return true;
  return !extra_end.empty() && is_name(extra_end);
}

ExprPtr Parser::parse_tuple(bool with_condexpr, std::string_view extra_end, bool explicit_parens) {
  const int line = cur().line;
  std::vector<ExprPtr> items;
  bool is_tuple = false;
  while (true) {
    if (!items.empty()) expect_op(",");
    if (is_tuple_end(extra_end)) break;
    items.push_back(parse_expression(with_condexpr));
    if (!is_op(",")) break;
    is_tuple = true;
  }
  if (!is_tuple) {
    if (!items.empty()) return std::move(items[0]);
    if (!explicit_parens) fail("expected an expression, got " + describe(cur()));
  }
  auto t = make(Expr::Kind::Tuple, line);
  t->args = std::move(items);
  return t;
}

ExprPtr Parser::parse_condexpr() {
  const int line = cur().line;
  ExprPtr expr1 = parse_or();
  while (skip_name("if")) {
    ExprPtr test = parse_or();
    ExprPtr other = skip_name("else") ? parse_condexpr() : nullptr;
    auto c = make(Expr::Kind::Cond, line);
    c->args.push_back(std::move(expr1));
    c->args.push_back(std::move(test));
    c->args.push_back(std::move(other));
    expr1 = std::move(c);
  }
  return expr1;
}

ExprPtr Parser::parse_or() {
  const int line = cur().line;
  ExprPtr left = parse_and();
  while (skip_name("or"))
    left = make_binary(Expr::Kind::Or, "or", std::move(left), parse_and(), line);
  return left;
}

ExprPtr Parser::parse_and() {
  const int line = cur().line;
  ExprPtr left = parse_not();
  while (skip_name("and"))
    left = make_binary(Expr::Kind::And, "and", std::move(left), parse_not(), line);
  return left;
}

ExprPtr Parser::parse_not() {
  if (is_name("not")) {
    const int line = cur().line;
    next();
    DepthGuard guard(depth_, line);
    auto n = make(Expr::Kind::Not, line);
    n->args.push_back(parse_not());
    return n;
  }
  return parse_compare();
}

ExprPtr Parser::parse_compare() {
  const int line = cur().line;
  ExprPtr first = parse_math1();
  auto cmp = make(Expr::Kind::Compare, line);
  while (true) {
    static constexpr std::string_view kOps[] = {"==", "!=", "<", "<=", ">", ">="};
    std::string op;
    for (auto o : kOps)
      if (is_op(o)) op = o;
    if (!op.empty()) {
      next();
    } else if (skip_name("in")) {
      op = "in";
    } else if (is_name("not") && look().type == TokType::Name && look().text == "in") {
      next(), next();
      op = "notin";
    } else {
      break;
    }
    cmp->ops.push_back(op);
    cmp->args.push_back(parse_math1());
  }
  if (cmp->ops.empty()) return first;
  cmp->args.insert(cmp->args.begin(), std::move(first));
  return cmp;
}

ExprPtr Parser::parse_math1() {
  const int line = cur().line;
  ExprPtr left = parse_concat();
  while (is_op("+") || is_op("-")) {
    std::string op = cur().text;
    next();
    left = make_binary(Expr::Kind::Binary, op, std::move(left), parse_concat(), line);
  }
  return left;
}

ExprPtr Parser::parse_concat() {
  const int line = cur().line;
  ExprPtr first = parse_math2();
  if (!is_op("~")) return first;
  auto c = make(Expr::Kind::Concat, line);
  c->args.push_back(std::move(first));
  while (skip_op("~")) c->args.push_back(parse_math2());
  return c;
}

ExprPtr Parser::parse_math2() {
  const int line = cur().line;
  ExprPtr left = parse_pow();
  while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
    std::string op = cur().text;
    next();
    left = make_binary(Expr::Kind::Binary, op, std::move(left), parse_pow(), line);
  }
  return left;
}

ExprPtr Parser::parse_pow() {
  const int line = cur().line;
  ExprPtr left = parse_unary();
  while (skip_op("**"))  // left-associative in jinja2, unlike Python
    left = make_binary(Expr::Kind::Binary, "**", std::move(left), parse_unary(), line);
  return left;
}

ExprPtr Parser::parse_unary(bool with_filter) {
  const int line = cur().line;
  DepthGuard guard(depth_, line);
  ExprPtr node;
  if (is_op("-") || is_op("+")) {
    const bool neg = is_op("-");
    next();
    node = make(neg ? Expr::Kind::Neg : Expr::Kind::Pos, line);
    node->args.push_back(parse_unary(false));
  } else {
    node = parse_primary();
  }
  node = parse_postfix(std::move(node));
  if (with_filter) node = parse_filter_expr(std::move(node));
  return node;
}

ExprPtr Parser::parse_primary() {
  const Token& t = cur();
  auto c = make(Expr::Kind::Const, t.line);
  if (t.type == TokType::Name) {
    const std::string& n = t.text;
    if (n == "true" || n == "True" || n == "false" || n == "False") {
      c->value = Value::boolean(n[0] == 't' || n[0] == 'T');
    } else if (n == "none" || n == "None") {
      c->value = Value::none();
    } else {
      c->kind = Expr::Kind::Name;
      c->name = n;
    }
    next();
  } else if (t.type == TokType::String) {
    std::string s;
    while (cur().type == TokType::String) s += cur().text, next();  // "a" "b" concatenates
    c->value = Value::string(std::move(s));
  } else if (t.type == TokType::Int || t.type == TokType::Float) {
    c->value = t.type == TokType::Int ? Value::integer(t.ival) : Value::number(t.fval);
    next();
  } else if (skip_op("(")) {
    c = parse_tuple(true, {}, true);
    expect_op(")");
  } else if (skip_op("[")) {
    c = parse_sequence(Expr::Kind::List, "]");
  } else if (skip_op("{")) {
    c = parse_dict();
  } else {
    fail("unexpected " + describe(t));
  }
  return c;
}

ExprPtr Parser::parse_sequence(Expr::Kind kind, std::string_view close) {
  auto list = make(kind, cur().line);
  while (!is_op(close)) {
    if (!list->args.empty()) expect_op(",");
    if (is_op(close)) break;
    list->args.push_back(parse_expression());
  }
  expect_op(close);
  return list;
}

ExprPtr Parser::parse_dict() {
  auto d = make(Expr::Kind::Dict, cur().line);
  while (!is_op("}")) {
    if (!d->args.empty()) expect_op(",");
    if (is_op("}")) break;
    d->args.push_back(parse_expression());
    expect_op(":");
    d->args.push_back(parse_expression());
  }
  expect_op("}");
  return d;
}

ExprPtr Parser::parse_postfix(ExprPtr node) {
  while (true) {
    if (is_op(".") || is_op("[")) {
      node = parse_subscript(std::move(node));
    } else if (is_op("(")) {
      auto call = make(Expr::Kind::Call, cur().line);
      call->args.push_back(std::move(node));
      parse_call_args(*call);
      node = std::move(call);
    } else {
      return node;
    }
  }
}

ExprPtr Parser::parse_filter_expr(ExprPtr node) {
  while (true) {
    if (is_op("|")) {
      node = parse_filter(std::move(node));
    } else if (is_name("is")) {
      node = parse_test(std::move(node));
    } else if (is_op("(")) {
      auto call = make(Expr::Kind::Call, cur().line);
      call->args.push_back(std::move(node));
      parse_call_args(*call);
      node = std::move(call);
    } else {
      return node;
    }
  }
}

ExprPtr Parser::parse_subscript(ExprPtr node) {
  const int line = cur().line;
  if (skip_op(".")) {
    if (cur().type == TokType::Name) {
      auto a = make(Expr::Kind::Attr, line);
      a->name = expect_name();
      a->args.push_back(std::move(node));
      return a;
    }
    if (cur().type != TokType::Int) fail("expected a name or number after '.'");
    auto item = make(Expr::Kind::Item, line);
    item->args.push_back(std::move(node));
    item->args.push_back(make(Expr::Kind::Const, line));
    item->args.back()->value = Value::integer(cur().ival);
    next();
    return item;
  }
  expect_op("[");
  ExprPtr sub = parse_subscribed(std::move(node));
  if (is_op(",")) unsupported("a tuple subscript x[a, b]");
  expect_op("]");
  return sub;
}

// One subscript: x[i] or a slice x[a:b:c] with any part left out.
ExprPtr Parser::parse_subscribed(ExprPtr node) {
  const int line = cur().line;
  ExprPtr start;
  if (!is_op(":")) {
    start = parse_expression();
    if (!is_op(":")) {
      auto item = make(Expr::Kind::Item, line);
      item->args.push_back(std::move(node));
      item->args.push_back(std::move(start));
      return item;
    }
  }
  expect_op(":");
  auto slice = make(Expr::Kind::Slice, line);
  slice->args.push_back(std::move(node));
  slice->args.push_back(std::move(start));
  auto part = [&]() -> ExprPtr {
    return is_op("]") || is_op(",") || is_op(":") ? nullptr : parse_expression();
  };
  slice->args.push_back(part());
  slice->args.push_back(skip_op(":") ? part() : nullptr);
  return slice;
}

void Parser::parse_call_args(Expr& call) {
  expect_op("(");
  bool need_comma = false;
  while (!is_op(")")) {
    if (need_comma) {
      expect_op(",");
      if (is_op(")")) break;
    }
    if (is_op("*") || is_op("**")) unsupported("*args / **kwargs in a call");
    if (cur().type == TokType::Name && look().type == TokType::Op && look().text == "=") {
      std::string key = cur().text;
      next(), next();
      call.kwargs.emplace_back(std::move(key), parse_expression());
    } else {
      if (!call.kwargs.empty()) fail("positional argument follows keyword argument");
      call.args.push_back(parse_expression());
    }
    need_comma = true;
  }
  expect_op(")");
}

ExprPtr Parser::parse_filter(ExprPtr node) {
  while (skip_op("|")) {
    auto f = make(Expr::Kind::Filter, cur().line);
    f->name = expect_name();
    while (skip_op(".")) f->name += "." + expect_name();
    f->args.push_back(std::move(node));
    if (is_op("(")) parse_call_args(*f);
    node = std::move(f);
  }
  return node;
}

ExprPtr Parser::parse_test(ExprPtr node) {
  auto t = make(Expr::Kind::Test, cur().line);
  next();  // "is"
  t->negated = skip_name("not");
  t->name = expect_name();
  while (skip_op(".")) t->name += "." + expect_name();
  t->args.push_back(std::move(node));
  const auto type = cur().type;
  const bool arg_start = type == TokType::Name || type == TokType::String || type == TokType::Int ||
                         type == TokType::Float || is_op("[") || is_op("{");
  if (is_op("(")) {
    parse_call_args(*t);
  } else if (arg_start && !is_name("else") && !is_name("or") && !is_name("and")) {
    if (is_name("is")) fail("you cannot chain multiple tests with is");
    t->args.push_back(parse_postfix(parse_primary()));  // "x is divisibleby 3"
  }
  return t;
}

}  // namespace uniattn::jinja
