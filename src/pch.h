// Precompiled header for the LibTorch part of the library: the heavy headers every model file uses.
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/embedding.h>
#include <nlohmann/json.hpp>
