#include "io/chat/jinja_value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>

#include "io/chat/jinja_text.h"

namespace uniattn::jinja {

// ---- construction -----------------------------------------------------------------------------

Value Value::undefined(std::string hint) {
  Value v;
  v.s_ = std::make_shared<const std::string>(std::move(hint));
  return v;
}

Value Value::none() {
  Value v;
  v.kind_ = Kind::None;
  return v;
}

Value Value::boolean(bool b) {
  Value v;
  v.kind_ = Kind::Bool;
  v.i_ = b;
  return v;
}

Value Value::integer(int64_t i) {
  Value v;
  v.kind_ = Kind::Int;
  v.i_ = i;
  return v;
}

Value Value::number(double f) {
  Value v;
  v.kind_ = Kind::Float;
  v.f_ = f;
  return v;
}

Value Value::string(std::string s, bool markup) {
  Value v;
  v.kind_ = Kind::String;
  v.markup_ = markup;
  v.s_ = std::make_shared<const std::string>(std::move(s));
  return v;
}

Value Value::list(List items, bool tuple) {
  Value v;
  v.kind_ = Kind::List;
  v.tuple_ = tuple;
  v.l_ = std::make_shared<const List>(std::move(items));
  return v;
}

Value Value::view(const char* type, List items) {
  Value v = list(std::move(items));
  v.view_ = type;
  return v;
}

Value Value::generator(List items) {
  Value v = view("generator", std::move(items));
  v.uses_ = std::make_shared<int>(0);
  return v;
}

void Value::consume() const {
  if (uses_ && (*uses_)++ > 0)
    raise(
        "unsupported: a generator (the result of map, select, reject, selectattr, rejectattr, "
        "unique, reverse or items) used a second time, when Python finds it exhausted");
}

Value Value::dict(Dict d) {
  Value v;
  v.kind_ = Kind::Dict;
  v.d_ = std::make_shared<const Dict>(std::move(d));
  return v;
}

Value Value::object(std::shared_ptr<Object> o) {
  Value v;
  v.kind_ = Kind::Object;
  v.o_ = std::move(o);
  return v;
}

Value Value::callable(std::string name, std::function<Value(Interpreter&, CallArgs&)> fn) {
  Value v;
  v.kind_ = Kind::Callable;
  v.fn_ = std::make_shared<const Callable>(Callable{std::move(name), std::move(fn)});
  return v;
}

Value Value::from_json(const nlohmann::ordered_json& j) {
  using T = nlohmann::ordered_json::value_t;
  switch (j.type()) {
    case T::null:
      return none();
    case T::boolean:
      return boolean(j.get<bool>());
    case T::number_integer:
      return integer(j.get<int64_t>());
    case T::number_unsigned: {
      const auto u = j.get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        raise("unsupported: integer ", std::to_string(u), " is beyond 64 bits");
      return integer(static_cast<int64_t>(u));
    }
    case T::number_float:
      return number(j.get<double>());
    case T::string:
      if (!valid_utf8(j.get_ref<const std::string&>())) raise("a string is not valid UTF-8");
      return string(j.get<std::string>());
    case T::array: {
      List items;
      for (const auto& e : j) items.push_back(from_json(e));
      return list(std::move(items));
    }
    case T::object: {
      Dict d;
      for (const auto& [k, e] : j.items()) d.set(k, from_json(e));
      return dict(std::move(d));
    }
    default:
      raise("unsupported JSON value (binary or discarded)");
  }
}

const std::string& Value::undefined_hint() const {
  static const std::string kNone = "undefined value";
  return s_ && !s_->empty() ? *s_ : kNone;
}

double Value::as_float() const { return kind_ == Kind::Float ? f_ : static_cast<double>(i_); }

const char* Value::type_name() const {
  switch (kind_) {
    case Kind::Undefined:
      return "Undefined";
    case Kind::None:
      return "NoneType";
    case Kind::Bool:
      return "bool";
    case Kind::Int:
      return "int";
    case Kind::Float:
      return "float";
    case Kind::String:
      return "str";
    case Kind::List:
      return view_ ? view_ : tuple_ ? "tuple" : "list";
    case Kind::Dict:
      return "dict";
    case Kind::Object:
      return o_->type.c_str();
    case Kind::Callable:
      return "function";
  }
  return "?";
}

const Value* Dict::find(std::string_view key) const {
  for (const auto& [k, v] : entries)
    if (k == key) return &v;
  return nullptr;
}

void Dict::set(std::string key, Value v) {
  for (auto& [k, old] : entries) {
    if (k == key) {
      old = std::move(v);
      return;
    }
  }
  entries.emplace_back(std::move(key), std::move(v));
}

std::optional<Value> Object::attr(const std::string& name) const {
  if (!loop_items) {
    if (const Value* v = attrs.find(name)) return *v;
    return std::nullopt;
  }
  const auto& items = *loop_items;
  const auto n = static_cast<int64_t>(items.size()), k = loop_index;
  if (name == "index") return Value::integer(k + 1);
  if (name == "index0") return Value::integer(k);
  if (name == "revindex") return Value::integer(n - k);
  if (name == "revindex0") return Value::integer(n - k - 1);
  if (name == "first") return Value::boolean(k == 0);
  if (name == "last") return Value::boolean(k == n - 1);
  if (name == "length") return Value::integer(n);
  if (name == "depth") return Value::integer(1);
  if (name == "depth0") return Value::integer(0);
  if (name == "previtem")
    return k > 0 ? items[k - 1] : Value::undefined("there is no previous item");
  if (name == "nextitem")
    return k + 1 < n ? items[k + 1] : Value::undefined("there is no next item");
  if (name == "cycle")
    return Value::callable("loop.cycle", [k](Interpreter&, CallArgs& c) {
      if (c.args.empty() || !c.kwargs.empty()) raise("loop.cycle() needs positional values");
      return c.args[k % c.args.size()];
    });
  if (name == "changed") raise("unsupported: loop.changed()");
  return std::nullopt;
}

Value CallArgs::take(std::string_view name, size_t pos, Value dflt) {
  for (auto it = kwargs.begin(); it != kwargs.end(); ++it) {
    if (it->first != name) continue;
    if (pos < args.size()) raise("got multiple values for argument '", name, "'");
    Value v = std::move(it->second);
    kwargs.erase(it);
    return v;
  }
  return pos < args.size() ? args[pos] : dflt;
}

void CallArgs::expect_consumed(std::string_view what, size_t max_pos) const {
  if (args.size() > max_pos)
    raise(what, "() takes at most ", std::to_string(max_pos), " positional arguments (",
          std::to_string(args.size()), " given)");
  if (!kwargs.empty())
    raise(what, "() got an unexpected keyword argument '", kwargs.front().first, "'");
}

// ---- comparisons ------------------------------------------------------------------------------

bool truthy(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined:
    case Value::Kind::None:
      return false;
    case Value::Kind::Bool:
    case Value::Kind::Int:
      return v.as_int() != 0;
    case Value::Kind::Float:
      return v.as_float() != 0.0;
    case Value::Kind::String:
      return !v.str().empty();
    case Value::Kind::List:
      return v.is_generator() || !v.items().empty();  // a generator object is always true
    case Value::Kind::Dict:
      return !v.dict().entries.empty();
    default:
      return true;
  }
}

