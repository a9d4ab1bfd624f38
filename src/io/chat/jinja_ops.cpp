// Operators, iteration and attribute/item access with the semantics Python and jinja2 give them.
#include <cmath>
#include <limits>

#include "io/chat/jinja_builtins.h"
#include "io/chat/jinja_text.h"

namespace uniattn::jinja {

namespace {

[[noreturn]] void operand_error(const std::string& op, const Value& a, const Value& b) {
  raise("unsupported operand type(s) for ", op, ": '", a.type_name(), "' and '", b.type_name(),
        "'");
}

int64_t checked(bool overflow, int64_t v) {
  if (overflow) raise("unsupported: integer result beyond 64 bits");
  return v;
}

// markupsafe.escape, which Markup applies to the plain operand of `+`.
std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '\'':
        out += "&#39;";
        break;
      case '"':
        out += "&#34;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// Python's float floor division and modulo (float_divmod in CPython).
std::pair<double, double> float_divmod(double x, double y) {
  if (y == 0) raise("float division by zero");
  double mod = std::fmod(x, y);
  double div = (x - mod) / y;
  if (mod != 0) {
    if ((y < 0) != (mod < 0)) {
      mod += y;
      div -= 1.0;
    }
  } else {
    mod = std::copysign(0.0, y);
  }
  double floordiv;
  if (div != 0) {
    floordiv = std::floor(div);
    if (div - floordiv > 0.5) floordiv += 1.0;
  } else {
    floordiv = std::copysign(0.0, x / y);
  }
  return {floordiv, mod};
}

Value int_pow(int64_t base, int64_t exp) {
  if (exp < 0) {
    if (base == 0) raise("0.0 cannot be raised to a negative power");
    return Value::number(std::pow(static_cast<double>(base), static_cast<double>(exp)));
  }
  int64_t result = 1;
  while (exp-- > 0)
    if (__builtin_mul_overflow(result, base, &result)) checked(true, 0);
  return Value::integer(result);
}

Value arith(const std::string& op, const Value& a, const Value& b) {
  const bool fl = a.is_float() || b.is_float();
  const int64_t x = a.as_int(), y = b.as_int();
  const double fx = a.as_float(), fy = b.as_float();
  int64_t r = 0;
  bool overflow = false;
  if (op == "+" || op == "-" || op == "*") {
    if (fl) return Value::number(op == "+" ? fx + fy : op == "-" ? fx - fy : fx * fy);
    overflow = op == "+"   ? __builtin_add_overflow(x, y, &r)
               : op == "-" ? __builtin_sub_overflow(x, y, &r)
                           : __builtin_mul_overflow(x, y, &r);
    return Value::integer(checked(overflow, r));
  }
  if (op == "/") {
    if (fy == 0) raise("division by zero");
    return Value::number(fx / fy);
  }
  if (op == "//" || op == "%") {
    if (fl) {
      const auto [d, m] = float_divmod(fx, fy);
      return Value::number(op == "//" ? d : m);
    }
    if (y == 0) raise("integer division or modulo by zero");
    if (x == std::numeric_limits<int64_t>::min() && y == -1) checked(true, 0);
    int64_t q = x / y, m = x % y;
    if (m != 0 && ((m < 0) != (y < 0))) --q, m += y;  // Python floors toward -inf
    return Value::integer(op == "//" ? q : m);
  }
  if (op == "**") {
    if (!fl) return int_pow(x, y);
    if (fx == 0 && fy < 0) raise("0.0 cannot be raised to a negative power");
    if (fx < 0 && fy != std::floor(fy)) raise("unsupported: a complex result of **");
    return Value::number(std::pow(fx, fy));
  }
  raise("internal error: unknown operator ", op);
}

Value repeat(Interpreter& in, const Value& seq, int64_t n) {
  if (seq.is_string()) {
    if (n <= 0) return Value::string("");
    in.check_size(seq.str().size() * static_cast<size_t>(n));
    std::string out;
    for (int64_t i = 0; i < n; ++i) out += seq.str();
    return Value::string(std::move(out));
  }
  List out;
  if (n > 0) in.check_size(seq.items().size() * static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out.insert(out.end(), seq.items().begin(), seq.items().end());
  return Value::list(std::move(out), seq.is_tuple());
}

Value add(Interpreter& in, const Value& a, const Value& b) {
  if (a.is_string() && b.is_string()) {
    in.check_size(a.str().size() + b.str().size());
    if (!a.is_markup() && !b.is_markup()) return Value::string(a.str() + b.str());
    // Markup.__add__/__radd__ escape the plain operand.
    return Value::string((a.is_markup() ? a.str() : html_escape(a.str())) +
                             (b.is_markup() ? b.str() : html_escape(b.str())),
                         true);
  }
  if (a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple() && !a.is_view() && !b.is_view()) {
    List out = a.items();
    out.insert(out.end(), b.items().begin(), b.items().end());
    return Value::list(std::move(out), a.is_tuple());
  }
  if (a.is_string() && !b.is_string())
    raise("can only concatenate str (not \"", b.type_name(), "\") to str");
  operand_error("+", a, b);
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::Undefined:
      return false;
    case Value::Kind::String:
      if (!item.is_string())
        raise("'in <string>' requires string as left operand, not ", item.type_name());
      return container.str().find(item.str()) != std::string::npos;
    case Value::Kind::List:
      for (const auto& v : container.items())
        if (equals(v, item)) return true;
      return false;
    case Value::Kind::Dict:
      if (item.is_list() && !item.is_tuple()) raise("unhashable type: 'list'");
      if (item.is_dict()) raise("unhashable type: 'dict'");
      return item.is_string() && container.dict().find(item.str()) != nullptr;
    default:
      raise("argument of type '", container.type_name(), "' is not iterable");
  }
}

// Python attribute names of int/float/bool/None that this build does not provide (Python would
// not give Undefined for them).
bool is_number_attribute(const std::string& name) {
  static const char* kNames[] = {
      "real",       "imag",      "numerator", "denominator", "conjugate",
      "bit_length", "bit_count", "to_bytes",  "from_bytes",  "as_integer_ratio",
      "is_integer", "hex",       "fromhex"};
  for (const char* n : kNames)
    if (name == n) return true;
  return false;
}

}  // namespace

void undefined_error(const Value& v) { raise(v.undefined_hint()); }

Value binary_op(Interpreter& in, const std::string& op, const Value& a, const Value& b) {
  if (a.is_undefined()) undefined_error(a);
  if (b.is_undefined()) undefined_error(b);
  if (a.is_number() && b.is_number()) return arith(op, a, b);
  if (op == "+") return add(in, a, b);
  if (op == "*") {
    auto seq = [](const Value& v) { return v.is_string() || (v.is_list() && !v.is_view()); };
    auto count = [](const Value& v) { return v.is_int() || v.is_bool(); };
    if (seq(a) && count(b)) return repeat(in, a, b.as_int());
    if (seq(b) && count(a)) return repeat(in, b, a.as_int());
    if (a.is_string() || a.is_list() || b.is_string() || b.is_list())
      raise("can't multiply sequence by non-int of type '",
            (a.is_string() || a.is_list() ? b : a).type_name(), "'");
  }
  if (op == "%" && a.is_string()) raise("unsupported: printf-style formatting with %");
  operand_error(op, a, b);
}

Value negate(const Value& v) {
  if (v.is_undefined()) undefined_error(v);
  if (v.is_float()) return Value::number(-v.as_float());
  if (v.is_int() || v.is_bool()) {
    if (v.as_int() == std::numeric_limits<int64_t>::min()) checked(true, 0);
    return Value::integer(-v.as_int());
  }
  raise("bad operand type for unary -: '", v.type_name(), "'");
}

bool compare(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return equals(a, b);
  if (op == "!=") return !equals(a, b);
  if (op == "in") return contains(b, a);
  if (op == "notin") return !contains(b, a);
  if (a.is_undefined()) undefined_error(a);
  if (b.is_undefined()) undefined_error(b);
  if (op == "<") return less(a, b);
  if (op == ">") return less(b, a);
  if (op == "<=") return less(a, b) || equals(a, b);
  if (op == ">=") return less(b, a) || equals(a, b);
  raise("internal error: unknown comparison ", op);
}

std::vector<Value> iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined:
      return {};
    case Value::Kind::List:
      v.consume();
      return v.items();
    case Value::Kind::String: {
      std::vector<Value> out;
      for (uint32_t cp : decode_utf8(v.str())) {
        std::string c;
        append_utf8(c, cp);
        out.push_back(Value::string(std::move(c)));
      }
      return out;
    }
    case Value::Kind::Dict: {
      std::vector<Value> out;
      for (const auto& [k, x] : v.dict().entries) out.push_back(Value::string(k));
      return out;
    }
    default:
      raise("'", v.type_name(), "' object is not iterable");
  }
}

