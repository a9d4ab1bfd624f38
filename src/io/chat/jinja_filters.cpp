// jinja2's builtin filters and tests (filters.py / tests.py) that chat templates use, with
// transformers' tojson. jinja2 builtins outside this set are known by name and fail when run.
#include <algorithm>
#include <charconv>
#include <cmath>

#include "io/chat/jinja_builtins.h"
#include "io/chat/jinja_text.h"

namespace uniattn::jinja {

namespace {

using FilterFn = Value (*)(Interpreter&, const Value&, CallArgs&);

// ---- shared helpers ---------------------------------------------------------------------------

// jinja2's make_attrgetter: "a.b.0" walks getitem per part (digits become integer keys).
Value attr_path(const Value& item, const Value& attribute, const Value& dflt = Value()) {
  Value v = item;
  if (attribute.is_int()) return get_item(v, attribute);
  const std::string path = to_str(attribute);
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    const std::string part = path.substr(start, dot - start);
    const bool digits = !part.empty() && std::all_of(part.begin(), part.end(), ::isdigit);
    v = get_item(v, digits ? Value::integer(std::stoll(part)) : Value::string(part));
    if (v.is_undefined() && !dflt.is_undefined()) v = dflt;
    if (dot == std::string::npos) return v;
    start = dot + 1;
  }
}

// jinja2's ignore_case postprocessing for sort/unique/min/max keys.
Value fold_case(const Value& v, bool case_sensitive) {
  return !case_sensitive && v.is_string() ? Value::string(py_lower(v.str())) : v;
}

Value key_of(const Value& item, const Value& attribute, bool case_sensitive) {
  const Value k =
      attribute.is_undefined() || attribute.is_none() ? item : attr_path(item, attribute);
  return fold_case(k, case_sensitive);
}

bool flag(const Value& v) { return truthy(v); }

// ---- string filters ---------------------------------------------------------------------------

Value f_trim(Interpreter&, const Value& v, CallArgs& a) {
  const Value chars = a.take("chars", 0, Value::none());
  a.expect_consumed("trim", 1);
  std::optional<std::string> set;
  if (!chars.is_none()) set = to_str(chars);
  return Value::string(py_strip(to_str(v), set, true, true));
}

template <std::string (*Fn)(std::string_view)>
Value f_case(Interpreter&, const Value& v, CallArgs& a) {
  a.expect_consumed("case filter", 0);
  return Value::string(Fn(to_str(v)));
}

Value f_replace(Interpreter& in, const Value& v, CallArgs& a) {
  const std::string from = to_str(a.take("old", 0)), to = to_str(a.take("new", 1));
  const Value count = a.take("count", 2, Value::none());
  a.expect_consumed("replace", 3);
  std::string out = py_replace(to_str(v), from, to, count.is_none() ? -1 : count.as_int());
  in.check_size(out.size());
  return Value::string(std::move(out));
}

Value f_indent(Interpreter& in, const Value& v, CallArgs& a) {
  const Value width = a.take("width", 0, Value::integer(4));
  const bool first = flag(a.take("first", 1)), blank = flag(a.take("blank", 2));
  a.expect_consumed("indent", 3);
  const std::string ind =
      width.is_string() ? width.str() : std::string(std::max<int64_t>(0, width.as_int()), ' ');
  const auto lines = py_splitlines(to_str(v) + "\n");  // jinja2 appends "\n" before splitting
  std::string out;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i) out += "\n";
    if (i && (blank || !lines[i].empty())) out += ind;
    out += lines[i];
    in.check_size(out.size());
  }
  return Value::string(first ? ind + out : out);
}

