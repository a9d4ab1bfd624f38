// The parsed form of a template: expression and statement trees, one node type each with a
// kind tag (the field conventions per kind are listed below).
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "io/chat/jinja_lexer.h"
#include "io/chat/jinja_value.h"

namespace uniattn::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    Const,    // value
    Name,     // name
    List,     // args = items
    Tuple,    // args = items
    Dict,     // args = key0, value0, key1, value1, ...
    Attr,     // args[0] . name
    Item,     // args[0] [ args[1] ]
    Slice,    // args[0] [ args[1] : args[2] : args[3] ], each of 1..3 may be null
    Call,     // args[0] ( args[1..], kwargs )
    Filter,   // args[0] | name ( args[1..], kwargs )
    Test,     // args[0] is [not] name ( args[1..], kwargs ); negated
    Neg,      // - args[0]
    Pos,      // + args[0]
    Not,      // not args[0]
    And,      // args[0] and args[1]
    Or,       // args[0] or args[1]
    Binary,   // args[0] name args[1]; name one of + - * / // % **
    Compare,  // args[0] ops[0] args[1] ops[1] args[2] ...; ops: == != < <= > >= in notin
    Cond,     // args[0] if args[1] else args[2] (args[2] may be null)
    Concat,   // args[0] ~ args[1] ~ ...
  };
  Kind kind = Kind::Const;
  int line = 0;
  Value value;
  std::string name;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;
  bool negated = false;
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Stmt {
  enum class Kind {
    Text,      // text
    Output,    // {{ expr }}
    If,        // conds[i] -> bodies[i]; bodies.back() is the else branch when has_else
    For,       // for targets in expr [if cond] : bodies[0]; bodies[1] is the else branch
    Set,       // targets = expr, or targets[0].attr = expr (namespace) when attr is set
    SetBlock,  // {% set targets[0] %} bodies[0] {% endset %}
    Macro,     // macro name(params = defaults) : bodies[0]
    Break,
    Continue,
    Scope,  // bodies[0] in a scope of its own ({% generation %})
  };
  Kind kind = Kind::Text;
  int line = 0;
  std::string text;
  ExprPtr expr;
  ExprPtr cond;  // For: the loop filter
  std::vector<ExprPtr> conds;
  std::vector<Body> bodies;
  bool has_else = false;
  std::vector<std::string> targets;
  bool unpack = false;  // the target was written as a tuple ("a, b" or "a,")
  std::string attr;
  std::string name;
  std::vector<std::string> params;
  std::vector<ExprPtr> defaults;  // one per param, null where it has none
};

// Parses a token stream (jinja_lexer.h) into statements. Throws TemplateError with the line on
// a syntax error or a construct this interpreter does not support (named in the message).
Body parse_template(std::vector<Token> tokens);

}  // namespace uniattn::jinja
