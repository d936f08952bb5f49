// CUDA fused SSIM / cs + L1 + L2 statistics (schema and semantics: csrc/registration.cpp).
//
// One block per 16x32 tile (8x32 for float64) of a plane: x/y tile + 10-px halo in shared memory,
// separable 11-tap blur of the 5 moments (horizontal into shared memory, vertical in registers),
// SSIM/cs + 3 coefficient maps per output pixel, L1/L2 over the tile's own pixels; per-tile partial
// sums stored [P, 3, ntiles], then one block per plane adds its tiles (contiguous reads, fixed order:
// deterministic). x (the prediction) and y (the target) each keep their own element type, loaded
// straight into the accumulation type, so a half/bfloat16 prediction meets an unrounded float32
// target (dtype_pair.cuh; common.h: DtypePairs::kLowVsFloat).
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
// SSIM forward
// ----------------------------------------------------------------------------------------------
template <typename T, typename U, typename Acc, int kTileH>
__global__ void __launch_bounds__(kThreads) ssim_fwd_kernel(
    const T* __restrict__ x, const U* __restrict__ y, int64_t P, int H, int W, int mode, bool store,
    Window<Acc> win, Acc* __restrict__ coef, Acc* __restrict__ partial) {
  constexpr int SH = kTileH + kHalo, SW = kTileW + kHalo;
  __shared__ Acc sx[SH][SW];
  __shared__ Acc sy[SH][SW];
  __shared__ Acc hm[5][SH][kTileW];
  __shared__ Acc red[32];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int tid = tx + ty * kTileW;
  const int r0 = blockIdx.y * kTileH, c0 = blockIdx.x * kTileW;
  const int Ho = H - kHalo, Wo = W - kHalo;
  const int ntiles = gridDim.x * gridDim.y;
  const int tile = blockIdx.x + blockIdx.y * gridDim.x;
  const Acc C1 = Acc(0.0001), C2 = Acc(0.0009);

  for (int64_t p = blockIdx.z; p < P; p += gridDim.z) {
    const T* xp = x + p * int64_t(H) * W;
    const U* yp = y + p * int64_t(H) * W;
    // 1. tile + halo into shared memory (zeros outside the plane)
    for (int i = tid; i < SH * SW; i += kThreads) {
      const int rr = i / SW, cc = i % SW;
      const int r = r0 + rr, c = c0 + cc;
      const bool in = r < H && c < W;
      sx[rr][cc] = in ? static_cast<Acc>(xp[int64_t(r) * W + c]) : Acc(0);
      sy[rr][cc] = in ? static_cast<Acc>(yp[int64_t(r) * W + c]) : Acc(0);
    }
    __syncthreads();
    // 2. L1 / L2 over the tile's own pixels
    Acc sq = 0, ab = 0, val_sum = 0;
    for (int rr = ty; rr < kTileH; rr += kBlockRows) {
      if (r0 + rr < H && c0 + tx < W) {
        const Acc d = sx[rr][tx] - sy[rr][tx];
        sq += d * d;
        ab += fabs(d);
      }
    }
    if (mode > 0) {
      // 3. horizontal blur of the 5 moments for every shared row
      for (int rr = ty; rr < SH; rr += kBlockRows) {
        Acc a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0;
#pragma unroll
        for (int k = 0; k < kWin; ++k) {
          const Acc xv = sx[rr][tx + k], yv = sy[rr][tx + k], g = win.g[k];
          const Acc gx = g * xv, gy = g * yv;
          a0 += gx;
          a1 += gy;
          a2 += gx * xv;
          a3 += gy * yv;
          a4 += gx * yv;
        }
        hm[0][rr][tx] = a0;
        hm[1][rr][tx] = a1;
        hm[2][rr][tx] = a2;
        hm[3][rr][tx] = a3;
        hm[4][rr][tx] = a4;
      }
      __syncthreads();
      // 4. vertical blur, SSIM / cs, coefficient maps
      const int oc = c0 + tx;
      for (int rr = ty; rr < kTileH; rr += kBlockRows) {
        const int orow = r0 + rr;
        if (orow >= Ho || oc >= Wo) continue;
        Acc m1 = 0, m2 = 0, exx = 0, eyy = 0, exy = 0;
#pragma unroll
        for (int k = 0; k < kWin; ++k) {
          const Acc g = win.g[k];
          m1 += g * hm[0][rr + k][tx];
          m2 += g * hm[1][rr + k][tx];
          exx += g * hm[2][rr + k][tx];
          eyy += g * hm[3][rr + k][tx];
          exy += g * hm[4][rr + k][tx];
        }
        const Acc s11 = exx - m1 * m1, s22 = eyy - m2 * m2, s12 = exy - m1 * m2;
        const Acc A2 = Acc(2) * s12 + C2;
        const Acc iB2 = Acc(1) / (s11 + s22 + C2);
        const Acc cs = A2 * iB2;
        Acc v, d_mu, d_xx, d_xy;
        if (mode == 1) {
          const Acc A1 = Acc(2) * m1 * m2 + C1;
          const Acc iB1 = Acc(1) / (m1 * m1 + m2 * m2 + C1);
          const Acc l = A1 * iB1;
          v = l * cs;
          const Acc dl = (Acc(2) * m2 - Acc(2) * m1 * l) * iB1;
          const Acc dcs = (Acc(2) * m1 * cs - Acc(2) * m2) * iB2;
          d_mu = dl * cs + l * dcs;
          d_xx = -l * cs * iB2;
          d_xy = Acc(2) * l * iB2;
        } else {
          v = cs;
          d_mu = (Acc(2) * m1 * cs - Acc(2) * m2) * iB2;
          d_xx = -cs * iB2;
          d_xy = Acc(2) * iB2;
        }
        val_sum += v;
        if (store) {
          const int64_t plane = int64_t(Ho) * Wo;
          Acc* cp = coef + p * 3 * plane + int64_t(orow) * Wo + oc;
          cp[0] = d_mu;
          cp[plane] = d_xx;
          cp[2 * plane] = d_xy;
        }
      }
    }
    // 5. per-tile partial sums, [P, 3, ntiles]: each statistic's tiles are contiguous for the finalize
    sq = block_sum(sq, red);
    ab = block_sum(ab, red);
    val_sum = block_sum(val_sum, red);
    if (tid == 0) {
      Acc* out = partial + p * 3 * ntiles + tile;
      out[0] = sq;
      out[ntiles] = ab;
      out[2 * ntiles] = val_sum;
    }
    __syncthreads();
  }
}

