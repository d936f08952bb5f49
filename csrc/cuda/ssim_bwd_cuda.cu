// CUDA fused backward of the SSIM / cs + L1 + L2 statistics (schema: csrc/registration.cpp).
//
// Same tiling as ssim_fwd_cuda.cu over the input pixels: the forward's coefficient maps + halo in
// shared memory, separable blur (= transposed blur, the window is symmetric), fused with the L1/L2
// terms. dx has x's element type.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

#include "../common.h"
#include "dtype_pair.cuh"
#include "ops_cuda.h"
#include "reduce.cuh"
#include "ssim_tile.cuh"

namespace hnerv_fast {
namespace {
using namespace cuda_detail;

// ----------------------------------------------------------------------------------------------
// SSIM backward
// ----------------------------------------------------------------------------------------------
template <typename T, typename U, typename Acc, int kTileH>
__global__ void __launch_bounds__(kThreads) ssim_bwd_kernel(
    const T* __restrict__ x, const U* __restrict__ y, const Acc* __restrict__ gstats,
    const Acc* __restrict__ coef, int64_t P, int H, int W, bool has_ssim, Window<Acc> win, T* __restrict__ dx) {
  constexpr int SH = kTileH + kHalo, SW = kTileW + kHalo;
  __shared__ Acc sc[3][SH][SW];
  __shared__ Acc hc[3][SH][kTileW];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int tid = tx + ty * kTileW;
  const int r0 = blockIdx.y * kTileH, c0 = blockIdx.x * kTileW;
  const int Ho = H - kHalo, Wo = W - kHalo;
  const int64_t plane_o = int64_t(Ho) * Wo;

  for (int64_t p = blockIdx.z; p < P; p += gridDim.z) {
    const Acc a = Acc(2) * gstats[p * 3 + 0] / Acc(double(H) * W);
    const Acc b = gstats[p * 3 + 1] / Acc(double(H) * W);
    const Acc s = has_ssim ? gstats[p * 3 + 2] / Acc(double(plane_o)) : Acc(0);
    const int64_t base = p * int64_t(H) * W;
    if (has_ssim) {
      // coefficient maps for output rows r0-10 .. r0+kTileH-1, cols c0-10 .. c0+kTileW-1
      const Acc* cp = coef + p * 3 * plane_o;
      for (int i = tid; i < SH * SW; i += kThreads) {
        const int rr = i / SW, cc = i % SW;
        const int r = r0 - kHalo + rr, c = c0 - kHalo + cc;
        const bool in = r >= 0 && r < Ho && c >= 0 && c < Wo;
        const int64_t o = int64_t(r) * Wo + c;
        sc[0][rr][cc] = in ? cp[o] : Acc(0);
        sc[1][rr][cc] = in ? cp[o + plane_o] : Acc(0);
        sc[2][rr][cc] = in ? cp[o + 2 * plane_o] : Acc(0);
      }
      __syncthreads();
      for (int rr = ty; rr < SH; rr += kBlockRows) {
        Acc a0 = 0, a1 = 0, a2 = 0;
#pragma unroll
        for (int k = 0; k < kWin; ++k) {
          const Acc g = win.g[k];
          a0 += g * sc[0][rr][tx + k];
          a1 += g * sc[1][rr][tx + k];
          a2 += g * sc[2][rr][tx + k];
        }
        hc[0][rr][tx] = a0;
        hc[1][rr][tx] = a1;
        hc[2][rr][tx] = a2;
      }
      __syncthreads();
    }
    const int c = c0 + tx;
    for (int rr = ty; rr < kTileH; rr += kBlockRows) {
      const int r = r0 + rr;
      if (r >= H || c >= W) continue;
      const int64_t o = base + int64_t(r) * W + c;
      const Acc xv = static_cast<Acc>(x[o]), yv = static_cast<Acc>(y[o]);
      const Acc d = xv - yv;
      Acc g = a * d + b * Acc((d > Acc(0)) - (d < Acc(0)));
      if (has_ssim) {
        Acc t0 = 0, t1 = 0, t2 = 0;
#pragma unroll
        for (int k = 0; k < kWin; ++k) {
          const Acc w = win.g[k];
          t0 += w * hc[0][rr + k][tx];
          t1 += w * hc[1][rr + k][tx];
          t2 += w * hc[2][rr + k][tx];
        }
        g += s * (t0 + Acc(2) * xv * t1 + yv * t2);
      }
      dx[o] = static_cast<T>(g);
    }
    __syncthreads();
  }
}

}  // namespace

at::Tensor ssim_bwd_cuda(const at::Tensor& grad_stats, const at::Tensor& x_, const at::Tensor& y_,
                         const at::Tensor& coef_, int64_t mode) {
  check_ssim_bwd_args(grad_stats, x_, y_, coef_, mode, DtypePairs::kLowVsFloat);
  check_cuda(x_, "ssim_bwd");
  const c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous(), y = y_.contiguous();
  const auto acc_t = opmath_type(x.scalar_type());
  const at::Tensor gs = grad_stats.to(acc_t).contiguous();
  const at::Tensor coef = mode > 0 ? coef_.contiguous() : coef_;
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), P = N * C;
  at::Tensor dx = at::empty_like(x);
  auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_pair(x, y, "ssim_bwd", [&](auto xt, auto yt) {
    using T = typename decltype(xt)::type;
    using U = typename decltype(yt)::type;
    using Acc = at::opmath_type<T>;
    constexpr int TH = tile_h<Acc>();
    const int gx = static_cast<int>((W + kTileW - 1) / kTileW), gy = static_cast<int>((H + TH - 1) / TH);
    const dim3 grid(gx, gy, static_cast<unsigned>(grid_cap(P, 65535)));
    const dim3 block(kTileW, kBlockRows);
    ssim_bwd_kernel<T, U, Acc, TH><<<grid, block, 0, stream>>>(
        x.data_ptr<T>(), y.data_ptr<U>(), gs.data_ptr<Acc>(), mode > 0 ? coef.data_ptr<Acc>() : nullptr, P,
        static_cast<int>(H), static_cast<int>(W), mode > 0, make_window<Acc>(), dx.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

}  // namespace hnerv_fast
