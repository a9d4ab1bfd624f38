// Methods of str, dict and list that templates call (message.content.strip(), tool.items(),
// ...) and the globals transformers' environment provides.
#include <algorithm>
#include <ctime>

#include "io/chat/jinja_builtins.h"
#include "io/chat/jinja_text.h"

namespace uniattn::jinja {

namespace {

using Method = Value (*)(Interpreter&, const Value& self, CallArgs&);

std::string need_str(const Value& v, const char* what) {
  if (!v.is_string()) raise(what, " must be str, not ", v.type_name());
  return v.str();
}

// An optional str argument: omitted (Undefined) and None both mean "not given".
std::optional<std::string> opt_str(const Value& v, const char* what) {
  if (v.is_undefined() || v.is_none()) return std::nullopt;
  return need_str(v, what);
}

int64_t need_int(const Value& v, const char* what) {
  if (!v.is_int() && !v.is_bool()) raise(what, " must be an integer, not ", v.type_name());
  return v.as_int();
}

Value str_list(const std::vector<std::string>& parts) {
  List out;
  for (const auto& p : parts) out.push_back(Value::string(p));
  return Value::list(std::move(out));
}

Value m_strip(const Value& self, CallArgs& a, bool left, bool right, const char* name) {
  const auto chars = opt_str(a.take("chars", 0), "strip arg");
  a.expect_consumed(name, 1);
  return Value::string(py_strip(self.str(), chars, left, right));
}

Value m_split(Interpreter&, const Value& self, CallArgs& a) {
  const auto sep = opt_str(a.take("sep", 0), "separator");
  const Value max = a.take("maxsplit", 1, Value::integer(-1));
  a.expect_consumed("split", 2);
  return str_list(py_split(self.str(), sep, need_int(max, "maxsplit")));
}

// startswith/endswith with a str or a tuple of str.
Value m_affix(const Value& self, CallArgs& a, bool start) {
  const Value arg = a.take(start ? "prefix" : "suffix", 0);
  a.expect_consumed(start ? "startswith" : "endswith", 1);
  std::vector<std::string> options;
  if (arg.is_tuple()) {
    for (const auto& v : arg.items()) options.push_back(need_str(v, "tuple item"));
  } else {
    options.push_back(need_str(arg, start ? "startswith arg" : "endswith arg"));
  }
  const std::string& s = self.str();
  for (const auto& o : options)
    if (start ? s.starts_with(o) : s.ends_with(o)) return Value::boolean(true);
  return Value::boolean(false);
}

Value m_replace(Interpreter& in, const Value& self, CallArgs& a) {
  const std::string from = need_str(a.take("old", 0), "replace arg 1");
  const std::string to = need_str(a.take("new", 1), "replace arg 2");
  const int64_t count = need_int(a.take("count", 2, Value::integer(-1)), "count");
  a.expect_consumed("replace", 3);
  std::string out = py_replace(self.str(), from, to, count);
  in.check_size(out.size());
  return Value::string(std::move(out));
}

// find/rfind/count/index: positions are in code points, as Python counts them.
Value m_search(const Value& self, CallArgs& a, const char* name) {
  const std::string sub = need_str(a.take("sub", 0), "substring");
  a.expect_consumed(name, 1);
  const std::string& s = self.str();
  const std::string_view n(name);
  if (n == "count") {
    if (sub.empty()) return Value::integer(static_cast<int64_t>(count_code_points(s)) + 1);
    int64_t c = 0;
    for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + sub.size())) ++c;
    return Value::integer(c);
  }
  const size_t p = n == "rfind" ? s.rfind(sub) : s.find(sub);
  if (p == std::string::npos) {
    if (n == "index") raise("substring not found");
    return Value::integer(-1);
  }
  return Value::integer(static_cast<int64_t>(count_code_points(std::string_view(s).substr(0, p))));
}

Value m_join(Interpreter& in, const Value& self, CallArgs& a) {
  const Value seq = a.take("iterable", 0);
  a.expect_consumed("join", 1);
  std::string out;
  bool first = true;
  for (const auto& v : iterate(seq)) {
    if (!first) out += self.str();
    out += need_str(v, "sequence item");
    first = false;
    in.check_size(out.size());
  }
  return Value::string(std::move(out));
}

