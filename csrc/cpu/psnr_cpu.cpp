// Per-sample PSNR in one pass: -10*log10(mean((pred-target)^2) + 1e-9) (CPU).
// at::parallel_for over fixed-size chunks of every sample; per-chunk sums in double, then one
// small serial pass per sample.
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

constexpr int64_t kChunk = 1 << 14;

template <typename T, typename Acc>
double chunk_sse(const T* __restrict x, const T* __restrict y, int64_t n) {
  Acc s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) {
    const Acc d = static_cast<Acc>(x[i]) - static_cast<Acc>(y[i]);
    s += d * d;
  }
  return static_cast<double>(s);
}

}  // namespace

at::Tensor psnr_cpu(const at::Tensor& pred, const at::Tensor& target) {
  check_image_pair(pred, target, "psnr");
  const at::Tensor x = pred.contiguous(), y = target.contiguous();
  const int64_t N = x.size(0);
  const int64_t M = x.numel() / N;
  const int64_t nc = (M + kChunk - 1) / kChunk;
  std::vector<double> part(N * nc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "psnr_cpu", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, N * nc, std::max<int64_t>(1, (1 << 16) / std::min(kChunk, M)), [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const int64_t n = c / nc, k = c % nc;
        const int64_t off = n * M + k * kChunk;
        const int64_t len = std::min(kChunk, M - k * kChunk);
        if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
          part[c] = simd::fns<scalar_t>().sum_sq_diff(xp + off, yp + off, len);
        } else {
          part[c] = chunk_sse<scalar_t, Acc>(xp + off, yp + off, len);
        }
      }
    });
  });
  at::Tensor out = at::empty({N}, x.options().dtype(opmath_type(x.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "psnr_cpu_out", [&] {
    scalar_t* op = out.data_ptr<scalar_t>();
    for (int64_t n = 0; n < N; ++n) {
      double s = 0.0;
      for (int64_t k = 0; k < nc; ++k) s += part[n * nc + k];
      op[n] = static_cast<scalar_t>(-10.0 * std::log10(s / double(M) + 1e-9));
    }
  });
  return out;
}

}  // namespace hnerv_fast
