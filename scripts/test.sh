#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the test suite on the real data in ../shared.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export TF_CPP_MIN_LOG_LEVEL=2
[ -d ../shared/weights ] && export EDGECLF_WEIGHTS_DIR=${EDGECLF_WEIGHTS_DIR:-$(cd ../shared/weights && pwd)}
exec python -m pytest -q "$@"
