#!/usr/bin/env bash
# An emulated 64-bit ARM board for `edgeclf bench --remote NAME` (QEMU user mode, a Debian arm64 root
# filesystem, the real aarch64 wheels of edgeclf[runtime]). Needs root, qemu-user-static and mmdebstrap.
#   scripts/arm-device.sh start --cpu cortex-a72 --name pi4    # Pi 4 class: NEON, no dot product
#   scripts/arm-device.sh start --cpu cortex-a76 --name pi5    # Pi 5 class: dot product
#   scripts/arm-device.sh list
#   scripts/arm-device.sh stop --name pi4                      # or: stop --all
# It proves the install and the ARM kernels' answers, not speed. See edgeclf/bench/armdevice.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
exec "$PY" -m edgeclf.bench.armdevice "$@"
