#include "uniattn/config/superblock.h"

#include <algorithm>
#include <set>
#include <sstream>

#include "uniattn/error.h"

namespace uniattn {

const char* variant_name(Variant v) {
  switch (v) {
    case Variant::None: return "none";
    case Variant::Softmax: return "softmax";
    case Variant::UniAttn: return "uniattn";
    case Variant::Cla: return "cla";
  }
  return "?";
}

Variant parse_variant(const std::string& name) {
  for (Variant v : {Variant::None, Variant::Softmax, Variant::UniAttn, Variant::Cla})
    if (name == variant_name(v)) return v;
  fail("unknown UniAttn variant '", name, "' (expected none, softmax, uniattn or cla)");
}

namespace {
// The layer count bounds every layer index read from a spec, so it is bounded itself first
// (ModelConfig allows at most kMaxSpecLayers layers too).
constexpr int64_t kMaxSpecLayers = 1024;
void check_num_layers(int64_t num_layers) {
  UNIATTN_CHECK(num_layers > 0 && num_layers <= kMaxSpecLayers,
                "invalid SuperBlocks: the model's layer count ", num_layers, " is outside [1, ",
                kMaxSpecLayers, "]");
}
}  // namespace

UniAttnSpec UniAttnSpec::from_range(Variant v, int64_t size, int64_t begin, int64_t end,
                                    int64_t num_layers) {
  check_num_layers(num_layers);
  UNIATTN_CHECK(size >= 2, "invalid SuperBlocks: size ", size, " < 2 (a SuperBlock needs a leader",
                " and at least one follower)");
  UNIATTN_CHECK(begin >= 0, "invalid SuperBlocks: begin ", begin, " < 0");
  UNIATTN_CHECK(begin < num_layers, "invalid SuperBlocks: begin ", begin,
                " >= number of layers ", num_layers);
  UNIATTN_CHECK(end > begin, "invalid SuperBlocks: end ", end, " <= begin ", begin);
  UniAttnSpec s;
  s.variant = v;
  // Every value below is in [0, num_layers], so no sum can overflow: `size` only enters as
  // min(size, stop - lead).
  const int64_t stop = std::min(end, num_layers);
  for (int64_t lead = begin; lead < stop;) {
    const int64_t len = std::min(size, stop - lead);
    std::vector<int64_t> g;
    for (int64_t i = lead; i < lead + len; ++i) g.push_back(i);
    if (g.size() >= 2) s.groups.push_back(std::move(g));  // a lone trailing leader shares nothing
    lead += len;
  }
  s.validate(num_layers);
  return s;
}

namespace {
int64_t parse_int(const std::string& t, const std::string& whole) {
  size_t pos = 0;
  long long v = 0;
  try {
    v = std::stoll(t, &pos);
  } catch (...) {
    pos = std::string::npos;
  }
  UNIATTN_CHECK(pos == t.size() && !t.empty(), "invalid SuperBlocks '", whole, "': '", t,
                "' is not an integer");
  return v;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep)) {
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    out.push_back(item);
  }
  return out;
}
}  // namespace

UniAttnSpec UniAttnSpec::parse(Variant v, const std::string& text, int64_t num_layers) {
  UNIATTN_CHECK(!text.empty(), "invalid SuperBlocks: empty spec");
  check_num_layers(num_layers);
  const bool explicit_groups = text.find(';') != std::string::npos ||
                               text.find('-') != std::string::npos;
  if (!explicit_groups) {
    auto parts = split(text, ',');
    UNIATTN_CHECK(parts.size() == 3, "invalid SuperBlocks '", text,
                  "': expected SIZE,BEGIN,END (e.g. 4,16,32) or groups like 16-19;20-23");
    return from_range(v, parse_int(parts[0], text), parse_int(parts[1], text),
                      parse_int(parts[2], text), num_layers);
  }
  UniAttnSpec s;
  s.variant = v;
  for (const auto& group_text : split(text, ';')) {
    if (group_text.empty()) continue;
    std::vector<int64_t> g;
    for (const auto& item : split(group_text, ',')) {
      auto dash = item.find('-', 1);
      if (dash == std::string::npos) {
        g.push_back(parse_int(item, text));
      } else {
        const int64_t a = parse_int(item.substr(0, dash), text);
        const int64_t b = parse_int(item.substr(dash + 1), text);
        // Bounded by the layer count before `b - a` or the loop below can overflow or allocate.
        UNIATTN_CHECK(a >= 0 && b < num_layers, "invalid SuperBlocks '", text, "': range '", item,
                      "' is outside the model's ", num_layers, " layers");
        UNIATTN_CHECK(a <= b, "invalid SuperBlocks '", text, "': bad range '", item, "'");
        for (int64_t i = a; i <= b; ++i) g.push_back(i);
      }
    }
    s.groups.push_back(std::move(g));
  }
  s.validate(num_layers);
  return s;
}

void UniAttnSpec::validate(int64_t num_layers) const {
  if (variant == Variant::None) {
    UNIATTN_CHECK(groups.empty(), "invalid SuperBlocks: variant 'none' takes no groups");
    return;
  }
  check_num_layers(num_layers);
  UNIATTN_CHECK(!groups.empty(), "invalid SuperBlocks: variant '", variant_name(variant),
                "' needs at least one group");
  std::set<int64_t> seen;
  for (const auto& g : groups) {
    UNIATTN_CHECK(g.size() >= 2, "invalid SuperBlocks: group starting at layer ",
                  g.empty() ? -1 : g[0], " has fewer than 2 layers");
    for (size_t i = 0; i < g.size(); ++i) {
      UNIATTN_CHECK(g[i] >= 0 && g[i] < num_layers, "invalid SuperBlocks: layer ", g[i],
                    " is outside the model's ", num_layers, " layers");
      UNIATTN_CHECK(i == 0 || g[i] > g[i - 1], "invalid SuperBlocks: group starting at layer ",
                    g[0], " is not in increasing order (the leader must come first)");
      UNIATTN_CHECK(seen.insert(g[i]).second, "invalid SuperBlocks: layer ", g[i],
                    " is in more than one group");
    }
  }
}

int64_t UniAttnSpec::leader_of(int64_t layer) const {
  if (variant == Variant::None) return layer;
  for (const auto& g : groups)
    if (std::find(g.begin(), g.end(), layer) != g.end()) return g[0];
  return layer;
}

int64_t UniAttnSpec::num_followers() const {
  if (!enabled()) return 0;
  int64_t n = 0;
  for (const auto& g : groups) n += static_cast<int64_t>(g.size()) - 1;
  return n;
}

std::string UniAttnSpec::describe() const {
  std::ostringstream os;
  os << variant_name(variant) << ":";
  for (const auto& g : groups) {
    os << " [";
    for (size_t i = 0; i < g.size(); ++i) os << (i ? " " : "") << g[i];
    os << "]";
  }
  return os.str();
}

}  // namespace uniattn
