// Fused SSIM / cs + L1 + L2 statistics per (image, channel) plane and their fused backward (CPU).
// at::parallel_for over planes; each plane runs the separable kernels of ssim_plane.inc, compiled
// twice (baseline ISA and AVX2+FMA) and picked at run time.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <vector>

#include "ops_cpu.h"

#include "simd.h"

namespace hnerv_fast {
namespace {

constexpr int64_t kHalo = kSsimWin - 1;

template <typename T>
void window(T* g) {
  double gd[kSsimWin];
  gaussian_window(gd);
  for (int k = 0; k < kSsimWin; ++k) g[k] = static_cast<T>(gd[k]);
}

// Planes per task: small inputs run inline instead of waking the thread pool.
// Planes per thread before a second thread joins: ~128 K pixels, about 1 ms of SSIM work on one core. With
// 16 K, a 32x3x32x32 Fusion6 fwd+bwd took 24 ms instead of ~2 beside another busy process (the parallel
// region waits for a descheduled thread; benchmarks/test_ops_under_load.py).
int64_t grain_planes(int64_t H, int64_t W) { return std::max<int64_t>(1, (int64_t{1} << 17) / (H * W)); }

void check_cpu_dtype(const at::Tensor& x, const char* op) {
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
                    " (CPU): float32 or float64 input expected, got ", x.scalar_type());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> ssim_fwd_cpu(const at::Tensor& x_, const at::Tensor& y_, int64_t mode,
                                                bool save_coef) {
  check_ssim_args(x_, y_, mode);
  check_cpu_dtype(x_, "ssim_fwd");
  const at::Tensor x = x_.contiguous(), y = y_.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t P = N * C;
  const bool store = save_coef && mode > 0;
  const int64_t Ho = mode > 0 ? H - kHalo : 0, Wo = mode > 0 ? W - kHalo : 0;
  at::Tensor stats = at::empty({N, C, 3}, x.options());
  at::Tensor coef = store ? at::empty({N, C, 3, Ho, Wo}, x.options()) : at::empty({0}, x.options());

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ssim_fwd_cpu", [&] {
    using T = scalar_t;
    const simd::PlaneFns<T>& fns = simd::fns<T>();
    T g[kSsimWin];
    window(g);
    const T* xp = x.data_ptr<T>();
    const T* yp = y.data_ptr<T>();
    T* sp = stats.data_ptr<T>();
    T* cp = store ? coef.data_ptr<T>() : nullptr;
    const double inv_hw = 1.0 / double(H * W);
    const double inv_o = mode > 0 ? 1.0 / double(Ho * Wo) : 0.0;
    at::parallel_for(0, P, grain_planes(H, W), [&](int64_t begin, int64_t end) {
      std::vector<T> work(mode > 0 ? simd::fwd_work_elems(H, W) : 0);
      for (int64_t p = begin; p < end; ++p) {
        const T* xq = xp + p * H * W;
        const T* yq = yp + p * H * W;
        double sq, ab;
        fns.sq_abs(xq, yq, H, W, &sq, &ab);
        double val = 0.0;
        if (mode > 0) {
          val = fns.fwd[mode - 1][store ? 1 : 0](xq, yq, H, W, g, work.data(),
                                                 store ? cp + p * 3 * Ho * Wo : nullptr) * inv_o;
        }
        sp[p * 3 + 0] = static_cast<T>(sq * inv_hw);
        sp[p * 3 + 1] = static_cast<T>(ab * inv_hw);
        sp[p * 3 + 2] = static_cast<T>(val);
      }
    });
  });
  return {stats, coef};
}

at::Tensor ssim_bwd_cpu(const at::Tensor& grad_stats, const at::Tensor& x_, const at::Tensor& y_,
                        const at::Tensor& coef_, int64_t mode) {
  check_ssim_bwd_args(grad_stats, x_, y_, coef_, mode);
  check_cpu_dtype(x_, "ssim_bwd");
  const at::Tensor x = x_.contiguous(), y = y_.contiguous();
  const at::Tensor gs = grad_stats.to(x.scalar_type()).contiguous();
  const at::Tensor coef = mode > 0 ? coef_.contiguous() : coef_;
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t P = N * C;
  const int64_t Ho = mode > 0 ? H - kHalo : 0, Wo = mode > 0 ? W - kHalo : 0;
  at::Tensor dx = at::empty_like(x);

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ssim_bwd_cpu", [&] {
    using T = scalar_t;
    const simd::PlaneFns<T>& fns = simd::fns<T>();
    T g[kSsimWin];
    window(g);
    const T* xp = x.data_ptr<T>();
    const T* yp = y.data_ptr<T>();
    const T* gp = gs.data_ptr<T>();
    const T* cp = mode > 0 ? coef.data_ptr<T>() : nullptr;
    T* dp = dx.data_ptr<T>();
    const double inv_hw = 1.0 / double(H * W);
    const double inv_o = mode > 0 ? 1.0 / double(Ho * Wo) : 0.0;
    at::parallel_for(0, P, grain_planes(H, W), [&](int64_t begin, int64_t end) {
      std::vector<T> work(mode > 0 ? simd::bwd_work_elems(H, W) : 0);
      for (int64_t p = begin; p < end; ++p) {
        const T a = static_cast<T>(2.0 * double(gp[p * 3 + 0]) * inv_hw);
        const T b = static_cast<T>(double(gp[p * 3 + 1]) * inv_hw);
        const T s = static_cast<T>(double(gp[p * 3 + 2]) * inv_o);
        const T* cq = (mode > 0 && s != T(0)) ? cp + p * 3 * Ho * Wo : nullptr;
        fns.bwd(xp + p * H * W, yp + p * H * W, H, W, g, cq, a, b, s, work.data(), dp + p * H * W);
      }
    });
  });
  return dx;
}

}  // namespace hnerv_fast
