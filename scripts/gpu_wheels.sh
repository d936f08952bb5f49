#!/usr/bin/env bash
# Downloads into .whl/ the wheels `make gpu-check` needs on a GPU machine without network (CPython 3.12,
# manylinux x86_64): the packages our code imports that such an image may lack, at this venv's versions.
#   bash scripts/gpu_wheels.sh [PY]    (PY: a python with pip; default .venv/bin/python)
# scripts/gpu_check.sh installs every wheel in .whl/ into a private site folder before it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
PACKAGES=(open_clip_torch ftfy wcwidth omegaconf pytorch_msssim timm constriction)
pins=()
for p in "${PACKAGES[@]}"; do
  v=$("$PY" -m pip show "$p" 2>/dev/null | awk '/^Version:/{print $2}')
  [ -n "$v" ] || { echo "gpu_wheels: $p is not installed in $PY (make install first)" >&2; exit 1; }
  pins+=("$p==$v")
done
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${pins[@]}"
ls .whl