namespace {

bool dict_equals(const Dict& a, const Dict& b) {
  if (a.entries.size() != b.entries.size()) return false;
  for (const auto& [k, v] : a.entries) {
    const Value* o = b.find(k);
    if (!o || !equals(v, *o)) return false;
  }
  return true;
}

}  // namespace

bool equals(const Value& a, const Value& b) {
  using K = Value::Kind;
  if (a.is_view() || b.is_view())
    raise("unsupported: comparing a ", (a.is_view() ? a : b).type_name(), " object");
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) return a.as_float() == b.as_float();
    return a.as_int() == b.as_int();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case K::Undefined:
    case K::None:
      return true;
    case K::String:
      return a.str() == b.str();
    case K::List: {
      if (a.is_tuple() != b.is_tuple() || a.items().size() != b.items().size()) return false;
      for (size_t i = 0; i < a.items().size(); ++i)
        if (!equals(a.items()[i], b.items()[i])) return false;
      return true;
    }
    case K::Dict:
      return dict_equals(a.dict(), b.dict());
    case K::Object:
      return &a.object() == &b.object();
    case K::Callable:
      return &a.fn() == &b.fn();
    default:
      return false;
  }
}

bool less(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) return a.as_float() < b.as_float();
    return a.as_int() < b.as_int();
  }
  if (a.is_string() && b.is_string()) return a.str() < b.str();
  if (a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple() && !a.is_view() && !b.is_view()) {
    const auto &x = a.items(), &y = b.items();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (equals(x[i], y[i])) continue;
      return less(x[i], y[i]);
    }
    return x.size() < y.size();
  }
  raise("'<' not supported between instances of '", a.type_name(), "' and '", b.type_name(), "'");
}

// ---- text forms -------------------------------------------------------------------------------

