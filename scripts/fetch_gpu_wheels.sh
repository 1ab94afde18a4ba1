#!/usr/bin/env bash
# Download the wheels the GPU check needs but a GPU machine without network does not have, into
# gpu-wheels/ (git-ignored): Liger-Kernel, the weighted-CE peer of the GPU benchmark (pure Python; it
# needs torch and triton, which the GPU image has). Carry gpu-wheels/ to the GPU machine;
# scripts/gpu_check.sh installs whatever it finds there (--no-deps --no-index) before benchmarking.
#
#   bash scripts/fetch_gpu_wheels.sh            # then: bash scripts/gpu_check.sh on the GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
# 0.8.5: the version of the peer table in docs/design.md, "Performance model"
LIGER_SPEC="${LIGER_SPEC:-liger-kernel==0.8.5}"
mkdir -p gpu-wheels
"$PY" -m pip download --no-deps --only-binary=:all: -d gpu-wheels "$LIGER_SPEC"
ls -l gpu-wheels