int64_t length(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined:
      return 0;
    case Value::Kind::String:
      return static_cast<int64_t>(count_code_points(v.str()));
    case Value::Kind::List:
      if (v.is_generator()) break;
      return static_cast<int64_t>(v.items().size());
    case Value::Kind::Dict:
      return static_cast<int64_t>(v.dict().entries.size());
    default:
      break;
  }
  raise("object of type '", v.type_name(), "' has no len()");
}

Value get_attr(const Value& obj, const std::string& name) {
  if (obj.is_undefined()) undefined_error(obj);
  if (name.starts_with("__")) raise("unsupported: access to the attribute '", name, "'");
  const std::string missing =
      "'" + std::string(obj.type_name()) + " object' has no attribute '" + name + "'";
  switch (obj.kind()) {
    case Value::Kind::Dict:
    case Value::Kind::String:
    case Value::Kind::List: {
      if (auto m = get_method(obj, name)) return *m;
      if (obj.is_dict())
        if (const Value* v = obj.dict().find(name)) return *v;
      return Value::undefined(missing);
    }
    case Value::Kind::Object:
      if (auto v = obj.object().attr(name)) return *v;
      return Value::undefined(missing);
    case Value::Kind::Callable:
      raise("unsupported: the attribute '", name, "' of a function");
    default:
      if (is_number_attribute(name))
        raise("unsupported: the attribute '", name, "' of a ", obj.type_name());
      return Value::undefined(missing);
  }
}

