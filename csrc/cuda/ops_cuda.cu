// CUDA kernels of the hnerv_fast ops (schemas and semantics: csrc/registration.cpp).
//
//  psnr          per-sample partial sums of squares (grid-stride, warp-shuffle block reduction),
//                then a tiny finalize kernel (deterministic, no atomics).
//  ssim_fwd      one block per 16x32 tile (8x32 for float64) of a plane: x/y tile + 10-px halo in
//                shared memory, separable 11-tap blur of the 5 moments (horizontal into shared
//                memory, vertical in registers), SSIM/cs + 3 coefficient maps per output pixel,
//                L1/L2 over the tile's own pixels; per-tile partial sums stored [P, 3, ntiles], then
//                one block per plane adds its tiles (contiguous reads, fixed order: deterministic).
//  ssim_bwd      same tiling over the input pixels: coefficient maps + halo in shared memory,
//                separable blur (= transposed blur, the window is symmetric), fused with L1/L2.
//  Element types: x (the prediction) and y (the target) each keep their own, loaded straight into
//  the accumulation type, so a half/bfloat16 prediction meets an unrounded float32 target
//  (dispatch_pair lists the pairs; common.h: DtypePairs::kLowVsFloat). dx has x's type.
//  (grouped_norms: grad_norm_cuda.cu; block reductions: reduce.cuh)
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>

#include "../common.h"
#include "ops_cuda.h"
#include "reduce.cuh"

namespace hnerv_fast {
namespace {

constexpr int kWin = kSsimWin;
constexpr int kHalo = kWin - 1;
constexpr int kTileW = 32;  // = blockDim.x
constexpr int kBlockRows = 8;  // = blockDim.y

template <typename Acc>
struct Window {
  Acc g[kWin];
};

template <typename Acc>
Window<Acc> make_window() {
  double gd[kWin];
  gaussian_window(gd);
  Window<Acc> w;
  for (int k = 0; k < kWin; ++k) w.g[k] = static_cast<Acc>(gd[k]);
  return w;
}

template <typename Acc>
constexpr int tile_h() {
  return sizeof(Acc) == 8 ? 8 : 16;
}

using namespace cuda_detail;

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

// ----------------------------------------------------------------------------------------------
// PSNR
// ----------------------------------------------------------------------------------------------
template <typename T, typename U, typename Acc>
__global__ void sse_partial_kernel(const T* __restrict__ x, const U* __restrict__ y, int64_t N, int64_t M,
                                   int nb, Acc* __restrict__ partial) {
  __shared__ Acc red[32];
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y) {
    const T* xs = x + n * M;
    const U* ys = y + n * M;
    Acc acc = 0;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < M; i += int64_t(nb) * blockDim.x) {
      const Acc d = static_cast<Acc>(xs[i]) - static_cast<Acc>(ys[i]);
      acc += d * d;
    }
    acc = block_sum(acc, red);
    if (threadIdx.x == 0) partial[n * nb + blockIdx.x] = acc;
  }
}

template <typename Acc>
__global__ void psnr_finalize_kernel(const Acc* __restrict__ partial, int64_t N, int nb, int64_t M,
                                     Acc* __restrict__ out) {
  for (int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; n < N; n += int64_t(gridDim.x) * blockDim.x) {
    double s = 0.0;
    for (int b = 0; b < nb; ++b) s += static_cast<double>(partial[n * nb + b]);
    out[n] = static_cast<Acc>(-10.0 * log10(s / double(M) + 1e-9));
  }
}

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

// ----------------------------------------------------------------------------------------------
// launchers
// ----------------------------------------------------------------------------------------------
at::Tensor psnr_cuda(const at::Tensor& pred, const at::Tensor& target) {
  check_image_pair(pred, target, "psnr", DtypePairs::kLowVsFloat);
  check_cuda(pred, "psnr");
  const c10::cuda::CUDAGuard guard(pred.device());
  const at::Tensor x = pred.contiguous(), y = target.contiguous();
  const int64_t N = x.size(0), M = x.numel() / N;
  const int nb = static_cast<int>(grid_cap((M + kThreads * 8 - 1) / (kThreads * 8), 64));
  const auto acc_t = opmath_type(x.scalar_type());
  at::Tensor partial = at::empty({N * nb}, x.options().dtype(acc_t));
  at::Tensor out = at::empty({N}, x.options().dtype(acc_t));
  auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_pair(x, y, "psnr", [&](auto xt, auto yt) {
    using T = typename decltype(xt)::type;
    using U = typename decltype(yt)::type;
    using Acc = at::opmath_type<T>;
    const dim3 grid(nb, static_cast<unsigned>(grid_cap(N, 65535)));
    sse_partial_kernel<T, U, Acc><<<grid, kThreads, 0, stream>>>(
        x.data_ptr<T>(), y.data_ptr<U>(), N, M, nb, partial.data_ptr<Acc>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    psnr_finalize_kernel<Acc><<<grid_cap((N + kThreads - 1) / kThreads, 1024), kThreads, 0, stream>>>(
        partial.data_ptr<Acc>(), N, nb, M, out.data_ptr<Acc>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

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
