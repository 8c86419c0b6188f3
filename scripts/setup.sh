#!/usr/bin/env bash
# Creates .venv (if missing) and installs edgeclf with everything for training, export and tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import edgeclf, tensorflow, ai_edge_litert, onnxruntime, tf2onnx, pytest" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.edgeclf-installed ]; then
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet -e ".[dev]"
  touch .venv/.edgeclf-installed
fi
