// Compiles kernels.inc twice (baseline ISA and AVX2+FMA) and picks one at run time, so the
// extension stays portable while the hot loops get 8-wide vectors and FMA where available.
#include "simd.h"

#define HNERV_NS hnerv_kern_generic
#include "kernels.inc"
#undef HNERV_NS

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HNERV_HAVE_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define HNERV_NS hnerv_kern_avx2
#include "kernels.inc"
#undef HNERV_NS
#pragma GCC pop_options
#endif

namespace hnerv_fast {
namespace simd {

#define HNERV_FILL_FNS(NS, T)                                                              \
  PlaneFns<T> {                                                                            \
    NS::plane_sq_abs<T>,                                                                   \
        {{NS::plane_ssim_fwd<T, 1, false>, NS::plane_ssim_fwd<T, 1, true>},                \
         {NS::plane_ssim_fwd<T, 2, false>, NS::plane_ssim_fwd<T, 2, true>}},               \
        NS::plane_ssim_bwd<T>, NS::sum_sq_diff<T>, NS::sum_sq<T>                           \
  }

bool using_avx2() {
#ifdef HNERV_HAVE_AVX2
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

template <typename T>
static PlaneFns<T> pick() {
#ifdef HNERV_HAVE_AVX2
  if (using_avx2()) return HNERV_FILL_FNS(hnerv_kern_avx2, T);
#endif
  return HNERV_FILL_FNS(hnerv_kern_generic, T);
}

template <typename T>
const PlaneFns<T>& fns() {
  static const PlaneFns<T> f = pick<T>();
  return f;
}

int64_t fwd_work_elems(int64_t H, int64_t W) { return hnerv_kern_generic::fwd_work_elems(H, W); }
int64_t bwd_work_elems(int64_t H, int64_t W) { return hnerv_kern_generic::bwd_work_elems(H, W); }

template const PlaneFns<float>& fns<float>();
template const PlaneFns<double>& fns<double>();

}  // namespace simd
}  // namespace hnerv_fast
