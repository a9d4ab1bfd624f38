// Chat templates (src/io/chat, Jinja): first byte even -> the rest is a template source, parsed
// and rendered on a fixed conversation; odd -> the rest is a tokenizer_config.json, loaded with
// ChatTemplate::load as uniattn-generate --chat does and rendered the same way.
#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "uniattn/io/chat_template.h"

namespace {
void render(const uniattn::ChatTemplate& t) {
  using uniattn::ChatMessage;
  const std::vector<ChatMessage> conv = {
      {"system", "Be brief."}, {"user", "Hi <s> {{ x }}"}, {"assistant", "Hello."}, {"user", "?"}};
  uniattn::fuzz::expect_ok_or_error([&] { (void)t.render(conv, true); });
  uniattn::fuzz::expect_ok_or_error([&] { (void)t.render({{"user", "x"}}, false); });
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace uniattn;
  if (size < 1) return 0;
  const auto rest = fuzz::as_text(data + 1, size - 1);
  if (data[0] % 2 == 0) {
    fuzz::expect_ok_or_error([&] {
      ChatTemplate t{std::string(rest),
                     nlohmann::ordered_json{{"bos_token", "<s>"}, {"eos_token", "</s>"}}};
      render(t);
    });
    return 0;
  }
  std::filesystem::create_directories(fuzz::scratch() / "chat");
  fuzz::write_input("chat/tokenizer_config.json", rest);
  fuzz::expect_ok_or_error([&] {
    auto t = ChatTemplate::load(fuzz::scratch() / "chat");
    if (t) render(*t);
  });
  return 0;
}
