// Helpers shared by the CPU (_C) and CUDA (_C_cuda) modules; header-only because the two
// modules are separate shared libraries.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace hnerv_fast {

constexpr int kSsimWin = 11;
constexpr double kSsimSigma = 1.5;

// Normalised 11-tap Gaussian (sigma 1.5), computed in double.
inline void gaussian_window(double* g) {
  double s = 0.0;
  for (int k = 0; k < kSsimWin; ++k) {
    const double c = k - kSsimWin / 2;
    g[k] = std::exp(-(c * c) / (2.0 * kSsimSigma * kSsimSigma));
    s += g[k];
  }
  for (int k = 0; k < kSsimWin; ++k) g[k] /= s;
}

inline at::ScalarType opmath_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Which (x, y) element-type pairs a kernel takes. kSameDtype: x and y alike (the CPU kernels).
// kLowVsFloat: also a half / bfloat16 x (an autocast prediction) with a float32 y (the target), so
// the target is compared unrounded, in float32 (the CUDA kernels). float64 never mixes with a
// narrower type in C++, and neither does a float32 x with a narrower y: the Python layer
// (hnerv_fast/ops/psnr.py: kernel_pair) upcasts such pairs before calling.
enum class DtypePairs { kSameDtype, kLowVsFloat };

inline bool is_low_precision(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

inline void check_dtype_pair(const at::Tensor& x, const at::Tensor& y, const char* op, DtypePairs pairs) {
  const at::ScalarType xt = x.scalar_type(), yt = y.scalar_type();
  if (pairs == DtypePairs::kLowVsFloat) {
    TORCH_CHECK_VALUE(xt == yt || (is_low_precision(xt) && yt == at::kFloat), op, ": dtypes ", xt, " and ", yt,
                      " cannot be mixed (allowed: equal dtypes, or a Half/BFloat16 x with a Float y)");
  } else {
    TORCH_CHECK_VALUE(xt == yt, op, ": dtypes differ: ", xt, " vs ", yt);
  }
}

inline void check_image_pair(const at::Tensor& x, const at::Tensor& y, const char* op,
                             DtypePairs pairs = DtypePairs::kSameDtype) {
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": expected [N, C, H, W] input, got ", x.sizes());
  TORCH_CHECK_VALUE(x.sizes() == y.sizes(), op, ": shapes differ: ", x.sizes(), " vs ", y.sizes());
  check_dtype_pair(x, y, op, pairs);
  TORCH_CHECK_VALUE(x.device() == y.device(), op, ": devices differ");
  TORCH_CHECK_VALUE(x.is_floating_point(), op, ": expected a floating dtype, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.numel() > 0, op, ": empty input");
}

inline void check_ssim_args(const at::Tensor& x, const at::Tensor& y, int64_t mode,
                            DtypePairs pairs = DtypePairs::kSameDtype) {
  check_image_pair(x, y, "ssim_fwd", pairs);
  TORCH_CHECK_VALUE(mode >= 0 && mode <= 2, "ssim: mode must be 0 (none), 1 (ssim) or 2 (cs)");
  if (mode > 0) {
    TORCH_CHECK_VALUE(x.size(2) >= kSsimWin && x.size(3) >= kSsimWin,
                      "ssim: SSIM needs images of at least 11x11 pixels, got ", x.size(2), "x", x.size(3));
  }
}

inline void check_ssim_bwd_args(const at::Tensor& gs, const at::Tensor& x, const at::Tensor& y,
                                const at::Tensor& coef, int64_t mode,
                                DtypePairs pairs = DtypePairs::kSameDtype) {
  check_ssim_args(x, y, mode, pairs);
  TORCH_CHECK_VALUE(gs.dim() == 3 && gs.size(0) == x.size(0) && gs.size(1) == x.size(1) && gs.size(2) == 3,
                    "ssim_bwd: grad_stats must be [N, C, 3], got ", gs.sizes());
  if (mode > 0) {
    const int64_t Ho = x.size(2) - (kSsimWin - 1), Wo = x.size(3) - (kSsimWin - 1);
    TORCH_CHECK_VALUE(coef.dim() == 5 && coef.size(0) == x.size(0) && coef.size(1) == x.size(1) &&
                          coef.size(2) == 3 && coef.size(3) == Ho && coef.size(4) == Wo,
                      "ssim_bwd: coef must be the [N, C, 3, H-10, W-10] map saved by ssim_fwd, got ",
                      coef.sizes());
    TORCH_CHECK_VALUE(coef.scalar_type() == opmath_type(x.scalar_type()), "ssim_bwd: coef dtype ",
                      coef.scalar_type());
  }
}

}  // namespace hnerv_fast
