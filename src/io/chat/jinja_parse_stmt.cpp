// Statements: text, {{ }} output and the {% %} tags chat templates use (jinja2's subparse and
// parse_* methods). Tags outside that set fail by name rather than being skipped.
#include <algorithm>

#include "io/chat/jinja_builtins.h"
#include "io/chat/jinja_parser.h"

namespace uniattn::jinja {

namespace {

bool reserved_name(const std::string& n) {
  return n == "true" || n == "false" || n == "none" || n == "True" || n == "False" || n == "None";
}

// Whether `body` reads one of the names jinja2 gives macros special meaning (varargs, kwargs,
// caller), which this interpreter does not provide.
bool uses_macro_magic(const Expr* e) {
  if (!e) return false;
  if (e->kind == Expr::Kind::Name &&
      (e->name == "varargs" || e->name == "kwargs" || e->name == "caller"))
    return true;
  for (const auto& a : e->args)
    if (uses_macro_magic(a.get())) return true;
  for (const auto& [k, v] : e->kwargs)
    if (uses_macro_magic(v.get())) return true;
  return false;
}

bool uses_macro_magic(const Body& body) {
  for (const auto& s : body) {
    if (uses_macro_magic(s->expr.get()) || uses_macro_magic(s->cond.get())) return true;
    for (const auto& c : s->conds)
      if (uses_macro_magic(c.get())) return true;
    for (const auto& d : s->defaults)
      if (uses_macro_magic(d.get())) return true;
    for (const auto& b : s->bodies)
      if (uses_macro_magic(b)) return true;
  }
  return false;
}

// jinja2 rejects an unknown filter or test when it compiles the template, except inside an
// {% if %} or an inline if-expression ("soft" frames), where it fails only when reached.
void check_names(const Expr* e, bool soft) {
  if (!e) return;
  soft = soft || e->kind == Expr::Kind::Cond;
  if (!soft && e->kind == Expr::Kind::Filter && !is_jinja_filter(e->name))
    throw TemplateError("no filter named '" + e->name + "'", e->line);
  if (!soft && e->kind == Expr::Kind::Test && !is_jinja_test(e->name))
    throw TemplateError("no test named '" + e->name + "'", e->line);
  for (const auto& a : e->args) check_names(a.get(), soft);
  for (const auto& [k, v] : e->kwargs) check_names(v.get(), soft);
}

void check_names(const Body& body, bool soft) {
  for (const auto& s : body) {
    const bool is_if = s->kind == Stmt::Kind::If;
    const bool inner = s->kind == Stmt::Kind::For || s->kind == Stmt::Kind::Macro ||
                       s->kind == Stmt::Kind::SetBlock || s->kind == Stmt::Kind::Scope;
    check_names(s->expr.get(), soft);  // a for loop's iterable belongs to the outer frame
    check_names(s->cond.get(), false);
    for (const auto& c : s->conds) check_names(c.get(), soft || is_if);
    for (const auto& d : s->defaults) check_names(d.get(), false);
    for (const auto& b : s->bodies) check_names(b, inner ? false : soft || is_if);
  }
}

}  // namespace

Body parse_template(std::vector<Token> tokens) { return Parser(std::move(tokens)).parse(); }

Body Parser::parse() {
  Body body = subparse({});
  check_names(body, false);
  return body;
}

Body Parser::subparse(std::initializer_list<std::string_view> end_names) {
  Body body;
  while (cur().type != TokType::Eof) {
    const Token& t = cur();
    auto s = std::make_unique<Stmt>();
    s->line = t.line;
    if (t.type == TokType::Data) {
      s->kind = Stmt::Kind::Text;
      s->text = t.text;
      next();
    } else if (t.type == TokType::VarBegin) {
      next();
      s->kind = Stmt::Kind::Output;
      s->expr = parse_tuple();
      expect(TokType::VarEnd, "'}}'");
    } else if (t.type == TokType::BlockBegin) {
      next();
      for (auto n : end_names)
        if (is_name(n)) return body;
      s = parse_statement();
      expect(TokType::BlockEnd, "'%}'");
    } else {
      fail("unexpected " + describe(t));
    }
    body.push_back(std::move(s));
  }
  if (end_names.size()) {
    std::string want;
    for (auto n : end_names) want += (want.empty() ? "'" : " or '") + std::string(n) + "'";
    fail("unexpected end of template, expected " + want);
  }
  return body;
}

Body Parser::parse_statements(std::initializer_list<std::string_view> end_names, bool drop_needle) {
  skip_op(":");
  expect(TokType::BlockEnd, "'%}'");
  Body body = subparse(end_names);
  if (drop_needle) next();
  return body;
}

StmtPtr Parser::parse_statement() {
  DepthGuard guard(depth_, cur().line);
  if (cur().type != TokType::Name) fail("expected a tag name, got " + describe(cur()));
  const std::string tag = cur().text;
  if (tag == "for") return parse_for();
  if (tag == "if") return parse_if();
  if (tag == "set") return parse_set();
  if (tag == "macro") return parse_macro();
  if (tag == "generation") return parse_scope();
  if (tag == "break" || tag == "continue") {
    if (loop_depth_ == 0) fail("'" + tag + "' outside a for loop");
    auto s = std::make_unique<Stmt>();
    s->kind = tag == "break" ? Stmt::Kind::Break : Stmt::Kind::Continue;
    s->line = cur().line;
    next();
    return s;
  }
  static constexpr std::string_view kUnsupported[] = {
      "block", "extends",    "include", "import", "from",  "call",     "filter",
      "with",  "autoescape", "print",   "do",     "trans", "pluralize"};
  if (std::find(std::begin(kUnsupported), std::end(kUnsupported), tag) != std::end(kUnsupported))
    unsupported("the {% " + tag + " %} tag");
  if (tag.starts_with("end") || tag == "else" || tag == "elif")
    fail("unexpected '" + tag + "' tag");
  fail("unknown tag '" + tag + "'");
}

StmtPtr Parser::parse_if() {
  auto s = std::make_unique<Stmt>();
  s->kind = Stmt::Kind::If;
  s->line = cur().line;
  next();
  s->conds.push_back(parse_tuple(false));
  s->bodies.push_back(parse_statements({"elif", "else", "endif"}, false));
  while (true) {
    const std::string tag = cur().text;
    next();
    if (tag == "elif") {
      s->conds.push_back(parse_tuple(false));
      s->bodies.push_back(parse_statements({"elif", "else", "endif"}, false));
      continue;
    }
    if (tag == "else") {
      s->bodies.push_back(parse_statements({"endif"}, true));
      s->has_else = true;
    }
    return s;
  }
}

void Parser::parse_targets(Stmt& s, std::string_view end_name) {
  const bool parens = skip_op("(");
  while (true) {
    std::string n = expect_name();
    if (reserved_name(n)) fail("cannot assign to '" + n + "'");
    s.targets.push_back(std::move(n));
    if (!skip_op(",")) break;
    s.unpack = true;
    const bool end =
        parens ? is_op(")") : (is_name(end_name) || is_op("=") || cur().type == TokType::BlockEnd);
    if (end) break;
  }
  if (parens) expect_op(")");
}

StmtPtr Parser::parse_for() {
  auto s = std::make_unique<Stmt>();
  s->kind = Stmt::Kind::For;
  s->line = cur().line;
  next();
  parse_targets(*s, "in");
  if (!skip_name("in")) fail("expected 'in', got " + describe(cur()));
  s->expr = parse_tuple(false, "recursive");
  if (skip_name("if")) s->cond = parse_expression();
  if (is_name("recursive")) unsupported("recursive for loops");
  ++loop_depth_;
  s->bodies.push_back(parse_statements({"endfor", "else"}, false));
  --loop_depth_;
  if (is_name("else")) {
    next();
    s->bodies.push_back(parse_statements({"endfor"}, true));
    s->has_else = true;
  } else {
    next();  // endfor
  }
  return s;
}

StmtPtr Parser::parse_set() {
  auto s = std::make_unique<Stmt>();
  s->kind = Stmt::Kind::Set;
  s->line = cur().line;
  next();
  if (cur().type == TokType::Name && look().type == TokType::Op && look().text == ".") {
    s->targets.push_back(expect_name());
    next();
    s->attr = expect_name();
  } else {
    parse_targets(*s, {});
  }
  if (skip_op("=")) {
    s->expr = parse_tuple();
    return s;
  }
  if (is_op("|")) unsupported("a filter on a {% set %} block");
  if (s->unpack || !s->attr.empty()) unsupported("a {% set %} block with this target");
  s->kind = Stmt::Kind::SetBlock;
  s->bodies.push_back(parse_statements({"endset"}, true));
  return s;
}

StmtPtr Parser::parse_macro() {
  auto s = std::make_unique<Stmt>();
  s->kind = Stmt::Kind::Macro;
  s->line = cur().line;
  next();
  s->name = expect_name();
  expect_op("(");
  while (!is_op(")")) {
    if (!s->params.empty()) expect_op(",");
    std::string p = expect_name();
    if (reserved_name(p)) fail("cannot assign to '" + p + "'");
    s->params.push_back(std::move(p));
    if (skip_op("=")) {
      s->defaults.push_back(parse_expression());
    } else {
      const bool any_default = std::any_of(s->defaults.begin(), s->defaults.end(),
                                           [](const ExprPtr& d) { return d != nullptr; });
      if (any_default) fail("non-default argument follows default argument");
      s->defaults.push_back(nullptr);
    }
  }
  expect_op(")");
  const int saved = loop_depth_;
  loop_depth_ = 0;
  s->bodies.push_back(parse_statements({"endmacro"}, true));
  loop_depth_ = saved;
  if (uses_macro_magic(s->bodies[0]))
    throw TemplateError("unsupported: varargs, kwargs or caller inside a macro", s->line);
  return s;
}

StmtPtr Parser::parse_scope() {
  auto s = std::make_unique<Stmt>();
  s->kind = Stmt::Kind::Scope;
  s->line = cur().line;
  next();
  s->bodies.push_back(parse_statements({"endgeneration"}, true));
  return s;
}

}  // namespace uniattn::jinja