// str.format with plain {} / {0} / {name} fields (no conversions or format specs).
Value m_format(Interpreter& in, const Value& self, CallArgs& a) {
  const std::string& f = self.str();
  std::string out;
  size_t auto_index = 0;
  for (size_t i = 0; i < f.size(); ++i) {
    const char c = f[i];
    if ((c == '{' || c == '}') && i + 1 < f.size() && f[i + 1] == c) {
      out += c, ++i;
      continue;
    }
    if (c == '}') raise("single '}' encountered in format string");
    if (c != '{') {
      out += c;
      continue;
    }
    const size_t close = f.find('}', i);
    if (close == std::string::npos) raise("single '{' encountered in format string");
    const std::string field = f.substr(i + 1, close - i - 1);
    if (field.find_first_of(":!.[") != std::string::npos)
      raise("unsupported: the format field {", field, "}");
    Value v;
    if (field.empty() || std::all_of(field.begin(), field.end(), ::isdigit)) {
      const size_t k = field.empty() ? auto_index++ : std::stoul(field);
      if (k >= a.args.size()) raise("Replacement index ", std::to_string(k), " out of range");
      v = a.args[k];
    } else {
      auto it = std::find_if(a.kwargs.begin(), a.kwargs.end(),
                             [&](const auto& kw) { return kw.first == field; });
      if (it == a.kwargs.end()) raise("KeyError: '", field, "'");
      v = it->second;
    }
    out += to_str(v);
    in.check_size(out.size());
    i = close;
  }
  return Value::string(std::move(out));
}

// isdigit/isalpha/...: ASCII only; a non-ASCII character fails (Python's tables are Unicode).
Value m_is(const Value& self, CallArgs& a, const char* name) {
  a.expect_consumed(name, 0);
  const std::string& s = self.str();
  const std::string_view n(name);
  if (std::any_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) >= 0x80; }))
    raise("unsupported: str.", name, "() of non-ASCII text");
  auto all = [&](auto pred) { return !s.empty() && std::all_of(s.begin(), s.end(), pred); };
  const bool cased = std::any_of(s.begin(), s.end(), ::isalpha);
  if (n == "isdigit") return Value::boolean(all(::isdigit));
  if (n == "isalpha") return Value::boolean(all(::isalpha));
  if (n == "isalnum") return Value::boolean(all(::isalnum));
  if (n == "isspace")
    return Value::boolean(all([](char c) { return is_py_space(static_cast<unsigned char>(c)); }));
  if (n == "islower") return Value::boolean(cased && std::none_of(s.begin(), s.end(), ::isupper));
  return Value::boolean(cased && std::none_of(s.begin(), s.end(), ::islower));  // isupper
}

Value m_case(const Value& self, CallArgs& a, const char* name) {
  a.expect_consumed(name, 0);
  const std::string_view n(name);
  const std::string& s = self.str();
  if (n == "upper") return Value::string(py_upper(s));
  if (n == "lower") return Value::string(py_lower(s));
  if (n == "title") return Value::string(py_title(s));
  return Value::string(py_capitalize(s));
}

Value m_affix_remove(const Value& self, CallArgs& a, bool prefix) {
  const std::string x = need_str(a.take(prefix ? "prefix" : "suffix", 0), "argument");
  a.expect_consumed(prefix ? "removeprefix" : "removesuffix", 1);
  std::string s = self.str();
  if (prefix && s.starts_with(x)) s.erase(0, x.size());
  if (!prefix && s.ends_with(x)) s.resize(s.size() - x.size());
  return Value::string(std::move(s));
}

Value m_splitlines(Interpreter&, const Value& self, CallArgs& a) {
  a.expect_consumed("splitlines", 0);
  return str_list(py_splitlines(self.str()));
}

#define STR_METHOD(name, expr)                                           \
  {                                                                      \
    name, [](Interpreter& in, const Value& self, CallArgs& a) -> Value { \
      (void)in;                                                          \
      return expr;                                                       \
    }                                                                    \
  }