Value f_tojson(Interpreter& in, const Value& v, CallArgs& a) {
  JsonStyle st;
  st.ensure_ascii = flag(a.take("ensure_ascii", 0));
  const Value indent = a.take("indent", 1, Value::none());
  const Value seps = a.take("separators", 2, Value::none());
  st.sort_keys = flag(a.take("sort_keys", 3));
  a.expect_consumed("tojson", 4);
  if (!indent.is_none() && !indent.is_undefined()) {
    st.indent = true;
    st.indent_str =
        indent.is_string() ? indent.str() : std::string(std::max<int64_t>(0, indent.as_int()), ' ');
    st.item_sep = ",";
  }
  if (!seps.is_none() && !seps.is_undefined()) {
    if (!seps.is_list() || seps.items().size() != 2) raise("tojson: separators must be a pair");
    st.item_sep = to_str(seps.items()[0]);
    st.key_sep = to_str(seps.items()[1]);
  }
  std::string out = dump_json(v, st);
  in.check_size(out.size());
  return Value::string(std::move(out));
}

Value f_join(Interpreter& in, const Value& v, CallArgs& a) {
  const std::string sep = to_str(a.take("d", 0, Value::string("")));
  const Value attribute = a.take("attribute", 1, Value::none());
  a.expect_consumed("join", 2);
  std::string out;
  bool first = true;
  for (const auto& item : iterate(v)) {
    if (!first) out += sep;
    first = false;
    out += to_str(attribute.is_none() ? item : attr_path(item, attribute));
    in.check_size(out.size());
  }
  return Value::string(std::move(out));
}

// ---- conversions ------------------------------------------------------------------------------

std::optional<double> parse_float(std::string s) {
  s = py_strip(s, std::nullopt, true, true);
  std::string t;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '_') {
      t += s[i];
      continue;
    }
    if (i == 0 || i + 1 == s.size() || !::isdigit(s[i - 1]) || !::isdigit(s[i + 1])) return {};
  }
  const bool neg = !t.empty() && t[0] == '-';
  if (!t.empty() && (t[0] == '-' || t[0] == '+')) t.erase(0, 1);
  std::string low = py_lower(t);
  if (low == "inf" || low == "infinity") return neg ? -INFINITY : INFINITY;
  if (low == "nan") return NAN;
  double d = 0;
  const auto r = std::from_chars(t.data(), t.data() + t.size(), d);
  if (t.empty() || r.ec != std::errc() || r.ptr != t.data() + t.size()) return {};
  return neg ? -d : d;
}

// Python's int(s, base) for bases 2, 8, 10 and 16 (prefixes allowed when they match the base).
std::optional<int64_t> parse_int(std::string s, int64_t base) {
  if (base != 2 && base != 8 && base != 10 && base != 16)
    raise("unsupported: int filter with base ", std::to_string(base));
  s = py_strip(s, std::nullopt, true, true);
  size_t i = 0;
  const bool neg = !s.empty() && s[0] == '-';
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) ++i;
  if (base != 10 && i + 1 < s.size() && s[i] == '0' &&
      (s[i + 1] | 0x20) == (base == 16  ? 'x'
                            : base == 8 ? 'o'
                                        : 'b')) {
    i += 2;
    if (i < s.size() && s[i] == '_') ++i;
  }
  std::string digits;
  for (; i < s.size(); ++i) {
    if (s[i] == '_' && !digits.empty() && i + 1 < s.size() && s[i + 1] != '_') continue;
    digits += s[i];
  }
  int64_t v = 0;
  const auto r =
      std::from_chars(digits.data(), digits.data() + digits.size(), v, static_cast<int>(base));
  if (digits.empty() || r.ec != std::errc() || r.ptr != digits.data() + digits.size()) return {};
  return neg ? -v : v;
}

