// CUDA grouped gradient norms (schema and semantics: csrc/registration.cpp).
//
// Multi-tensor: one launch over a device table of (address, length, dtype) chunks sorted by group,
// per-chunk partial sums, then one block reduces per group (fixed order: deterministic).
//
// The table depends only on where the tensors live, and gradients keep their storage across
// steps, so it is cached on the device per exact signature (TableCache): a repeated call makes no
// host-to-device copy and no pinned allocation, and can be captured in a CUDA graph. A miss while
// capturing records the copy from a pinned buffer the entry keeps alive; entries a graph reads
// are never evicted.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <list>
#include <mutex>
#include <numeric>
#include <vector>

#include "ops_cuda.h"
#include "reduce.cuh"

namespace hnerv_fast {
namespace {
using namespace cuda_detail;

enum DTypeCode : int64_t { kF32 = 0, kF16 = 1, kBF16 = 2, kF64 = 3 };

// 16K elements per chunk: ~1000 blocks for 12M elements, enough to fill every SM (64K left a
// 1.4-wave tail on 132 SMs); a block's threads each read 64 elements.
constexpr int64_t kChunk = 1 << 14;
constexpr size_t kMaxEntries = 4;  // uncaptured tables kept (LRU)

template <typename T>
__device__ __forceinline__ float chunk_sumsq(const T* __restrict__ p, int n) {
  // Four independent coalesced loads in flight per thread.
  const int step = blockDim.x;
  float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
  int i = threadIdx.x;
  for (; i + 3 * step < n; i += 4 * step) {
    const float v0 = static_cast<float>(p[i]), v1 = static_cast<float>(p[i + step]);
    const float v2 = static_cast<float>(p[i + 2 * step]), v3 = static_cast<float>(p[i + 3 * step]);
    a0 += v0 * v0;
    a1 += v1 * v1;
    a2 += v2 * v2;
    a3 += v3 * v3;
  }
  for (; i < n; i += step) {
    const float v = static_cast<float>(p[i]);
    a0 += v * v;
  }
  return (a0 + a1) + (a2 + a3);
}

// table: [addr x nchunks][len x nchunks][dtype x nchunks]
__global__ void __launch_bounds__(kThreads) grouped_sumsq_kernel(const int64_t* __restrict__ table, int64_t nchunks,
                                                                 float* __restrict__ partial) {
  __shared__ float red[32];
  for (int64_t c = blockIdx.x; c < nchunks; c += gridDim.x) {
    const int64_t addr = table[c], dt = table[2 * nchunks + c];
    const int n = static_cast<int>(table[nchunks + c]);
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

// The device table of one call signature. `host` (pinned) is the copy's source and lives with the
// entry: a graph captured on a miss replays that copy. `ready`: the device copy has run outside
// any graph (a miss while capturing runs nothing). `captured`: a graph reads `dev`; never evicted.
struct TableEntry {
  std::vector<int64_t> key;
  at::Tensor host, dev;
  int64_t nchunks = 0;
  bool ready = false, captured = false;

  void use(bool capturing) {
    if (!ready) dev.copy_(host, /*non_blocking=*/true);  // while capturing: recorded, runs on each replay
    ready = ready || !capturing;
    captured = captured || capturing;
  }
};

class TableCache {
 public:
  // The entry for `key`, built from `tensors` (contiguous) on a miss. The returned handles keep
  // the table alive for this call even if a later call evicts the entry.
  std::pair<at::Tensor, int64_t> get(std::vector<int64_t>&& key, const std::vector<at::Tensor>& tensors,
                                     at::IntArrayRef groups, int64_t num_groups) {
    const bool capturing =
        c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = lru_.begin(); it != lru_.end(); ++it) {
      if (it->key == key) {
        ++hits_;
        lru_.splice(lru_.begin(), lru_, it);
        lru_.front().use(capturing);
        return {lru_.front().dev, lru_.front().nchunks};
      }
    }
    ++misses_;
    lru_.push_front(build(std::move(key), tensors, groups, num_groups));
    lru_.front().use(capturing);
    std::pair<at::Tensor, int64_t> got{lru_.front().dev, lru_.front().nchunks};
    evict();
    return got;
  }

  std::vector<int64_t> info() {
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t captured = std::count_if(lru_.begin(), lru_.end(), [](const TableEntry& e) { return e.captured; });
    return {hits_, misses_, static_cast<int64_t>(lru_.size()), captured};
  }

 private:
  static TableEntry build(std::vector<int64_t>&& key, const std::vector<at::Tensor>& tensors, at::IntArrayRef groups,
                          int64_t num_groups) {
    const int64_t T = static_cast<int64_t>(tensors.size());
    std::vector<int64_t> order(T);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return groups[a] < groups[b]; });
    std::vector<int64_t> addr, len, dtc, gstart(num_groups + 1, 0);
    for (int64_t oi : order) {
      const at::Tensor& t = tensors[oi];
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
    TableEntry e;
    e.key = std::move(key);
    e.nchunks = static_cast<int64_t>(addr.size());
    e.host = at::empty({3 * e.nchunks + num_groups + 1}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
    int64_t* hp = e.host.data_ptr<int64_t>();
    hp = std::copy(addr.begin(), addr.end(), hp);
    hp = std::copy(len.begin(), len.end(), hp);
    hp = std::copy(dtc.begin(), dtc.end(), hp);
    std::copy(gstart.begin(), gstart.end(), hp);
    e.dev = at::empty(e.host.sizes(), at::TensorOptions().dtype(at::kLong).device(tensors[0].device()));
    return e;
  }

  void evict() {
    size_t loose = std::count_if(lru_.begin(), lru_.end(), [](const TableEntry& e) { return !e.captured; });
    for (auto it = lru_.end(); loose > kMaxEntries && it != lru_.begin();) {
      --it;
      if (!it->captured) {
        it = lru_.erase(it);
        --loose;
      }
    }
  }

  std::mutex mu_;
  std::list<TableEntry> lru_;  // most recently used first
  int64_t hits_ = 0, misses_ = 0;
};

TableCache& table_cache() {
  static TableCache* cache = new TableCache();  // never destroyed: static teardown may run after CUDA's
  return *cache;
}

}  // namespace

at::Tensor grouped_norms_cuda(at::TensorList tensors, at::IntArrayRef groups, int64_t num_groups) {
  TORCH_CHECK_VALUE(num_groups >= 0, "grouped_norms: num_groups must be >= 0");
  TORCH_CHECK_VALUE(tensors.size() == groups.size(), "grouped_norms: ", tensors.size(), " tensors but ",
                    groups.size(), " group ids");
  TORCH_CHECK_VALUE(!tensors.empty(), "grouped_norms: no tensors");
  const at::Device dev = tensors[0].device();
  const c10::cuda::CUDAGuard guard(dev);
  const int64_t T = static_cast<int64_t>(tensors.size());
  std::vector<at::Tensor> keep;
  keep.reserve(T);
  std::vector<int64_t> key{dev.index(), num_groups};
  key.reserve(2 + 4 * T);
  for (int64_t i = 0; i < T; ++i) {
    TORCH_CHECK_VALUE(groups[i] >= 0 && groups[i] < num_groups, "grouped_norms: group id ", groups[i],
                      " out of range [0, ", num_groups, ")");
    TORCH_CHECK_VALUE(tensors[i].device() == dev, "grouped_norms (CUDA): tensor ", i, " is on ",
                      tensors[i].device(), ", expected ", dev);
    const auto st = tensors[i].scalar_type();
    TORCH_CHECK_VALUE(st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kDouble,
                      "grouped_norms: unsupported dtype ", st);
    keep.push_back(tensors[i].contiguous());
    key.insert(key.end(), {reinterpret_cast<int64_t>(keep.back().data_ptr()), keep.back().numel(),
                           static_cast<int64_t>(st), groups[i]});
  }
  const auto [table, nchunks] = table_cache().get(std::move(key), keep, groups, num_groups);
  at::Tensor out = at::empty({1 + num_groups}, at::TensorOptions().dtype(at::kFloat).device(dev));
  auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor partial = at::empty({std::max<int64_t>(nchunks, 1)}, out.options());
  if (nchunks > 0) {
    grouped_sumsq_kernel<<<grid_cap(nchunks, 65535), kThreads, 0, stream>>>(table.data_ptr<int64_t>(), nchunks,
                                                                          partial.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  // With no chunks every group is empty: the finalize kernel reads no partials and writes zeros.
  grouped_finalize_kernel<<<1, kThreads, 0, stream>>>(partial.data_ptr<float>(),
                                                       table.data_ptr<int64_t>() + 3 * nchunks, num_groups,
                                                       out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace hnerv_fast

// Diagnostics of the table cache for tests: [hits, misses, entries, captured entries].
TORCH_LIBRARY_FRAGMENT(hnerv_fast, m) {
  m.def("grouped_norms_cache_info() -> int[]", [] { return hnerv_fast::table_cache().info(); });
}
