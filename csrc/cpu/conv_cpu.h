// Private interface between the fused conv entry points (conv.cpp) and the
// direct small-reduction kernel (conv_direct.cpp).
#pragma once

#include <ATen/ATen.h>

#include "../common.h"

namespace fastconv {
namespace cpu {

// Which core computes conv(x, w): the direct fused kernel, or ATen's
// convolution (oneDNN) with the fused epilogue / unpool prologue around it.
enum class ConvPath { kDirect, kAten };

// auto: direct when the reduction per output is short (C/groups * R * S <= 32,
// e.g. a first layer on RGB, or depthwise 3x3), where an im2col/GEMM core runs
// far below peak. FASTCONV_CPU_CONV=direct|aten forces one (any shape is
// correct on both; tests use this to cover both kernels on every case).
ConvPath conv_path(const ConvGeom& g);

// y [N, K, PO, QO] and idx (uint8, same shape, or empty when pool == 1) are
// allocated by the caller in x's memory format.
void direct_conv_fwd(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                     const ConvGeom& g, at::Tensor& y, at::Tensor& idx);

// dx (x's format), dw [K, CG, R, S] contiguous, db [K]: filled where need_* is set.
void direct_conv_bwd(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w, const at::Tensor& y,
                     const at::Tensor& idx, const ConvGeom& g, bool need_dx, bool need_dw, bool need_db,
                     at::Tensor& dx, at::Tensor& dw, at::Tensor& db);

}  // namespace cpu
}  // namespace fastconv