Value f_int(Interpreter&, const Value& v, CallArgs& a) {
  const Value dflt = a.take("default", 0, Value::integer(0));
  const Value base = a.take("base", 1, Value::integer(10));
  a.expect_consumed("int", 2);
  if (v.is_undefined()) undefined_error(v);
  if (v.is_int() || v.is_bool()) return Value::integer(v.as_int());
  if (v.is_float()) {
    if (!std::isfinite(v.as_float())) raise("cannot convert float to integer");
    return Value::integer(static_cast<int64_t>(std::trunc(v.as_float())));
  }
  if (!v.is_string()) return dflt;
  if (auto i = parse_int(v.str(), base.as_int())) return Value::integer(*i);
  const auto f = parse_float(v.str());
  if (f && std::isfinite(*f)) return Value::integer(static_cast<int64_t>(std::trunc(*f)));
  return dflt;
}

Value f_float(Interpreter&, const Value& v, CallArgs& a) {
  const Value dflt = a.take("default", 0, Value::number(0.0));
  a.expect_consumed("float", 1);
  if (v.is_undefined()) undefined_error(v);
  if (v.is_number()) return Value::number(v.as_float());
  if (v.is_string())
    if (auto f = parse_float(v.str())) return Value::number(*f);
  return dflt;
}

// ---- sequences --------------------------------------------------------------------------------

Value f_default(Interpreter&, const Value& v, CallArgs& a) {
  const Value dflt = a.take("default_value", 0, Value::string(""));
  const bool boolean = flag(a.take("boolean", 1));
  a.expect_consumed("default", 2);
  return v.is_undefined() || (boolean && !truthy(v)) ? dflt : v;
}

Value f_length(Interpreter&, const Value& v, CallArgs& a) {
  a.expect_consumed("length", 0);
  return Value::integer(length(v));
}

Value f_first(Interpreter&, const Value& v, CallArgs& a) {
  a.expect_consumed("first", 0);
  const auto items = iterate(v);
  return items.empty() ? Value::undefined("No first item, sequence was empty.") : items.front();
}

Value f_last(Interpreter&, const Value& v, CallArgs& a) {
  a.expect_consumed("last", 0);
  if (v.is_generator()) raise("'generator' object is not reversible");
  const auto items = iterate(v);
  return items.empty() ? Value::undefined("No last item, sequence was empty.") : items.back();
}

Value f_list(Interpreter&, const Value& v, CallArgs& a) {
  a.expect_consumed("list", 0);
  return Value::list(iterate(v));
}

Value f_items(Interpreter&, const Value& v, CallArgs& a) {
  a.expect_consumed("items", 0);
  if (v.is_undefined()) return Value::generator({});
  if (!v.is_dict()) raise("Can only get item pairs from a mapping.");
  List out;
  for (const auto& [k, x] : v.dict().entries)
    out.push_back(Value::list({Value::string(k), x}, true));
  return Value::generator(std::move(out));
}

Value f_reverse(Interpreter&, const Value& v, CallArgs& a) {
  a.expect_consumed("reverse", 0);
  if (v.is_string()) return Value::string(py_slice(v.str(), std::nullopt, std::nullopt, -1));
  auto items = iterate(v);
  std::reverse(items.begin(), items.end());
  // jinja2 returns reversed(value), an iterator, except for generators, which it lists.
  return v.is_generator() ? Value::list(std::move(items)) : Value::generator(std::move(items));
}

Value f_sort(Interpreter&, const Value& v, CallArgs& a) {
  const bool reverse = flag(a.take("reverse", 0)), cs = flag(a.take("case_sensitive", 1));
  const Value attribute = a.take("attribute", 2, Value::none());
  a.expect_consumed("sort", 3);
  if (attribute.is_string() && attribute.str().find(',') != std::string::npos)
    raise("unsupported: sort on several attributes");
  std::vector<std::pair<Value, Value>> keyed;
  for (const auto& item : iterate(v)) keyed.emplace_back(key_of(item, attribute, cs), item);
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& x, const auto& y) {
    return reverse ? less(y.first, x.first) : less(x.first, y.first);
  });
  List out;
  for (auto& [k, item] : keyed) out.push_back(std::move(item));
  return Value::list(std::move(out));
}

