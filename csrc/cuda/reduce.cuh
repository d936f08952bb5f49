// Block-level helpers shared by the CUDA sources of _C_cuda (header-only, device code inlined).
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

namespace hnerv_fast {
namespace cuda_detail {

constexpr int kThreads = 256;

template <typename Acc>
__device__ __forceinline__ Acc warp_sum(Acc v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the whole block; the result is valid in thread 0. `smem` holds >= 32 values.
template <typename Acc>
__device__ __forceinline__ Acc block_sum(Acc v, Acc* smem) {
  const int tid = threadIdx.x + threadIdx.y * blockDim.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int nwarps = (blockDim.x * blockDim.y + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();  // smem may still be read by a previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  v = (tid < nwarps) ? smem[tid] : Acc(0);
  if (warp == 0) v = warp_sum(v);
  return v;
}

inline int64_t grid_cap(int64_t n, int64_t cap) { return std::max<int64_t>(1, std::min(n, cap)); }

inline bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

inline void check_cuda(const at::Tensor& t, const char* op) {
  TORCH_CHECK_VALUE(t.is_cuda(), op, " (CUDA): expected a CUDA tensor, got ", t.device());
}

}  // namespace cuda_detail
}  // namespace hnerv_fast
