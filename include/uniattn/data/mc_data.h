// Multiple-choice benchmark data without LibTorch: the uniform JSONL that
// scripts/prepare_eval_data.py writes, one question per line:
//   {"id": "...", "question": "Question: ...\nAnswer:", "choices": ["...", ...], "answer": 0}
// `question` is the whole context the model is conditioned on; each choice is scored as the
// continuation " " + choice (cloze formulation of lm-evaluation-harness / OLMES).
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace uniattn {

struct McQuestion {
  std::string id;
  std::string question;              // full context text, non-empty
  std::vector<std::string> choices;  // >= 2 non-empty strings
  int64_t answer = 0;                // index into choices
};

// Bounds applied while loading (a question or choice longer than this is rejected, not cut).
inline constexpr std::size_t kMaxMcChoices = 64;
inline constexpr std::size_t kMaxMcTextBytes = 1u << 20;

// Reads a JSONL file of questions (blank lines skipped). `id` may be a string or an integer
// (kept as its decimal text); `answer` must be an integer. `limit` > 0 keeps only the first
// `limit` questions (the rest of the file is not parsed). Throws uniattn::Error naming the file
// and line for: a missing/unreadable file, a file without questions, invalid JSON, a line that is
// not an object, a missing or mistyped field, an empty question, fewer than 2 or more than
// kMaxMcChoices choices, an empty choice, text over kMaxMcTextBytes, invalid UTF-8, or an answer
// outside [0, choices).
std::vector<McQuestion> load_mc_jsonl(const std::filesystem::path& path, int64_t limit = 0);

// One benchmark file to evaluate: `task` is the name results are reported under.
struct McTaskFile {
  std::string task;
  std::filesystem::path file;
  std::string group;  // aggregate it belongs to ("mmlu_medical"), or empty
};

// Maps task names to files in `data_dir` (<name>_<split>.jsonl). Known names and their default
// split: arc_easy, arc_challenge (test), mmlu_<subject> for the six medical subjects (test),
// mmlu_medical (all six), medmcqa (validation), medqa (test), and the *_5shot variants of
// arc_easy, arc_challenge, medmcqa, medqa. "name:split" picks another split
// (e.g. arc_easy:validation). Any other name is taken as a file stem if data_dir/<name>.jsonl
// exists. Throws uniattn::Error for an unknown task (listing the known ones) or a missing file
// (naming it and pointing at scripts/prepare_eval_data.py).
std::vector<McTaskFile> resolve_mc_tasks(const std::vector<std::string>& names,
                                         const std::filesystem::path& data_dir);

// The six MMLU subjects of the medical group, in report order.
const std::vector<std::string>& mmlu_medical_subjects();

}  // namespace uniattn
