// CPU implementations of the hnerv_fast ops (schemas in csrc/registration.cpp).
#pragma once
#include <ATen/ATen.h>

#include "../common.h"

#include <tuple>

namespace hnerv_fast {

at::Tensor psnr_cpu(const at::Tensor& pred, const at::Tensor& target);
std::tuple<at::Tensor, at::Tensor> ssim_fwd_cpu(const at::Tensor& x, const at::Tensor& y, int64_t mode,
                                                bool save_coef);
at::Tensor ssim_bwd_cpu(const at::Tensor& grad_stats, const at::Tensor& x, const at::Tensor& y,
                        const at::Tensor& coef, int64_t mode);
at::Tensor grouped_norms_cpu(at::TensorList tensors, at::IntArrayRef groups, int64_t num_groups);

}  // namespace hnerv_fast
