#!/usr/bin/env bash
# Idempotent: creates .venv-tf446 with transformers 4.46 (scripts/requirements-tf446.txt), the
# second environment test_hf_remote_code runs the checkpoints' Python modeling files in. The test
# uses it when it exists (UNIATTN_TF446_PYTHON overrides the path); scripts/test.sh works without
# it. Re-running it installs only when the requirements changed; pip's cache makes a rebuild fast.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${UNIATTN_TF446_VENV:-.venv-tf446}
req=scripts/requirements-tf446.txt
py=${PYTHON:-python3}
start=$(date +%s)
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup-tf446] creating $venv"
  "$py" -m venv "$venv"
fi
stamp=$venv/.uniattn-reqs
if [ ! -f "$stamp" ] || ! cmp -s "$req" "$stamp"; then
  echo "[setup-tf446] pip install -r $req"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r "$req"
  cp "$req" "$stamp"
fi
echo "[setup-tf446] done in $(( $(date +%s) - start )) s: $("$venv/bin/python" -c \
  'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
