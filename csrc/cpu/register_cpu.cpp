// CPU kernels of the hnerv_fast ops (schemas: csrc/registration.cpp).
#include <torch/library.h>

#include "ops_cpu.h"

TORCH_LIBRARY_IMPL(hnerv_fast, CPU, m) {
  m.impl("psnr", &hnerv_fast::psnr_cpu);
  m.impl("ssim_fwd", &hnerv_fast::ssim_fwd_cpu);
  m.impl("ssim_bwd", &hnerv_fast::ssim_bwd_cpu);
  m.impl("grouped_norms", &hnerv_fast::grouped_norms_cpu);
}