const std::pair<const char*, Method> kStrMethods[] = {
    STR_METHOD("strip", m_strip(self, a, true, true, "strip")),
    STR_METHOD("lstrip", m_strip(self, a, true, false, "lstrip")),
    STR_METHOD("rstrip", m_strip(self, a, false, true, "rstrip")),
    {"split", m_split},
    {"splitlines", m_splitlines},
    STR_METHOD("startswith", m_affix(self, a, true)),
    STR_METHOD("endswith", m_affix(self, a, false)),
    STR_METHOD("removeprefix", m_affix_remove(self, a, true)),
    STR_METHOD("removesuffix", m_affix_remove(self, a, false)),
    {"replace", m_replace},
    STR_METHOD("find", m_search(self, a, "find")),
    STR_METHOD("rfind", m_search(self, a, "rfind")),
    STR_METHOD("index", m_search(self, a, "index")),
    STR_METHOD("count", m_search(self, a, "count")),
    {"join", m_join},
    {"format", m_format},
    STR_METHOD("upper", m_case(self, a, "upper")),
    STR_METHOD("lower", m_case(self, a, "lower")),
    STR_METHOD("title", m_case(self, a, "title")),
    STR_METHOD("capitalize", m_case(self, a, "capitalize")),
    STR_METHOD("isdigit", m_is(self, a, "isdigit")),
    STR_METHOD("isalpha", m_is(self, a, "isalpha")),
    STR_METHOD("isalnum", m_is(self, a, "isalnum")),
    STR_METHOD("isspace", m_is(self, a, "isspace")),
    STR_METHOD("islower", m_is(self, a, "islower")),
    STR_METHOD("isupper", m_is(self, a, "isupper")),
};

Value dict_view(const Value& self, CallArgs& a, const char* name) {
  a.expect_consumed(name, 0);
  const std::string_view n(name);
  List out;
  for (const auto& [k, v] : self.dict().entries) {
    if (n == "items")
      out.push_back(Value::list({Value::string(k), v}, true));
    else
      out.push_back(n == "keys" ? Value::string(k) : v);
  }
  return Value::view(n == "items"  ? "dict_items"
                     : n == "keys" ? "dict_keys"
                                   : "dict_values",
                     std::move(out));
}

Value dict_get(Interpreter&, const Value& self, CallArgs& a) {
  const Value key = a.take("key", 0);
  const Value dflt = a.take("default", 1, Value::none());
  a.expect_consumed("get", 2);
  if (key.is_string())
    if (const Value* v = self.dict().find(key.str())) return *v;
  return dflt;
}

const std::pair<const char*, Method> kDictMethods[] = {
    STR_METHOD("items", dict_view(self, a, "items")),
    STR_METHOD("keys", dict_view(self, a, "keys")),
    STR_METHOD("values", dict_view(self, a, "values")),
    {"get", dict_get},
};

Value list_search(const Value& self, CallArgs& a, bool count) {
  const Value x = a.take("value", 0);
  a.expect_consumed(count ? "count" : "index", 1);
  int64_t n = 0;
  for (size_t i = 0; i < self.items().size(); ++i) {
    if (!equals(self.items()[i], x)) continue;
    if (!count) return Value::integer(static_cast<int64_t>(i));
    ++n;
  }
  if (!count) raise(to_repr(x), " is not in list");
  return Value::integer(n);
}

const std::pair<const char*, Method> kListMethods[] = {
    STR_METHOD("count", list_search(self, a, true)),
    STR_METHOD("index", list_search(self, a, false)),
};

#undef STR_METHOD

// Real Python methods left out: asking for one fails instead of giving Undefined.
const char* const kOtherStr[] = {
    "casefold",  "center",       "encode",    "expandtabs",  "format_map", "isascii",
    "isdecimal", "isidentifier", "isnumeric", "isprintable", "istitle",    "ljust",
    "maketrans", "partition",    "rindex",    "rjust",       "rpartition", "rsplit",
    "swapcase",  "translate",    "zfill"};
const char* const kOtherDict[] = {"clear",   "copy",       "fromkeys", "pop",
                                  "popitem", "setdefault", "update"};
const char* const kOtherList[] = {"append", "clear",  "copy",    "extend", "insert",
                                  "pop",    "remove", "reverse", "sort"};

template <size_t N>
std::optional<Value> find_method(const Value& self, const std::string& name,
                                 const std::pair<const char*, Method> (&table)[N]) {
  for (const auto& [n, fn] : table) {
    if (name != n) continue;
    Method m = fn;
    return Value::callable(name,
                           [self, m](Interpreter& in, CallArgs& a) { return m(in, self, a); });
  }
  return std::nullopt;
}

