// The parts of the CUDA conv that conv2d.cu calls: the tile conv launch
// (conv2d_tile.cuh), dgrad (conv2d_dgrad.cu) and wgrad (conv2d_wgrad.cu).
// Every tensor here is already checked, on one device, in one memory format:
// dy, y and idx share their strides (the saved y is read only when g.relu, idx
// only when g.pool > 1), and the current stream is the launch stream.
#pragma once

#include "conv2d_tile.cuh"

namespace fastconv {
namespace cuda {

// dx [N, C, H, W] (x's strides) = the conv's input gradient from dC.
void conv2d_dgrad(const ConvGeom& g, const at::Tensor& dy, const at::Tensor& y, const at::Tensor& idx,
                  const at::Tensor& w, at::Tensor& dx);

// dw [K, CG, R, S] (contiguous) and / or db [K] from dC and x.
void conv2d_wgrad(const ConvGeom& g, const at::Tensor& x, const at::Tensor& dy, const at::Tensor& y,
                  const at::Tensor& idx, bool need_dw, bool need_db, at::Tensor& dw, at::Tensor& db);

}  // namespace cuda
}  // namespace fastconv