Value f_unique(Interpreter&, const Value& v, CallArgs& a) {
  const bool cs = flag(a.take("case_sensitive", 0));
  const Value attribute = a.take("attribute", 1, Value::none());
  a.expect_consumed("unique", 2);
  List out, seen;
  for (const auto& item : iterate(v)) {
    const Value k = key_of(item, attribute, cs);
    if ((k.is_list() && !k.is_tuple()) || k.is_dict())
      raise("unhashable type: '", k.type_name(), "'");
    if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return equals(s, k); })) {
      seen.push_back(k);
      out.push_back(item);
    }
  }
  return Value::generator(std::move(out));
}

template <bool Max>
Value f_minmax(Interpreter&, const Value& v, CallArgs& a) {
  const bool cs = flag(a.take("case_sensitive", 0));
  const Value attribute = a.take("attribute", 1, Value::none());
  a.expect_consumed(Max ? "max" : "min", 2);
  const auto items = iterate(v);
  if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
  size_t best = 0;
  Value best_key = key_of(items[0], attribute, cs);
  for (size_t i = 1; i < items.size(); ++i) {
    Value k = key_of(items[i], attribute, cs);
    if (Max ? less(best_key, k) : less(k, best_key)) best = i, best_key = std::move(k);
  }
  return items[best];
}

Value f_sum(Interpreter& in, const Value& v, CallArgs& a) {
  const Value attribute = a.take("attribute", 0, Value::none());
  Value total = a.take("start", 1, Value::integer(0));
  a.expect_consumed("sum", 2);
  for (const auto& item : iterate(v))
    total = binary_op(in, "+", total, attribute.is_none() ? item : attr_path(item, attribute));
  return total;
}

// map(filter, ...) or map(attribute=..., default=...).
Value f_map(Interpreter& in, const Value& v, CallArgs& a) {
  List out;
  if (a.args.empty() && !a.kwargs.empty() && a.kwargs[0].first == "attribute") {
    const Value attribute = a.take("attribute", 99);
    const Value dflt = a.take("default", 99);
    a.expect_consumed("map", 0);
    for (const auto& item : iterate(v)) out.push_back(attr_path(item, attribute, dflt));
    return Value::generator(std::move(out));
  }
  if (a.args.empty()) raise("map requires a filter argument");
  const std::string name = to_str(a.args[0]);
  for (const auto& item : iterate(v)) {
    CallArgs rest{{a.args.begin() + 1, a.args.end()}, a.kwargs};
    out.push_back(in.filter(name, item, rest));
  }
  return Value::generator(std::move(out));
}

// select / reject / selectattr / rejectattr.
template <bool Keep, bool ByAttr>
Value f_select(Interpreter& in, const Value& v, CallArgs& a) {
  size_t off = 0;
  Value attribute;
  if (ByAttr) {
    if (a.args.empty()) raise("Missing parameter for attribute name");
    attribute = a.args[0];
    off = 1;
  }
  List out;
  for (const auto& item : iterate(v)) {
    const Value x = ByAttr ? attr_path(item, attribute) : item;
    bool ok;
    if (a.args.size() > off) {
      CallArgs rest{{a.args.begin() + off + 1, a.args.end()}, a.kwargs};
      ok = in.test(to_str(a.args[off]), x, rest);
    } else {
      ok = truthy(x);
    }
    if (ok == Keep) out.push_back(item);
  }
  return Value::generator(std::move(out));
}

Value f_string(Interpreter&, const Value& v, CallArgs& a) {
  a.expect_consumed("string", 0);
  return v.is_string() ? v : Value::string(to_str(v));
}

Value f_safe(Interpreter&, const Value& v, CallArgs& a) {
  a.expect_consumed("safe", 0);
  return Value::string(to_str(v), true);
}

