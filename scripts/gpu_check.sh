#!/usr/bin/env bash
# `make gpu-check`: every GPU path of hnerv_fast on one CUDA device, in under 8 minutes on an H100/H200.
#
#   bash scripts/gpu_check.sh [OUT_DIR]
#   env: PY      python with CUDA torch (default: .venv/bin/python, else python3)
#        WHEELS  folder of wheels to install first into a private site dir (machines without network;
#                e.g. open_clip_torch, omegaconf, pytorch_msssim), default .whl when it exists, empty: none
#        BUDGET  seconds for everything after set-up (default 460)
#        PARTS   which parts to run, default "tests ops dual profile cascade"
#
# Parts (logs and a summary.txt in OUT_DIR):
#   build    the C++/CUDA extension is built in place for this GPU when it does not import
#   tests    every test marked `gpu` (both backends, CUDA graphs, no host sync, mixed precision), xdist-parallel
#   ops      cuda vs triton vs reference vs pytorch-msssim, % of copy bandwidth (benchmarks/gpu_ops_bandwidth.py)
#   dual     one training step of the dual default config: seed-style eager loop, eager, compiled, CUDA graphs
#   profile  where that step's time goes, host or device, per compile mode (benchmarks/gpu_step_profile.py)
#   cascade  one cascade stage_128 step (default size): eager, compiled, CUDA graphs
# Exit status: 0 when every part passed, 1 otherwise, 2 when there is no CUDA device.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-$(mktemp -d -t gpu_check_XXXX)}
mkdir -p "$OUT"
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
BUDGET=${BUDGET:-460}
PARTS=${PARTS:-tests ops dual profile cascade}
WHEELS=${WHEELS-$([ -d .whl ] && echo .whl)}  # set and empty: none
unset TRITON_INTERPRET HNERV_FAST_OPS_BACKEND
# kernels/ imported as hnerv_triton: an install maps that name; without one (NO_INSTALL=1) this link does
LINKS=$(mktemp -d) && ln -s "$PWD/kernels" "$LINKS/hnerv_triton"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}:$LINKS"
T0=$(date +%s)
say() { echo "[gpu-check $(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/summary.txt"; }

