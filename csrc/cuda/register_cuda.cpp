// CUDA kernels of the hnerv_fast ops and the module stub of `hnerv_fast._C_cuda`.
// The schemas live in hnerv_fast._C (csrc/registration.cpp); import that module first.
#include <Python.h>
#include <torch/library.h>

#include "ops_cuda.h"

TORCH_LIBRARY_IMPL(hnerv_fast, CUDA, m) {
  m.impl("psnr", &hnerv_fast::psnr_cuda);
  m.impl("ssim_fwd", &hnerv_fast::ssim_fwd_cuda);
  m.impl("ssim_bwd", &hnerv_fast::ssim_bwd_cuda);
  m.impl("grouped_norms", &hnerv_fast::grouped_norms_cuda);
}

extern "C" {
PyObject* PyInit__C_cuda(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_cuda", "hnerv_fast fused CUDA ops", -1,
                                          nullptr};
  return PyModule_Create(&module_def);
}
}
