#!/usr/bin/env bash
# Builds the C++/CUDA extension here, for a GPU machine's Python and torch, so `make gpu-check` there imports
# it instead of compiling (minutes of device time, and the machine may have no nvcc).
#   bash scripts/gpu_prebuild.sh PY
# PY: a python of the GPU machine's version with its torch (the lent machines: CPython 3.12, torch 2.11.0+cu130;
# e.g. `python3.12 -m venv /tmp/venv312 && /tmp/venv312/bin/pip install torch==2.11.0`).
# Writes hnerv_fast/_C.<tag>.so, hnerv_fast/_C_cuda.<tag>.so and the sources' stamp hnerv_fast/_C_prebuilt.sha
# (all git-ignored) and prints their paths: carry them with .whl/. A torch that does not match makes the import
# fail there, and gpu_check.sh then builds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:?usage: bash scripts/gpu_prebuild.sh PY, a python with the torch of the GPU machine}
CUDA_HOME=$(bash scripts/cuda_home.sh)
[ -n "$CUDA_HOME" ] || { echo "gpu_prebuild: no CUDA toolkit (nvcc) found" >&2; exit 1; }
"$PY" -c "import torch; assert torch.version.cuda, 'a CPU-only torch'; print('building for torch', torch.__version__)"
CUDA_HOME=$CUDA_HOME TORCH_CUDA_ARCH_LIST="8.0;9.0" MAX_JOBS=${MAX_JOBS:-2} FORCE_CUDA=1 \
  "$PY" setup.py -q build_ext --inplace
bash scripts/ext_sources_hash.sh > hnerv_fast/_C_prebuilt.sha  # gpu_check.sh rebuilds when csrc/ changed since
tag=$("$PY" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
ls hnerv_fast/_C"$tag" hnerv_fast/_C_cuda"$tag" hnerv_fast/_C_prebuilt.sha