# ------------------------------------------------------------------------------------ set-up
if [ -n "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/hnerv_site \
    "$WHEELS"/*.whl > "$OUT/wheels.log" 2>&1 || { say "FAIL: installing wheels from $WHEELS (see wheels.log)"; exit 1; }
  export PYTHONPATH="$PYTHONPATH:/tmp/hnerv_site"  # ahead of site-packages: a carried wheel replaces the machine's
fi
# torch first: it loads the libc10 / libtorch the extension links against (alone, the import always fails)
if [ -f hnerv_fast/_C_prebuilt.sha ] && [ "$(cat hnerv_fast/_C_prebuilt.sha)" != "$(bash scripts/ext_sources_hash.sh)" ]; then
  say "extension: prebuilt from other sources (csrc/ or setup.py changed since scripts/gpu_prebuild.sh)"
elif "$PY" -c "import torch, hnerv_fast._C, hnerv_fast._C_cuda" > "$OUT/build.log" 2>&1; then
  say "extension: imports (built beforehand, e.g. by scripts/gpu_prebuild.sh)"; EXT_IMPORTS=1
else
  say "extension: does not import ($(tail -n 1 "$OUT/build.log"))"
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  say "no CUDA device visible to $PY: gpu-check needs a GPU (CPU checks: make test)"; exit 2
fi
if [ -z "${EXT_IMPORTS:-}" ]; then
  arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  say "building the extension in place for sm_${arch/./}"
  CUDA_HOME=$(bash scripts/cuda_home.sh) TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS=$(nproc) FORCE_CUDA=1 \
    "$PY" setup.py build_ext --inplace >> "$OUT/build.log" 2>&1 && rm -f hnerv_fast/_C_prebuilt.sha ||
    { say "FAIL: extension build (build.log); the other parts still run (triton, reference)"; BUILD_FAILED=1; }
fi
"$PY" - > "$OUT/env.log" 2>&1 <<'EOF'
import torch, triton
from hnerv_fast import ops
from hnerv_fast.ops import _backends as B
p = torch.cuda.get_device_properties(0)
print(f"device: {p.name}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB; torch {torch.__version__} "
      f"(CUDA {torch.version.cuda}), triton {triton.__version__}")
print(f"backends on cuda: {ops.available_backends('cuda')}; auto -> {B.resolve(torch.device('cuda'))}; "
      f"load errors: cuda={B.load_error('cuda')} triton={B.load_error('triton')}")
EOF
cat "$OUT/env.log" | tee -a "$OUT/summary.txt"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader >> "$OUT/summary.txt" 2>&1
say "set-up done"

# ------------------------------------------------------------------------------------ parts
T1=$(date +%s)
status=${BUILD_FAILED:-0}
left() { echo $(( BUDGET - ($(date +%s) - T1) )); }
# Each part's share of the default 460 s budget (H200, first run: tests 114 s, ops 12 s, dual 50 s, cascade
# about 180 s, most of it compiling). A part may use what is left less the shares of the parts after it, so
# time one leaves over goes to the next, but a slow part cannot starve the others (a part cut short still
# logs what it finished: tests and timings are printed as they end).
declare -A SHARE=([tests]=125 [ops]=25 [dual]=80 [profile]=50 [cascade]=180)
reserved=0; for p in $PARTS; do reserved=$(( reserved + ${SHARE[$p]:-0} )); done
part() {  # part NAME command...
  local name=$1; shift
  reserved=$(( reserved - ${SHARE[$name]} ))
  local t=$(( $(left) - reserved * BUDGET / 460 ))
  if [ "$t" -lt 20 ]; then say "SKIP $name: out of time budget"; status=1; return; fi
  timeout -k 10 "$t" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  [ "$rc" -eq 0 ] || status=1
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && rc="$rc (timeout after ${t}s)"
  say "$name rc=$rc: $(grep -E '(passed|failed|error)' "$OUT/$name.log" | tail -n 1)"
}
has() { [[ " $PARTS " == *" $1 "* ]]; }
BENCH=(-m pytest -p no:cacheprovider --benchmark-only -s --benchmark-columns=min,median,max)

if has tests; then
  NPROC=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 8")
  # 8 workers x inductor's default compile pool (one process per core) would oversubscribe the cores
  # -v: one line per test as it ends, so a part cut short by its share still shows each result
  part tests env TORCHINDUCTOR_COMPILE_THREADS=2 "$PY" -m pytest -p no:cacheprovider -v -ra --tb=short $NPROC \
    -m gpu tests
  grep -E "^(FAILED|ERROR) " "$OUT/tests.log" | cut -c1-240 | head -n 25 | tee -a "$OUT/summary.txt"
  if ! grep -qE "^=+ .*(passed|failed|error)" "$OUT/tests.log"; then  # cut short: no summary, count what ended
    say "tests cut short: $(grep -cE " PASSED " "$OUT/tests.log") passed, $(grep -cE " (FAILED|ERROR) " "$OUT/tests.log") failed so far"
  fi
fi
if has ops; then
  part ops "$PY" -m benchmarks.gpu_ops_bandwidth
  grep -h "^OPS|" "$OUT/ops.log" >> "$OUT/summary.txt"
fi
if has dual; then
  part dual env BENCH_CONFIG=configs/dual_hnerv_default.yaml "$PY" "${BENCH[@]}" benchmarks/test_train_step.py \
    -k "seed_style or hnerv_fast_step"
  grep -E "^\[" "$OUT/dual.log" | awk '!seen[$0]++' >> "$OUT/summary.txt"  # each time printed when taken, then in the final report
fi
if has profile; then
  part profile "$PY" -m benchmarks.gpu_step_profile
  grep -h "^PROF|" "$OUT/profile.log" >> "$OUT/summary.txt"
fi
if has cascade; then
  part cascade "$PY" "${BENCH[@]}" benchmarks/test_cascade_step.py
  grep -E "^\[" "$OUT/cascade.log" | awk '!seen[$0]++' >> "$OUT/summary.txt"
fi
say "done, status $status; logs in $OUT"
exit $status