constexpr int kFinalizeThreads = 128;

// One block per plane: threads stride over the plane's tiles (coalesced, [P, 3, ntiles] layout),
// then a block reduction in double per statistic (fixed order, no atomics: deterministic).
template <typename Acc>
__global__ void __launch_bounds__(kFinalizeThreads) ssim_finalize_kernel(
    const Acc* __restrict__ partial, int64_t P, int ntiles, double inv_hw, double inv_o, Acc* __restrict__ stats) {
  __shared__ double red[32];
  for (int64_t p = blockIdx.x; p < P; p += gridDim.x) {
    const Acc* part = partial + p * 3 * ntiles;
    double s0 = 0.0, s1 = 0.0, s2 = 0.0;
    for (int t = threadIdx.x; t < ntiles; t += blockDim.x) {
      s0 += static_cast<double>(part[t]);
      s1 += static_cast<double>(part[ntiles + t]);
      s2 += static_cast<double>(part[2 * ntiles + t]);
    }
    s0 = block_sum(s0, red);
    s1 = block_sum(s1, red);
    s2 = block_sum(s2, red);
    if (threadIdx.x == 0) {
      stats[p * 3 + 0] = static_cast<Acc>(s0 * inv_hw);
      stats[p * 3 + 1] = static_cast<Acc>(s1 * inv_hw);
      stats[p * 3 + 2] = static_cast<Acc>(s2 * inv_o);
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> ssim_fwd_cuda(const at::Tensor& x_, const at::Tensor& y_, int64_t mode,
                                                 bool save_coef) {
  check_ssim_args(x_, y_, mode, DtypePairs::kLowVsFloat);
  check_cuda(x_, "ssim_fwd");
  const c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous(), y = y_.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), P = N * C;
  TORCH_CHECK_VALUE(H < (1 << 30) && W < (1 << 30), "ssim_fwd: image too large");
  const bool store = save_coef && mode > 0;
  const int64_t Ho = mode > 0 ? H - kHalo : 0, Wo = mode > 0 ? W - kHalo : 0;
  const auto acc_t = opmath_type(x.scalar_type());
  at::Tensor stats = at::empty({N, C, 3}, x.options().dtype(acc_t));
  at::Tensor coef = store ? at::empty({N, C, 3, Ho, Wo}, x.options().dtype(acc_t)) : at::empty({0}, x.options().dtype(acc_t));
  auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_pair(x, y, "ssim_fwd", [&](auto xt, auto yt) {
    using T = typename decltype(xt)::type;
    using U = typename decltype(yt)::type;
    using Acc = at::opmath_type<T>;
    constexpr int TH = tile_h<Acc>();
    const int gx = static_cast<int>((W + kTileW - 1) / kTileW), gy = static_cast<int>((H + TH - 1) / TH);
    const int ntiles = gx * gy;
    at::Tensor partial = at::empty({P, 3, ntiles}, x.options().dtype(acc_t));
    const dim3 grid(gx, gy, static_cast<unsigned>(grid_cap(P, 65535)));
    const dim3 block(kTileW, kBlockRows);
    ssim_fwd_kernel<T, U, Acc, TH><<<grid, block, 0, stream>>>(
        x.data_ptr<T>(), y.data_ptr<U>(), P, static_cast<int>(H), static_cast<int>(W),
        static_cast<int>(mode), store, make_window<Acc>(), store ? coef.data_ptr<Acc>() : nullptr,
        partial.data_ptr<Acc>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const double inv_o = mode > 0 ? 1.0 / double(Ho * Wo) : 0.0;
    ssim_finalize_kernel<Acc><<<grid_cap(P, 65535), kFinalizeThreads, 0, stream>>>(
        partial.data_ptr<Acc>(), P, ntiles, 1.0 / double(H * W), inv_o, stats.data_ptr<Acc>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {stats, coef};
}

}  // namespace hnerv_fast