Value f_abs(Interpreter&, const Value& v, CallArgs& a) {
  a.expect_consumed("abs", 0);
  if (v.is_float()) return Value::number(std::fabs(v.as_float()));
  if (!v.is_int() && !v.is_bool()) raise("bad operand type for abs(): '", v.type_name(), "'");
  return v.as_int() < 0 ? negate(v) : Value::integer(v.as_int());
}

Value f_attr(Interpreter&, const Value& v, CallArgs& a) {
  const std::string name = to_str(a.take("name", 0));
  a.expect_consumed("attr", 1);
  if (v.is_dict() || v.is_string() || v.is_list()) {  // getattr only: no item fallback
    if (auto m = get_method(v, name)) return *m;
    return Value::undefined("'" + std::string(v.type_name()) + " object' has no attribute '" +
                            name + "'");
  }
  return get_attr(v, name);
}

const std::pair<const char*, FilterFn> kFilters[] = {
    {"trim", f_trim},
    {"upper", f_case<py_upper>},
    {"lower", f_case<py_lower>},
    {"title", f_case<jinja_title>},
    {"capitalize", f_case<py_capitalize>},
    {"replace", f_replace},
    {"indent", f_indent},
    {"tojson", f_tojson},
    {"join", f_join},
    {"int", f_int},
    {"float", f_float},
    {"default", f_default},
    {"d", f_default},
    {"length", f_length},
    {"count", f_length},
    {"first", f_first},
    {"last", f_last},
    {"list", f_list},
    {"items", f_items},
    {"reverse", f_reverse},
    {"sort", f_sort},
    {"unique", f_unique},
    {"min", f_minmax<false>},
    {"max", f_minmax<true>},
    {"sum", f_sum},
    {"map", f_map},
    {"select", f_select<true, false>},
    {"reject", f_select<false, false>},
    {"selectattr", f_select<true, true>},
    {"rejectattr", f_select<false, true>},
    {"string", f_string},
    {"safe", f_safe},
    {"abs", f_abs},
    {"attr", f_attr},
};

// jinja2 builtin filters this build leaves out.
const char* const kOtherFilters[] = {
    "batch",    "center",    "dictsort", "e",         "escape",   "filesizeformat", "forceescape",
    "format",   "groupby",   "pprint",   "random",    "round",    "slice",          "striptags",
    "truncate", "urlencode", "urlize",   "wordcount", "wordwrap", "xmlattr"};

// ---- tests ------------------------------------------------------------------------------------

Value one_arg(CallArgs& a, const char* test) {
  if (a.args.empty()) raise("the test '", test, "' needs an argument");
  Value x = a.args[0];
  a.args.erase(a.args.begin());
  a.expect_consumed(test, 0);
  return x;
}

bool divisible(Interpreter& in, const Value& v, const Value& by, int64_t rem) {
  return equals(binary_op(in, "%", v, by), Value::integer(rem));
}

bool compare_test(const std::string& n, const Value& v, CallArgs& a) {
  const Value other = one_arg(a, n.c_str());
  if (n == "==" || n == "eq" || n == "equalto") return compare("==", v, other);
  if (n == "!=" || n == "ne") return compare("!=", v, other);
  if (n == "<" || n == "lt" || n == "lessthan") return compare("<", v, other);
  if (n == "<=" || n == "le") return compare("<=", v, other);
  if (n == ">" || n == "gt" || n == "greaterthan") return compare(">", v, other);
  return compare(">=", v, other);  // >= ge
}

bool type_test(const std::string& n, const Value& v) {
  if (n == "defined") return !v.is_undefined();
  if (n == "undefined") return v.is_undefined();
  if (n == "none") return v.is_none();
  if (n == "boolean") return v.is_bool();
  if (n == "true") return v.is_bool() && v.as_bool();
  if (n == "false") return v.is_bool() && !v.as_bool();
  if (n == "integer") return v.is_int();
  if (n == "float") return v.is_float();
  if (n == "number") return v.is_number();
  if (n == "string") return v.is_string();
  if (n == "mapping") return v.is_dict();
  if (n == "callable") return v.is_callable();
  if (n == "escaped") return v.is_markup();
  if (n == "iterable")
    return v.is_undefined() || v.is_string() || v.is_list() || v.is_dict() ||
           (v.is_object() && v.object().type == "LoopContext");
  // sequence: len() and __getitem__ (str, list, tuple, dict, range, Undefined)
  if (v.is_view()) return std::string_view(v.type_name()) == "range";
  return v.is_undefined() || v.is_string() || v.is_list() || v.is_dict();
}