Value get_item(const Value& obj, const Value& key) {
  if (obj.is_undefined()) undefined_error(obj);
  if (key.is_string() && !obj.is_dict()) {
    if (obj.is_list() || obj.is_string() || obj.is_object()) return get_attr(obj, key.str());
  }
  if (obj.is_dict()) {
    if (!key.is_string()) return Value::undefined("'dict object' has no such item");
    if (const Value* v = obj.dict().find(key.str())) return *v;
    return get_attr(obj, key.str());  // jinja2 falls back to the attribute (e.g. d['items'])
  }
  if (obj.is_view())
    return Value::undefined("'" + std::string(obj.type_name()) + "' object is not subscriptable");
  if ((obj.is_list() || obj.is_string()) && (key.is_int() || key.is_bool())) {
    const std::vector<uint32_t> cps =
        obj.is_string() ? decode_utf8(obj.str()) : std::vector<uint32_t>{};
    const auto n = static_cast<int64_t>(obj.is_string() ? cps.size() : obj.items().size());
    int64_t i = key.as_int();
    if (i < 0) i += n;
    if (i < 0 || i >= n)
      return Value::undefined(std::string(obj.type_name()) + " object has no element " +
                              std::to_string(key.as_int()));
    if (obj.is_list()) return obj.items()[i];
    std::string c;
    append_utf8(c, cps[i]);
    return Value::string(std::move(c));
  }
  return Value::undefined("'" + std::string(obj.type_name()) + " object' has no such item");
}

}  // namespace uniattn::jinja