std::string float_repr(double f) {
  if (std::isnan(f)) return "nan";
  if (std::isinf(f)) return f < 0 ? "-inf" : "inf";
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof buf, f, std::chars_format::scientific);
  const std::string sci(buf, res.ptr);  // "-1.2345e+02": shortest digits that round-trip
  const size_t e = sci.find('e');
  const bool neg = sci[0] == '-';
  std::string digits;
  for (size_t i = neg; i < e; ++i)
    if (sci[i] != '.') digits += sci[i];
  const int exp = std::stoi(sci.substr(e + 1));
  const int decpt = exp + 1;  // digits before the decimal point
  std::string out = neg ? "-" : "";
  if (decpt > -4 && decpt <= 16) {  // Python's repr switches to exponent form outside this
    if (decpt <= 0) {
      out += "0." + std::string(-decpt, '0') + digits;
    } else if (static_cast<size_t>(decpt) >= digits.size()) {
      out += digits + std::string(decpt - digits.size(), '0') + ".0";
    } else {
      out += digits.substr(0, decpt) + "." + digits.substr(decpt);
    }
    return out;
  }
  out += digits.substr(0, 1);
  if (digits.size() > 1) out += "." + digits.substr(1);
  char ex[16];
  std::snprintf(ex, sizeof ex, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
  return out + ex;
}

namespace {

// Python's str.isprintable() for the non-ASCII code points repr() meets: true/false where known,
// nullopt where this build carries no table (repr then fails rather than guess).
std::optional<bool> printable(uint32_t cp) {
  if (cp <= 0xA0 || cp == 0xAD || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200F) ||
      (cp >= 0x2028 && cp <= 0x202F) || (cp >= 0x205F && cp <= 0x206F) || cp == 0x3000 ||
      cp == 0xFEFF || (cp >= 0xE000 && cp <= 0xF8FF) || cp >= 0xF0000)
    return false;
  static constexpr std::pair<uint32_t, uint32_t> kPrintable[] = {
      {0x00A1, 0x036F}, {0x0400, 0x04FF}, {0x2010, 0x2027}, {0x2030, 0x205E},
      {0x20A0, 0x20C0}, {0x2190, 0x23FF}, {0x2500, 0x27BF}, {0x3001, 0x303F},
      {0x30A0, 0x30FF}, {0x4E00, 0x9FFF}, {0xAC00, 0xD7A3}, {0x1F300, 0x1F64F},
  };
  for (const auto& [lo, hi] : kPrintable)
    if (cp >= lo && cp <= hi) return true;
  return std::nullopt;
}

std::string repr_string(const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos;
  const char quote = has_single && s.find('"') == std::string::npos ? '"' : '\'';
  std::string out(1, quote);
  char hex[16];
  for (uint32_t cp : decode_utf8(s)) {
    if (cp == static_cast<uint32_t>(quote) || cp == '\\') {
      out += '\\';
      out += static_cast<char>(cp);
    } else if (cp == '\t' || cp == '\n' || cp == '\r') {
      out += cp == '\t' ? "\\t" : cp == '\n' ? "\\n" : "\\r";
    } else if (cp < 0x20 || cp == 0x7F) {
      std::snprintf(hex, sizeof hex, "\\x%02x", cp);
      out += hex;
    } else if (cp < 0x7F) {
      out += static_cast<char>(cp);
    } else if (auto p = printable(cp); !p) {
      std::snprintf(hex, sizeof hex, "U+%04X", cp);
      raise("unsupported: repr() of the character ", hex, " (no printable table for it)");
    } else if (*p) {
      append_utf8(out, cp);
    } else {
      std::snprintf(hex, sizeof hex,
                    cp <= 0xFF     ? "\\x%02x"
                    : cp <= 0xFFFF ? "\\u%04x"
                                   : "\\U%08x",
                    cp);
      out += hex;
    }
  }
  return out + quote;
}

std::string repr_dict(const Dict& d) {
  std::string out = "{";
  for (size_t i = 0; i < d.entries.size(); ++i) {
    if (i) out += ", ";
    out += repr_string(d.entries[i].first) + ": " + to_repr(d.entries[i].second);
  }
  return out + "}";
}

}  // namespace

std::string to_repr(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined:
      return "Undefined";
    case Value::Kind::String:
      return repr_string(v.str());
    case Value::Kind::List: {
      if (v.is_view()) {  // dict views print as dict_items([...]); ranges and iterators do not
        if (!std::string_view(v.type_name()).starts_with("dict_"))
          raise("unsupported: printing a ", v.type_name(), " object");
        return std::string(v.type_name()) + "(" + to_repr(Value::list(v.items())) + ")";
      }
      std::string out = v.is_tuple() ? "(" : "[";
      for (size_t i = 0; i < v.items().size(); ++i) {
        if (i) out += ", ";
        out += to_repr(v.items()[i]);
      }
      if (v.is_tuple() && v.items().size() == 1) out += ",";
      return out + (v.is_tuple() ? ")" : "]");
    }
    case Value::Kind::Dict:
      return repr_dict(v.dict());
    default:
      return to_str(v);
  }
}

