// Tiling and Gaussian window shared by the SSIM forward and backward CUDA kernels.
#pragma once
#include "../common.h"

namespace hnerv_fast {
namespace cuda_detail {

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

}  // namespace cuda_detail
}  // namespace hnerv_fast
