// Run-time ISA dispatch of the raw-pointer kernels in kernels.inc (baseline x86-64 or AVX2+FMA).
#pragma once
#include <cstdint>

namespace hnerv_fast {
namespace simd {

template <typename T>
struct PlaneFns {
  void (*sq_abs)(const T*, const T*, int64_t, int64_t, double*, double*);
  double (*fwd[2][2])(const T*, const T*, int64_t, int64_t, const T*, T*, T*);  // [mode-1][store]
  void (*bwd)(const T*, const T*, int64_t, int64_t, const T*, const T*, T, T, T, T*, T*);
  double (*sum_sq_diff)(const T*, const T*, int64_t);
  double (*sum_sq)(const T*, int64_t);
};

// Scratch sizes (elements) of the plane kernels' `work` argument.
int64_t fwd_work_elems(int64_t H, int64_t W);
int64_t bwd_work_elems(int64_t H, int64_t W);

// Kernels for float / double, AVX2+FMA copies when the CPU supports them.
template <typename T>
const PlaneFns<T>& fns();

bool using_avx2();

}  // namespace simd
}  // namespace hnerv_fast