bool is_type_test(const std::string& n) {
  static const char* kNames[] = {"defined", "undefined", "none",    "boolean",  "true",
                                 "false",   "integer",   "float",   "number",   "string",
                                 "mapping", "callable",  "escaped", "iterable", "sequence"};
  return std::any_of(std::begin(kNames), std::end(kNames), [&](const char* k) { return n == k; });
}

bool is_compare_test(const std::string& n) {
  static const char* kNames[] = {"==", "eq", "equalto", "!=", "ne",          "<",  "lt", "lessthan",
                                 "<=", "le", ">",       "gt", "greaterthan", ">=", "ge"};
  return std::any_of(std::begin(kNames), std::end(kNames), [&](const char* k) { return n == k; });
}

}  // namespace

bool is_jinja_filter(const std::string& name) {
  for (const auto& [n, f] : kFilters)
    if (name == n) return true;
  return std::any_of(std::begin(kOtherFilters), std::end(kOtherFilters),
                     [&](const char* n) { return name == n; });
}

bool is_jinja_test(const std::string& name) {
  static const char* kOther[] = {"odd",   "even",   "divisibleby", "in",  "lower",
                                 "upper", "sameas", "filter",      "test"};
  return is_type_test(name) || is_compare_test(name) ||
         std::any_of(std::begin(kOther), std::end(kOther),
                     [&](const char* n) { return name == n; });
}

Value apply_filter(Interpreter& in, const std::string& name, const Value& input, CallArgs& args) {
  for (const auto& [n, f] : kFilters) {
    if (name != n) continue;
    if (input.is_markup() && name != "safe" && name != "string" && name != "length" &&
        name != "count" && name != "tojson")
      raise("unsupported: the filter '", name, "' on a |safe string");
    return f(in, input, args);
  }
  if (is_jinja_filter(name)) raise("unsupported: the filter '", name, "'");
  raise("no filter named '", name, "'");
}

bool apply_test(Interpreter& in, const std::string& n, const Value& v, CallArgs& a) {
  if (is_type_test(n)) {
    a.expect_consumed(n, 0);
    return type_test(n, v);
  }
  if (is_compare_test(n)) return compare_test(n, v, a);
  if (n == "odd" || n == "even") {
    a.expect_consumed(n, 0);
    return divisible(in, v, Value::integer(2), n == "odd" ? 1 : 0);
  }
  if (n == "divisibleby") return divisible(in, v, one_arg(a, "divisibleby"), 0);
  if (n == "in") return compare("in", v, one_arg(a, "in"));
  if (n == "lower" || n == "upper") {
    a.expect_consumed(n, 0);
    CallArgs none;
    return truthy(get_method(Value::string(to_str(v)), n == "lower" ? "islower" : "isupper")
                      ->fn()
                      .fn(in, none));
  }
  if (n == "filter" || n == "test") {
    a.expect_consumed(n, 0);
    return v.is_string() && (n == "filter" ? is_jinja_filter(v.str()) : is_jinja_test(v.str()));
  }
  if (n == "sameas") {
    const Value other = one_arg(a, "sameas");
    if ((v.is_none() || v.is_bool()) && (other.is_none() || other.is_bool()))
      return v.kind() == other.kind() && v.as_int() == other.as_int();
    raise("unsupported: the test 'sameas' on a ", v.type_name());
  }
  raise("no test named '", n, "'");
}

}  // namespace uniattn::jinja
