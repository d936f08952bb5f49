// Grouped L2 norms of many tensors in one parallel pass (CPU), multi-tensor style.
// The tensors are laid end to end in one virtual index space; at::parallel_for splits that space
// evenly between threads, each thread walks its tensor segments and adds sums of squares into its
// own per-group accumulators (double); a final serial pass adds threads and takes square roots.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "ops_cpu.h"
#include "simd.h"

namespace hnerv_fast {
namespace {

constexpr int64_t kSub = 4096;  // float partial sums stay short, then go to double
// Elements per thread before a second thread joins (~0.1 ms of work on one core). Smaller grains made
// a 300 K-element call take ~6 ms instead of 0.1 ms beside another busy process: the parallel region
// waited for a descheduled thread (benchmarks/RESULTS.md, "under load").
constexpr int64_t kGrain = 1 << 20;

template <typename T>
double seg_sumsq(const T* __restrict p, int64_t n) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    return simd::fns<T>().sum_sq(p, n);
  }
  using Acc = at::opmath_type<T>;
  double total = 0.0;
  for (int64_t s = 0; s < n; s += kSub) {
    const int64_t e = std::min(n, s + kSub);
    Acc a = 0;
#pragma omp simd reduction(+ : a)
    for (int64_t i = s; i < e; ++i) {
      const Acc v = static_cast<Acc>(p[i]);
      a += v * v;
    }
    total += static_cast<double>(a);
  }
  return total;
}

}  // namespace

at::Tensor grouped_norms_cpu(at::TensorList tensors, at::IntArrayRef groups, int64_t num_groups) {
  TORCH_CHECK_VALUE(num_groups >= 0, "grouped_norms: num_groups must be >= 0");
  TORCH_CHECK_VALUE(tensors.size() == groups.size(), "grouped_norms: ", tensors.size(), " tensors but ",
                    groups.size(), " group ids");
  const int64_t T = static_cast<int64_t>(tensors.size());
  std::vector<at::Tensor> ts;
  ts.reserve(T);
  std::vector<int64_t> offs(T + 1, 0);
  for (int64_t i = 0; i < T; ++i) {
    TORCH_CHECK_VALUE(groups[i] >= 0 && groups[i] < num_groups, "grouped_norms: group id ", groups[i],
                      " out of range [0, ", num_groups, ")");
    TORCH_CHECK_VALUE(tensors[i].device().is_cpu(), "grouped_norms (CPU): tensor ", i, " is on ",
                      tensors[i].device());
    TORCH_CHECK_VALUE(tensors[i].is_floating_point(), "grouped_norms: tensor ", i, " has dtype ",
                      tensors[i].scalar_type());
    ts.push_back(tensors[i].contiguous());
    offs[i + 1] = offs[i] + ts.back().numel();
  }
  const int64_t total = offs[T];
  const int nthreads = at::get_num_threads();
  std::vector<double> acc(static_cast<size_t>(nthreads) * std::max<int64_t>(num_groups, 1), 0.0);
  if (total > 0) {
    at::parallel_for(0, total, kGrain, [&](int64_t begin, int64_t end) {
      double* mine = acc.data() + static_cast<int64_t>(at::get_thread_num()) * std::max<int64_t>(num_groups, 1);
      int64_t t = std::upper_bound(offs.begin(), offs.end(), begin) - offs.begin() - 1;
      int64_t pos = begin;
      while (pos < end && t < T) {
        const int64_t lo = pos - offs[t];
        const int64_t hi = std::min(end, offs[t + 1]) - offs[t];
        if (hi > lo) {
          double s = 0.0;
          AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ts[t].scalar_type(), "grouped_norms_cpu", [&] {
            s = seg_sumsq<scalar_t>(ts[t].data_ptr<scalar_t>() + lo, hi - lo);
          });
          mine[groups[t]] += s;
        }
        pos = offs[t] + hi;
        ++t;
      }
    });
  }
  at::Tensor out = at::empty({1 + num_groups}, at::TensorOptions().dtype(at::kFloat));
  float* op = out.data_ptr<float>();
  double all = 0.0;
  for (int64_t g = 0; g < num_groups; ++g) {
    double s = 0.0;
    for (int th = 0; th < nthreads; ++th) s += acc[th * num_groups + g];
    all += s;
    op[1 + g] = static_cast<float>(std::sqrt(s));
  }
  op[0] = static_cast<float>(std::sqrt(all));
  return out;
}

}  // namespace hnerv_fast