std::string to_str(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined:
      return "";
    case Value::Kind::None:
      return "None";
    case Value::Kind::Bool:
      return v.as_bool() ? "True" : "False";
    case Value::Kind::Int:
      return std::to_string(v.as_int());
    case Value::Kind::Float:
      return float_repr(v.as_float());
    case Value::Kind::String:
      return v.str();
    case Value::Kind::List:
    case Value::Kind::Dict:
      return to_repr(v);
    case Value::Kind::Object:
      if (v.object().type == "Namespace") return "<Namespace " + repr_dict(v.object().attrs) + ">";
      if (v.object().loop_items)
        return "<LoopContext " + std::to_string(v.object().loop_index + 1) + "/" +
               std::to_string(v.object().loop_items->size()) + ">";
      raise("unsupported: printing a ", v.type_name(), " object");
    case Value::Kind::Callable:
      raise("unsupported: printing the function '", v.fn().name, "'");
  }
  return "";
}

// ---- JSON ------------------------------------------------------------------------------------

namespace {

void json_string(std::string& out, const std::string& s, bool ensure_ascii) {
  out += '"';
  char hex[16];
  for (uint32_t cp : decode_utf8(s)) {
    switch (cp) {
      case '"':
        out += "\\\"";
        continue;
      case '\\':
        out += "\\\\";
        continue;
      case '\n':
        out += "\\n";
        continue;
      case '\r':
        out += "\\r";
        continue;
      case '\t':
        out += "\\t";
        continue;
      case '\b':
        out += "\\b";
        continue;
      case '\f':
        out += "\\f";
        continue;
      default:
        break;
    }
    if (cp < 0x20 || (ensure_ascii && cp > 0x7E)) {
      if (cp > 0xFFFF) {  // ensure_ascii writes a surrogate pair
        const uint32_t c = cp - 0x10000;
        std::snprintf(hex, sizeof hex, "\\u%04x\\u%04x", 0xD800 + (c >> 10), 0xDC00 + (c & 0x3FF));
      } else {
        std::snprintf(hex, sizeof hex, "\\u%04x", cp);
      }
      out += hex;
    } else {
      append_utf8(out, cp);
    }
  }
  out += '"';
}

void dump(std::string& out, const Value& v, const JsonStyle& st, int depth);

void newline_indent(std::string& out, const JsonStyle& st, int depth) {
  out += '\n';
  for (int i = 0; i < depth; ++i) out += st.indent_str;
}

void dump_list(std::string& out, const List& items, const JsonStyle& st, int depth) {
  if (items.empty()) {
    out += "[]";
    return;
  }
  out += '[';
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += st.item_sep;
    if (st.indent) newline_indent(out, st, depth + 1);
    dump(out, items[i], st, depth + 1);
  }
  if (st.indent) newline_indent(out, st, depth);
  out += ']';
}

void dump_dict(std::string& out, const Dict& d, const JsonStyle& st, int depth) {
  if (d.entries.empty()) {
    out += "{}";
    return;
  }
  std::vector<const std::pair<std::string, Value>*> order;
  for (const auto& e : d.entries) order.push_back(&e);
  if (st.sort_keys)
    std::stable_sort(order.begin(), order.end(),
                     [](auto* a, auto* b) { return a->first < b->first; });
  out += '{';
  for (size_t i = 0; i < order.size(); ++i) {
    if (i) out += st.item_sep;
    if (st.indent) newline_indent(out, st, depth + 1);
    json_string(out, order[i]->first, st.ensure_ascii);
    out += st.key_sep;
    dump(out, order[i]->second, st, depth + 1);
  }
  if (st.indent) newline_indent(out, st, depth);
  out += '}';
}

void dump(std::string& out, const Value& v, const JsonStyle& st, int depth) {
  if (depth > 512) raise("tojson: value nested too deeply");
  switch (v.kind()) {
    case Value::Kind::None:
      out += "null";
      return;
    case Value::Kind::Bool:
      out += v.as_bool() ? "true" : "false";
      return;
    case Value::Kind::Int:
      out += std::to_string(v.as_int());
      return;
    case Value::Kind::Float: {
      const double f = v.as_float();
      out += std::isnan(f)   ? "NaN"
             : std::isinf(f) ? (f < 0 ? "-Infinity" : "Infinity")
                             : float_repr(f);
      return;
    }
    case Value::Kind::String:
      json_string(out, v.str(), st.ensure_ascii);
      return;
    case Value::Kind::List:
      if (v.is_view()) raise("Object of type ", v.type_name(), " is not JSON serializable");
      dump_list(out, v.items(), st, depth);
      return;
    case Value::Kind::Dict:
      dump_dict(out, v.dict(), st, depth);
      return;
    default:
      raise("Object of type ", v.type_name(), " is not JSON serializable");
  }
}

}  // namespace

std::string dump_json(const Value& v, const JsonStyle& style) {
  std::string out;
  dump(out, v, style, 0);
  return out;
}

}  // namespace uniattn::jinja
