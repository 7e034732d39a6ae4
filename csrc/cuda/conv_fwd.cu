// fastconv_C::conv2d_fwd on CUDA: the fused conv + bias + relu + max-pool.
//
//   y   [N, K, PO, QO] = pool_k(act(conv2d(x, w) + b)), in x's memory format
//   idx [N, K, PO, QO] uint8 window index di*k + dj of each max (empty when pool == 1)
//
// One launch of the tiled direct convolution (conv_direct.cuh) with x as its
// source: the full-resolution conv output never leaves the registers.
#include <torch/library.h>

#include <optional>

#include "../common.h"
#include "conv_direct.cuh"

namespace fastconv {
namespace cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> conv2d_fwd_cuda(const at::Tensor& x, const at::Tensor& w,
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
  for (int64_t v : {g.C, g.H, g.W, g.K, g.R, g.S, g.P, g.Q, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, g.groups})
    check_int_range(v, "a conv size");
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

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv2d_fwd_cuda", [&] {
    using T = scalar_t;
    DirectArgs<T, TensorSource<T>> a{};
    a.src = TensorSource<T>{x.const_data_ptr<T>(), x.stride(0), x.stride(1), x.stride(2), x.stride(3),
                            int(g.H), int(g.W)};
    a.w = wc.const_data_ptr<T>();
    a.bias = has_bias ? bc.const_data_ptr<T>() : nullptr;
    a.y = y.mutable_data_ptr<T>();
    a.idx = pool > 1 ? idx.mutable_data_ptr<uint8_t>() : nullptr;
    a.ysN = y.stride(0);
    a.ysK = y.stride(1);
    a.ysH = y.stride(2);
    a.ysW = y.stride(3);
    a.K = int(g.K);
    a.KG = int(g.KG);
    a.CG = int(g.CG);
    a.R = int(g.R);
    a.S = int(g.S);
    a.P = int(g.P);
    a.Q = int(g.Q);
    a.PO = int(g.PO);
    a.QO = int(g.QO);
    a.sh = int(g.sh);
    a.sw = int(g.sw);
    a.dh = int(g.dh);
    a.dw = int(g.dw);
    a.pt = int(g.pt);
    a.pl = int(g.pl);
    a.pool = int(pool);
    a.relu = relu;
    a.src_cl = g.C > 1 && x.stride(1) == 1;

    const DirectShape s = direct_shape(a, g.N, int(g.groups), channels_vec_ok(x));
    launch_direct(a, plan_direct(s), s, stream);
  });
  return {y, idx};
}

}  // namespace
}  // namespace cuda
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv_C, CUDA, m) {
  m.impl("conv2d_fwd", &fastconv::cuda::conv2d_fwd_cuda);
}
