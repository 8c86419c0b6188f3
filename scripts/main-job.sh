#!/usr/bin/env bash
# The main job, end to end: set up, train MobileNetV2 on flowers, export (int8 too), bench.
# Data: $EDGECLF_DATA, else ../shared/data/flower_photos beside the checkout, else TensorFlow's
# flower_photos archive, downloaded once (checksummed) into $EDGECLF_CACHE (default ~/.cache/edgeclf).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${EDGECLF_DATA:-}" ]; then
  DATA=$EDGECLF_DATA
  if [ ! -d "$DATA" ]; then
    echo "error: EDGECLF_DATA=$DATA is not a folder: point it at a folder of class folders" >&2
    exit 2
  fi
elif [ -d ../shared/data/flower_photos ]; then
  DATA=../shared/data/flower_photos
else
  # the standard library is enough: this runs before anything is installed
  DATA=$(PYTHONPATH=. "${PYTHON:-python3}" -m edgeclf.datasets flower_photos) || exit 2
fi
bash scripts/setup.sh
. .venv/bin/activate
export TF_CPP_MIN_LOG_LEVEL=2
[ -d ../shared/weights ] && export EDGECLF_WEIGHTS_DIR=${EDGECLF_WEIGHTS_DIR:-$(cd ../shared/weights && pwd)}
NAME=${EDGECLF_NAME:-flowers}
RUN=runs/train/$NAME
if [ -f "$RUN/state.json" ] && grep -q '"done": true' "$RUN/state.json"; then
  echo "== $RUN is already trained; reusing it (delete it to train again)"
elif [ -f "$RUN/args.yaml" ]; then
  echo "== resuming $RUN"
  edgeclf train --resume "$RUN"
else
  echo "== train"
  edgeclf train "$DATA" --model mobilenet_v2 --name "$NAME"
fi
echo "== export"
edgeclf export "$RUN" --int8
echo "== bench"
edgeclf bench "$RUN/export" --data "$DATA" --out "$RUN/bench"
echo "== done: the page is $RUN/report.html (bench in $RUN/bench/bench.md, models in $RUN/export)"