template <size_t N>
bool listed(const std::string& name, const char* const (&names)[N]) {
  return std::any_of(std::begin(names), std::end(names), [&](const char* n) { return name == n; });
}

}  // namespace

std::optional<Value> get_method(const Value& obj, const std::string& name) {
  std::optional<Value> m;
  bool other = false;
  if (obj.is_string()) {
    m = find_method(obj, name, kStrMethods);
    other = listed(name, kOtherStr);
    if (m && obj.is_markup()) raise("unsupported: str.", name, "() on a |safe string");
  } else if (obj.is_dict()) {
    m = find_method(obj, name, kDictMethods);
    other = listed(name, kOtherDict);
  } else if (obj.is_list() && !obj.is_view()) {
    m = find_method(obj, name, kListMethods);
    other = listed(name, kOtherList);
  }
  if (!m && other) raise("unsupported: the method ", obj.type_name(), ".", name, "()");
  return m;
}

// ---- globals ----------------------------------------------------------------------------------

namespace {

Value g_range(Interpreter&, CallArgs& a) {
  if (!a.kwargs.empty() || a.args.empty() || a.args.size() > 3)
    raise("range() takes 1 to 3 positional arguments");
  int64_t start = 0, stop, step = 1;
  if (a.args.size() == 1) {
    stop = need_int(a.args[0], "range() argument");
  } else {
    start = need_int(a.args[0], "range() argument");
    stop = need_int(a.args[1], "range() argument");
    if (a.args.size() == 3) step = need_int(a.args[2], "range() argument");
  }
  if (step == 0) raise("range() arg 3 must not be zero");
  const int64_t n = step > 0 ? (stop > start ? (stop - start - 1) / step + 1 : 0)
                             : (start > stop ? (start - stop - 1) / (-step) + 1 : 0);
  if (n > 100000) raise("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
  List out;
  for (int64_t i = 0; i < n; ++i) out.push_back(Value::integer(start + i * step));
  return Value::view("range", std::move(out));
}

// dict(**kw) and namespace(**kw), optionally seeded from one positional dict.
Dict collect_kwargs(CallArgs& a, const char* name) {
  Dict d;
  if (a.args.size() > 1) raise(name, "() takes at most 1 positional argument");
  if (a.args.size() == 1) {
    if (!a.args[0].is_dict()) raise("unsupported: ", name, "() of a ", a.args[0].type_name());
    d = a.args[0].dict();
  }
  for (auto& [k, v] : a.kwargs) d.set(k, v);
  return d;
}

Value g_namespace(Interpreter&, CallArgs& a) {
  auto ns = std::make_shared<Object>();
  ns->type = "Namespace";
  ns->mutable_attrs = true;
  ns->attrs = collect_kwargs(a, "namespace");
  for (const auto& [k, v] : ns->attrs.entries)
    if (k.starts_with("_")) raise("cannot store underscore-prefixed attributes on a namespace");
  return Value::object(std::move(ns));
}

Value g_strftime_now(Interpreter&, CallArgs& a) {
  const std::string fmt = need_str(a.take("format", 0), "strftime_now() argument");
  a.expect_consumed("strftime_now", 1);
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char buf[512];
  const size_t n = std::strftime(buf, sizeof buf, fmt.c_str(), &local);
  if (n == 0 && !fmt.empty()) raise("unsupported: strftime_now format '", fmt, "'");
  return Value::string(std::string(buf, n));
}

}  // namespace

Dict make_globals() {
  Dict g;
  g.set("range", Value::callable("range", g_range));
  g.set("dict", Value::callable("dict", [](Interpreter&, CallArgs& a) {
          return Value::dict(collect_kwargs(a, "dict"));
        }));
  g.set("namespace", Value::callable("namespace", g_namespace));
  g.set("raise_exception",
        Value::callable("raise_exception", [](Interpreter&, CallArgs& a) -> Value {
          const Value msg = a.take("message", 0);
          raise(to_str(msg));
        }));
  g.set("strftime_now", Value::callable("strftime_now", g_strftime_now));
  for (const char* name : {"lipsum", "cycler", "joiner"}) {
    const std::string n = name;
    g.set(n, Value::callable(n, [n](Interpreter&, CallArgs&) -> Value {
            raise("unsupported: the global ", n, "()");
          }));
  }
  return g;
}

}  // namespace uniattn::jinja
