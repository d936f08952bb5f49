// Element-type dispatch of the (prediction, target) pair shared by the psnr / ssim CUDA sources.
#pragma once
#include <ATen/ATen.h>

namespace hnerv_fast {
namespace cuda_detail {

template <typename T>
struct Type {
  using type = T;
};

// Calls f(Type<X>{}, Type<Y>{}) with the element types of (x, y): equal types, or a half/bfloat16
// x with a float y — six instantiations per kernel. A float32 x with a narrower y is never needed:
// the Python layer upcasts such a y (and ssim's d/dy upcasts the low-precision x before swapping).
template <typename F>
void dispatch_pair(const at::Tensor& x, const at::Tensor& y, const char* op, F&& f) {
  const at::ScalarType xt = x.scalar_type(), yt = y.scalar_type();
  if (xt == yt) {
    switch (xt) {
      case at::kDouble: return f(Type<double>{}, Type<double>{});
      case at::kFloat: return f(Type<float>{}, Type<float>{});
      case at::kHalf: return f(Type<at::Half>{}, Type<at::Half>{});
      case at::kBFloat16: return f(Type<at::BFloat16>{}, Type<at::BFloat16>{});
      default: break;
    }
  } else if (yt == at::kFloat) {
    if (xt == at::kHalf) return f(Type<at::Half>{}, Type<float>{});
    if (xt == at::kBFloat16) return f(Type<at::BFloat16>{}, Type<float>{});
  }
  TORCH_CHECK_VALUE(false, op, " (CUDA): no kernel for dtypes ", xt, " and ", yt);
}

}  // namespace cuda_detail
}  // namespace hnerv_fast
