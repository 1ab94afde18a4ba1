#!/usr/bin/env bash
# The install paths from built wheels, in a fresh virtual environment that holds the pinned CPU torch and
# the wheel's own dependencies only (torch, numpy: no package of the bench extra), each checked by
# scripts/install_smoke.py:
#   1. `pip wheel .` -- pip's isolated build, whose environment never holds torch -- run by the fresh
#      environment's pip: the kernels are built against that environment's torch; the wheel installed
#      there loads them as the install-time build and the losses take the fused path;
#   2. the same with CBBENCH_BUILD_KERNELS=0 (a wheel without kernels): the first import compiles them
#      into a fresh cache (the first-use build), with its progress message, and the fused path is taken.
# Usage: bash scripts/install_check.sh [PYTHON] [TORCH]   (`make install-check`; CI runs it)
set -euo pipefail
PYTHON=${1:-python3}
TORCH=${2:-torch==2.13.0}  # pinned: an unpinned torch is a multi-GB CUDA build
ROOT=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
began=$SECONDS
step() { echo "== install check ($((SECONDS - began)) s): $*"; }

step "a copy of the checkout's files (tracked and new, not ignored): no build folder of an earlier build"
mkdir "$work/src"
git -C "$ROOT" ls-files -z -co --exclude-standard | (cd "$ROOT" && tar --null -T - -cf -) | tar -C "$work/src" -xf -

step "fresh virtual environment with $TORCH"
"$PYTHON" -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip)
"${pip[@]}" install -q "$TORCH"

step "isolated wheel build (pip wheel .), kernels against the environment's torch"
"${pip[@]}" wheel -q --no-deps -w "$work/wheel" "$work/src"
"${pip[@]}" install -q "$work"/wheel/cbbench-*.whl
(cd "$work" && CBBENCH_CACHE_DIR="$work/cache" venv/bin/python "$ROOT/scripts/install_smoke.py" install)

step "wheel without kernels (CBBENCH_BUILD_KERNELS=0): the first import compiles them"
CBBENCH_BUILD_KERNELS=0 "${pip[@]}" wheel -q --no-deps -w "$work/source-wheel" "$work/src"
"${pip[@]}" install -q --force-reinstall --no-deps "$work"/source-wheel/cbbench-*.whl
(cd "$work" && CBBENCH_CACHE_DIR="$work/cache" venv/bin/python "$ROOT/scripts/install_smoke.py" first-use)
step "passed"
