// What makes a resumed training run the same run: its fingerprint, a JSON object of the resolved
// config keys that change the trained weights or the reported losses, and FNV-1a hashes
// (uniattn/io/file_io.h, as calibration fingerprints its inputs) of the model, the data and the
// other files they name. Checkpoints carry it (state.json); a resume compares the two.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "uniattn/config/train_config.h"

namespace uniattn::train_detail {

// {"config": {"stages[0].lr": "0.001", ...}, "files": {"data.train": {"path": ..., "fnv1a": ...}}}.
// Keys that only decide how the work is done (device, micro-batch size, activation checkpointing,
// the AdamW kernel, evaluation and checkpoint cadence, logging, distributed settings, output_dir)
// are left out; so are the file paths themselves, whose contents are hashed instead. Throws
// uniattn::Error when a named file cannot be read.
nlohmann::json run_fingerprint(const TrainConfig& c);

// Identity of a model (directory or single file): FNV-1a over each top-level file's name, size
// and bytes; files over 64 MiB (the weights) contribute their first and last MiB and 14 evenly
// spaced MiB in between, so another checkpoint of the same architecture differs while an 8B model
// is not read in full. Hex string.
std::string content_identity(const std::filesystem::path& path);

// Human-readable differences between the fingerprint of the checkpoint (`before`) and this run's
// (`now`), one per key: "stages[1].lr: 0.001 -> 0.002", "data.train (contents): a [hash] -> b
// [hash]". Empty when they agree.
std::vector<std::string> fingerprint_changes(const nlohmann::json& before,
                                             const nlohmann::json& now);

// Every key of a config's YAML (TrainConfig::to_yaml) flattened to "a.b[i].c" -> scalar text.
std::map<std::string, std::string> flatten_config_yaml(const std::string& yaml_text);

// Differences of all keys between two flattened configs, as fingerprint_changes words them.
std::vector<std::string> key_changes(const std::map<std::string, std::string>& before,
                                     const std::map<std::string, std::string>& now);

}  // namespace uniattn::train_detail
