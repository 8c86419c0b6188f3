#!/usr/bin/env bash
# The main job, end to end: set up, train MobileNetV2 on flowers, export (int8 too), bench.
# Data: $EDGECLF_DATA, else ../shared/data/flower_photos beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${EDGECLF_DATA:-../shared/data/flower_photos}
if [ ! -d "$DATA" ]; then
  echo "error: no data set at $DATA: put the flower_photos folder (train/ and val/ class folders) there, or set EDGECLF_DATA=/path/to/photos" >&2
  exit 2
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
edgeclf export "$RUN" --int8 || [ $? -eq 3 ]   # 3: exported, but an artifact lost more than --max-drop
echo "== bench"
edgeclf bench "$RUN/export" --data "$DATA" --out "$RUN/bench"
echo "== done: report in $RUN/bench/bench.md (models in $RUN/export)"
