// The one schema registration of the hnerv_fast fused ops, plus the Python module stub of
// `hnerv_fast._C` (importing it runs the static registrations below and in csrc/cpu/).
//
// Semantics (see hnerv_fast/ops/reference.py for the plain-torch definitions):
//   psnr(pred, target) -> [N]            -10*log10(mean((pred-target)^2) + 1e-9) per sample
//   ssim_fwd(x, y, mode, save_coef) -> (stats [N,C,3], coef)
//        stats[n,c] = (mean (x-y)^2, mean |x-y|, mean val) over the plane; val is the SSIM map
//        (mode 1), the cs map (mode 2) or nothing (mode 0, stats[...,2] = 0). Valid 11-tap
//        Gaussian window (sigma 1.5), C1 = 0.01^2, C2 = 0.03^2.
//        coef [N,C,3,H-10,W-10] holds d val / d(mu_x, E[x^2], E[xy]) per output pixel when
//        save_coef and mode > 0, else an empty tensor. Both outputs use the "opmath" dtype
//        (float64 for float64 input, float32 otherwise).
//   ssim_bwd(grad_stats, x, y, coef, mode) -> d(sum grad_stats*stats)/dx, dtype of x
//   grouped_norms(tensors, groups, num_groups) -> [1+num_groups] float32:
//        [sqrt(total sum of squares), sqrt(sum of squares of group g) ...]; groups[i] is the
//        group id of tensors[i].
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(hnerv_fast, m) {
  m.def("psnr(Tensor pred, Tensor target) -> Tensor");
  m.def("ssim_fwd(Tensor x, Tensor y, int mode, bool save_coef) -> (Tensor, Tensor)");
  m.def("ssim_bwd(Tensor grad_stats, Tensor x, Tensor y, Tensor coef, int mode) -> Tensor");
  m.def("grouped_norms(Tensor[] tensors, int[] groups, int num_groups) -> Tensor");
}

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "hnerv_fast fused CPU ops", -1,
                                          nullptr};
  return PyModule_Create(&module_def);
}
}
