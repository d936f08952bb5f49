#!/usr/bin/env bash
# Prints the CUDA toolkit folder (the one holding bin/nvcc and lib64), or nothing when there is none.
# torch guesses the folder above the `nvcc` on PATH, which here is a wrapper script in /usr/local/bin
# with no lib64 beside it, so linking fails on -lcudart; find the real toolkit instead.
set -u
candidates=()
[ -n "${CUDA_HOME:-}" ] && candidates+=("$CUDA_HOME")
if command -v nvcc >/dev/null 2>&1; then
  candidates+=("$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")")
  # a wrapper script that execs the real nvcc: follow the path it names
  real=$(grep -o '/[^ "]*/bin/nvcc' "$(command -v nvcc)" 2>/dev/null | head -n 1)
  [ -n "$real" ] && candidates+=("$(dirname "$(dirname "$real")")")
fi
candidates+=(/usr/local/cuda)
for c in "${candidates[@]}"; do
  if [ -x "$c/bin/nvcc" ] && [ -d "$c/lib64" ]; then echo "$c"; exit 0; fi
done
exit 0
