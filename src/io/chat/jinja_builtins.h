// What templates can call and apply: operators with Python semantics (jinja_ops.cpp), filters
// and tests (jinja_filters.cpp), str/dict/list methods and the environment globals that
// transformers sets up (jinja_methods.cpp). Everything outside the supported set fails with a
// message naming it; none of it is ever skipped.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "io/chat/jinja_eval.h"
#include "io/chat/jinja_value.h"

namespace uniattn::jinja {

// ---- operators (jinja_ops.cpp)
// Fails with the undefined value's hint ("'x' is undefined").
[[noreturn]] void undefined_error(const Value& v);
// + - * / // % ** with Python's semantics (int overflow fails rather than wrapping).
Value binary_op(Interpreter& in, const std::string& op, const Value& a, const Value& b);
Value negate(const Value& v);
// One comparison: == != < <= > >= in notin.
bool compare(const std::string& op, const Value& a, const Value& b);
// What `for x in v` iterates: list items, string characters, dict keys; nothing for Undefined.
std::vector<Value> iterate(const Value& v);
// jinja2's environment.getattr / getitem (attribute first vs. item first, then the other).
Value get_attr(const Value& obj, const std::string& name);
Value get_item(const Value& obj, const Value& key);
// Python's len(); fails for values without one.
int64_t length(const Value& v);

// ---- filters and tests (jinja_filters.cpp)
// Whether jinja2 (with transformers' tojson) knows a filter / test of this name. jinja2 rejects
// unknown names when it compiles the template, so the parser does too.
bool is_jinja_filter(const std::string& name);
bool is_jinja_test(const std::string& name);
Value apply_filter(Interpreter& in, const std::string& name, const Value& input, CallArgs& args);
bool apply_test(Interpreter& in, const std::string& name, const Value& v, CallArgs& args);

// ---- methods and globals (jinja_methods.cpp)
// A bound method of a str, dict or list (as a callable), nullopt when `name` is no method of
// that type. Fails for real Python methods this build does not implement.
std::optional<Value> get_method(const Value& obj, const std::string& name);
// range, dict, namespace, raise_exception, strftime_now (+ jinja2's other globals, which fail
// when called).
Dict make_globals();

}  // namespace uniattn::jinja
