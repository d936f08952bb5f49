// CUDA grouped gradient norms (schema and semantics: csrc/registration.cpp).
//
// Multi-tensor: one launch over a device table of (address, length, dtype) chunks sorted by group,
// per-chunk partial sums, then one block reduces per group.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "ops_cuda.h"
#include "reduce.cuh"

namespace hnerv_fast {
namespace {
using namespace cuda_detail;

enum DTypeCode : int64_t { kF32 = 0, kF16 = 1, kBF16 = 2, kF64 = 3 };

template <typename T>
__device__ __forceinline__ float chunk_sumsq(const T* __restrict__ p, int64_t n) {
  float acc = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = static_cast<float>(p[i]);
    acc += v * v;
  }
  return acc;
}

// table: [addr x nchunks][len x nchunks][dtype x nchunks]
__global__ void __launch_bounds__(kThreads) grouped_sumsq_kernel(const int64_t* __restrict__ table, int64_t nchunks,
                                                                 float* __restrict__ partial) {
  __shared__ float red[32];
  for (int64_t c = blockIdx.x; c < nchunks; c += gridDim.x) {
    const int64_t addr = table[c], n = table[nchunks + c], dt = table[2 * nchunks + c];
    float acc;
    switch (dt) {
      case kF16: acc = chunk_sumsq(reinterpret_cast<const at::Half*>(addr), n); break;
      case kBF16: acc = chunk_sumsq(reinterpret_cast<const at::BFloat16*>(addr), n); break;
      case kF64: acc = chunk_sumsq(reinterpret_cast<const double*>(addr), n); break;
      default: acc = chunk_sumsq(reinterpret_cast<const float*>(addr), n); break;
    }
    acc = block_sum(acc, red);
    if (threadIdx.x == 0) partial[c] = acc;
  }
}

// group_start: [G + 1] chunk offsets (chunks sorted by group). out: [1 + G].
__global__ void __launch_bounds__(kThreads) grouped_finalize_kernel(const float* __restrict__ partial,
                                                                    const int64_t* __restrict__ group_start,
                                                                    int64_t G, float* __restrict__ out) {
  __shared__ double red[32];
  double total = 0.0;
  for (int64_t g = 0; g < G; ++g) {
    double s = 0.0;
    for (int64_t c = group_start[g] + threadIdx.x; c < group_start[g + 1]; c += blockDim.x) s += partial[c];
    s = block_sum(s, red);
    if (threadIdx.x == 0) {
      out[1 + g] = static_cast<float>(sqrt(s));
      total += s;
    }
  }
  if (threadIdx.x == 0) out[0] = static_cast<float>(sqrt(total));
}

}  // namespace

at::Tensor grouped_norms_cuda(at::TensorList tensors, at::IntArrayRef groups, int64_t num_groups) {
  TORCH_CHECK_VALUE(num_groups >= 0, "grouped_norms: num_groups must be >= 0");
  TORCH_CHECK_VALUE(tensors.size() == groups.size(), "grouped_norms: ", tensors.size(), " tensors but ",
                    groups.size(), " group ids");
  TORCH_CHECK_VALUE(!tensors.empty(), "grouped_norms: no tensors");
  const at::Device dev = tensors[0].device();
  const c10::cuda::CUDAGuard guard(dev);
  constexpr int64_t kChunk = 1 << 16;
  const int64_t T = static_cast<int64_t>(tensors.size());
  std::vector<at::Tensor> keep;
  keep.reserve(T);
  std::vector<int64_t> order(T);
  std::iota(order.begin(), order.end(), 0);
  for (int64_t i = 0; i < T; ++i) {
    TORCH_CHECK_VALUE(groups[i] >= 0 && groups[i] < num_groups, "grouped_norms: group id ", groups[i],
                      " out of range [0, ", num_groups, ")");
    TORCH_CHECK_VALUE(tensors[i].device() == dev, "grouped_norms (CUDA): tensor ", i, " is on ",
                      tensors[i].device(), ", expected ", dev);
    const auto st = tensors[i].scalar_type();
    TORCH_CHECK_VALUE(st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kDouble,
                      "grouped_norms: unsupported dtype ", st);
    keep.push_back(tensors[i].contiguous());
  }
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return groups[a] < groups[b]; });
  std::vector<int64_t> addr, len, dtc, gstart(num_groups + 1, 0);
  for (int64_t oi : order) {
    const at::Tensor& t = keep[oi];
    const int64_t n = t.numel();
    const auto st = t.scalar_type();
    const int64_t code = st == at::kHalf ? kF16 : st == at::kBFloat16 ? kBF16 : st == at::kDouble ? kF64 : kF32;
    const int64_t esz = static_cast<int64_t>(t.element_size());
    for (int64_t s = 0; s < n; s += kChunk) {
      addr.push_back(reinterpret_cast<int64_t>(t.data_ptr()) + s * esz);
      len.push_back(std::min(kChunk, n - s));
      dtc.push_back(code);
      gstart[groups[oi] + 1] += 1;
    }
  }
  for (int64_t g = 0; g < num_groups; ++g) gstart[g + 1] += gstart[g];
  const int64_t nchunks = static_cast<int64_t>(addr.size());
  at::Tensor host = at::empty({3 * nchunks + num_groups + 1},
                              at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  int64_t* hp = host.data_ptr<int64_t>();
  std::copy(addr.begin(), addr.end(), hp);
  std::copy(len.begin(), len.end(), hp + nchunks);
  std::copy(dtc.begin(), dtc.end(), hp + 2 * nchunks);
  std::copy(gstart.begin(), gstart.end(), hp + 3 * nchunks);
  at::Tensor table = host.to(at::TensorOptions().device(dev).dtype(at::kLong), /*non_blocking=*/true);
  at::Tensor out = at::empty({1 + num_groups}, at::TensorOptions().dtype(at::kFloat).device(dev));
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (nchunks > 0) {
    at::Tensor partial = at::empty({nchunks}, out.options());
    grouped_sumsq_kernel<<<grid_cap(nchunks, 65535), kThreads, 0, stream>>>(table.data_ptr<int64_t>(), nchunks,
                                                                          partial.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    grouped_finalize_kernel<<<1, kThreads, 0, stream>>>(partial.data_ptr<float>(),
                                                         table.data_ptr<int64_t>() + 3 * nchunks, num_groups,
                                                         out.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    out.zero_();
  }
  return out;
}

}  // namespace hnerv_fast
