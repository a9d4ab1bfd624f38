// The values a chat template computes with, modelled on the Python objects jinja2 hands around:
// Undefined, None, bool, int, float, str, list/tuple, dict (insertion ordered), namespace and
// callables. Lists and dicts are immutable, as in transformers' ImmutableSandboxedEnvironment, so
// they are shared; only a namespace changes in place (`set ns.x = ...`).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace uniattn::jinja {

// A rendering or parsing failure. `line` is the template line (0 until a statement or expression
// node that knows its line attaches it on the way out).
class TemplateError : public std::runtime_error {
 public:
  explicit TemplateError(const std::string& what, int line = 0)
      : std::runtime_error(what), line(line) {}
  int line;
};

template <typename... Args>
[[noreturn]] void raise(const Args&... args) {
  std::string s;
  (s.append(std::string_view(args)), ...);
  throw TemplateError(s);
}

class Value;
using List = std::vector<Value>;
struct Dict;
struct Object;
struct Callable;
class Interpreter;

class Value {
 public:
  enum class Kind : uint8_t {
    Undefined,
    None,
    Bool,
    Int,
    Float,
    String,
    List,
    Dict,
    Object,
    Callable
  };

  Value() = default;  // Undefined
  // `hint` is the message an operation on this value fails with, e.g. "'x' is undefined".
  static Value undefined(std::string hint = {});
  static Value none();
  static Value boolean(bool b);
  static Value integer(int64_t i);
  static Value number(double f);
  static Value string(std::string s, bool markup = false);
  static Value list(List items, bool tuple = false);
  // A list Python would hold as another type that prints and compares differently:
  // "dict_items", "dict_keys", "dict_values" (views) or "range".
  static Value view(const char* type, List items);
  // A one-shot iterator (what map/select/reject/... return): truthy even when empty, without
  // len(), and exhausted after one pass, so iterate() fails on a second use rather than
  // pretending it is still full.
  static Value generator(List items);
  static Value dict(Dict d);
  static Value object(std::shared_ptr<Object> o);
  static Value callable(std::string name, std::function<Value(Interpreter&, struct CallArgs&)> fn);
  static Value from_json(const nlohmann::ordered_json& j);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::Undefined; }
  bool is_none() const { return kind_ == Kind::None; }
  bool is_bool() const { return kind_ == Kind::Bool; }
  bool is_int() const { return kind_ == Kind::Int; }
  bool is_float() const { return kind_ == Kind::Float; }
  // int, float or bool (Python's numbers.Number includes bool).
  bool is_number() const { return is_int() || is_float() || is_bool(); }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_list() const { return kind_ == Kind::List; }
  bool is_tuple() const { return kind_ == Kind::List && tuple_; }
  bool is_view() const { return kind_ == Kind::List && view_ != nullptr; }
  bool is_generator() const { return kind_ == Kind::List && uses_ != nullptr; }
  // Counts a pass over a generator; fails on the second.
  void consume() const;
  bool is_dict() const { return kind_ == Kind::Dict; }
  bool is_object() const { return kind_ == Kind::Object; }
  bool is_callable() const { return kind_ == Kind::Callable; }
  bool is_markup() const { return kind_ == Kind::String && markup_; }

  bool as_bool() const { return i_ != 0; }
  int64_t as_int() const { return i_; }  // Int and Bool
  double as_float() const;               // Int, Bool and Float
  const std::string& str() const { return *s_; }
  const List& items() const { return *l_; }
  const Dict& dict() const { return *d_; }
  Object& object() const { return *o_; }
  const Callable& fn() const { return *fn_; }
  const std::string& undefined_hint() const;

  // Python's type name: "int", "str", "list", ... for error messages.
  const char* type_name() const;

 private:
  Kind kind_ = Kind::Undefined;
  bool tuple_ = false;
  bool markup_ = false;
  const char* view_ = nullptr;
  std::shared_ptr<int> uses_;  // generators only
  int64_t i_ = 0;
  double f_ = 0;
  std::shared_ptr<const std::string> s_;
  std::shared_ptr<const List> l_;
  std::shared_ptr<const Dict> d_;
  std::shared_ptr<Object> o_;
  std::shared_ptr<const Callable> fn_;
};

// A Python dict restricted to string keys (what JSON gives and what chat templates write),
// keeping insertion order as Python does.
struct Dict {
  std::vector<std::pair<std::string, Value>> entries;
  const Value* find(std::string_view key) const;
  // Replaces the value of an existing key in place (keeping its position) or appends.
  void set(std::string key, Value v);
};

// jinja2's Namespace (mutable attributes) and the read-only `loop` object, whose attributes
// are computed when read (loops are hot; most bodies read one or two of them).
struct Object {
  std::string type;  // "Namespace" or "LoopContext"
  bool mutable_attrs = false;
  Dict attrs;
  std::shared_ptr<const std::vector<Value>> loop_items;  // LoopContext: the items and
  int64_t loop_index = 0;                                // the current position
  // The attribute `name`, or nullopt if there is none.
  std::optional<Value> attr(const std::string& name) const;
};

struct CallArgs {
  std::vector<Value> args;
  std::vector<std::pair<std::string, Value>> kwargs;
  // Removes and returns keyword `name`, else positional `pos` if present, else `dflt`.
  Value take(std::string_view name, size_t pos, Value dflt = Value());
  // Fails naming `what` if positional arguments beyond `max_pos` or keywords remain.
  void expect_consumed(std::string_view what, size_t max_pos) const;
};

struct Callable {
  std::string name;
  std::function<Value(Interpreter&, CallArgs&)> fn;
};

// Python truthiness (Undefined is false).
bool truthy(const Value& v);
// Python ==, with bool as int and int == float numerically; Undefined equals only Undefined.
bool equals(const Value& a, const Value& b);
// Python <: numbers, strings (code point order = UTF-8 byte order) and lists; fails otherwise.
bool less(const Value& a, const Value& b);
// Python str(): what `{{ v }}` prints. Fails for objects Python would print as <...>.
std::string to_str(const Value& v);
// Python repr(): how a value prints inside a list or dict.
std::string to_repr(const Value& v);
// Python's float repr ("1.0", "1e+16", "0.1").
std::string float_repr(double f);
// Python json.dumps options, as transformers' tojson filter exposes them.
struct JsonStyle {
  bool indent = false;  // indent=None when false
  std::string indent_str;
  std::string item_sep = ", ";
  std::string key_sep = ": ";
  bool sort_keys = false;
  bool ensure_ascii = false;
};
// json.dumps(v, ...) byte for byte. Fails for Undefined, namespaces and callables, which Python
// cannot serialise either.
std::string dump_json(const Value& v, const JsonStyle& style);

}  // namespace uniattn::jinja
