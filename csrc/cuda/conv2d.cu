// fastconv_C::conv2d_fwd / conv2d_bwd on CUDA: the fused conv + bias + relu +
// max-pool (docs/design.md §2.1, §2.2), checks, allocation and the launches.
//
//   forward  y [N, K, PO, QO] = pool_k(act(conv2d(x, w) + b)), in x's memory format;
//            idx [N, K, PO, QO] uint8 window index di*pool + dj of each max
//            (empty when pool == 1). One launch of the tile conv
//            (conv2d_tile.cuh) with x as its source: the full-resolution conv
//            output never leaves the registers.
//   backward dx (conv2d_dgrad.cu) and dw, db (conv2d_wgrad.cu), both reading
//            the conv-output gradient dC through the unpool prologue
//            (docs/design.md §2.2, implemented by conv2d_sources.cuh).

#include <array>
#include <optional>
#include <vector>

#include "conv2d.cuh"
#include "../ops.h"

namespace fastconv {
namespace cuda {

std::tuple<at::Tensor, at::Tensor> conv2d_fwd(const at::Tensor& x, const at::Tensor& w,
                                                   const std::optional<at::Tensor>& b, at::IntArrayRef stride,
                                                   at::IntArrayRef padding, at::IntArrayRef dilation,
                                                   int64_t groups, bool relu, int64_t pool) {
  check_cuda_like(x, "x", x, "conv2d_fwd");
  check_cuda_like(w, "w", x, "conv2d_fwd");
  const bool has_bias = b.has_value() && b->defined();
  if (has_bias) {
    check_cuda_like(*b, "b", x, "conv2d_fwd");
    TORCH_CHECK(b->dim() == 1 && b->size(0) == w.size(0), "fastconv_C::conv2d_fwd: b must have shape [",
                w.size(0), "], got ", b->sizes());
  }
  const ConvGeom g = conv_geom(x, w, stride, padding, dilation, groups, relu, pool);
  check_conv_sizes(g);
  c10::cuda::CUDAGuard guard(x.device());
  const auto fmt = memory_format_of(x);
  at::Tensor y = at::empty({g.N, g.K, g.PO, g.QO}, x.options().memory_format(fmt));
  at::Tensor idx = pool > 1 ? at::empty({g.N, g.K, g.PO, g.QO}, x.options().dtype(at::kByte).memory_format(fmt))
                            : at::empty({0}, x.options().dtype(at::kByte));
  if (y.numel() == 0) return {y, idx};
  if (pool > 1) TORCH_INTERNAL_ASSERT(idx.strides() == y.strides());
  const at::Tensor wc = w.contiguous();
  const at::Tensor bc = has_bias ? b->contiguous() : at::Tensor();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const bool x_cl = g.C > 1 && x.stride(1) == 1;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv2d_fwd_cuda", [&] {
    using T = scalar_t;
    conv2d_tile<T>(g, tensor_source<T>(x), x_cl, channels_vec_ok(x), wc.const_data_ptr<T>(),
                   has_bias ? bc.const_data_ptr<T>() : nullptr, y,
                   pool > 1 ? idx.mutable_data_ptr<uint8_t>() : nullptr, stream);
  });
  return {y, idx};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_bwd(
    const at::Tensor& dy_in, const at::Tensor& x, const at::Tensor& w, const at::Tensor& y_in,
    const at::Tensor& idx_in, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    int64_t groups, bool relu, int64_t pool, std::array<bool, 3> mask) {
  check_cuda_like(x, "x", x, "conv2d_bwd");
  check_cuda_like(w, "w", x, "conv2d_bwd");
  check_cuda_like(dy_in, "dy", x, "conv2d_bwd");
  const ConvGeom g = conv_geom(x, w, stride, padding, dilation, groups, relu, pool);
  check_conv_sizes(g);
  const std::vector<int64_t> dy_shape{g.N, g.K, g.PO, g.QO};
  TORCH_CHECK(dy_in.sizes() == at::IntArrayRef(dy_shape), "fastconv_C::conv2d_bwd: dy must have shape ",
              at::IntArrayRef(dy_shape), ", got ", dy_in.sizes());
  if (relu) {
    check_cuda_like(y_in, "y", x, "conv2d_bwd");
    TORCH_CHECK(y_in.sizes() == dy_in.sizes(), "fastconv_C::conv2d_bwd: y must have dy's shape ", dy_in.sizes(),
                ", got ", y_in.sizes());
  }
  if (pool > 1) {
    TORCH_CHECK(idx_in.defined() && idx_in.is_cuda() && idx_in.device() == x.device() &&
                    idx_in.scalar_type() == at::kByte && idx_in.sizes() == dy_in.sizes(),
                "fastconv_C::conv2d_bwd: idx must be a uint8 tensor of dy's shape on x's device");
  }
  c10::cuda::CUDAGuard guard(x.device());
  const auto fmt = memory_format_of(x);
  at::Tensor dx = mask[0] ? at::empty(x.sizes(), x.options().memory_format(fmt)) : at::Tensor();
  at::Tensor dw = mask[1] ? at::empty(w.sizes(), w.options()) : at::Tensor();
  at::Tensor db = mask[2] ? at::empty({g.K}, w.options()) : at::Tensor();
  if (dy_in.numel() == 0) {
    if (mask[0]) dx.zero_();
    if (mask[1]) dw.zero_();
    if (mask[2]) db.zero_();
    return {dx, dw, db};
  }
  // dy, y and idx share one memory format, so one set of strides addresses all three
  const auto dfmt = dy_in.suggest_memory_format();
  const at::Tensor dy = dy_in.contiguous(dfmt);
  const at::Tensor yv = relu ? y_in.contiguous(dfmt) : at::Tensor();
  const at::Tensor iv = pool > 1 ? idx_in.contiguous(dfmt) : at::Tensor();
  const at::Tensor xc = x.contiguous(fmt);
  if (mask[0] && dx.numel() > 0) conv2d_dgrad(g, dy, yv, iv, w, dx);
  const bool need_dw = mask[1] && dw.numel() > 0;
  if (need_dw || mask[2]) conv2d_wgrad(g, xc, dy, yv, iv, need_dw, mask[2], dw, db);
  return {dx, dw, db};
}

}  // namespace cuda
}  // namespace fastconv
