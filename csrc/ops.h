// The kernel entry points of every op, declared once for each device
// (fastconv::cpu in csrc/cpu, fastconv::cuda in csrc/cuda), and the one list
// that registers a device's entry points for the schemas of csrc/fastconv.cpp.
// Each entry point checks its arguments and allocates its outputs; the math is
// docs/design.md §2.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <tuple>

#define FASTCONV_OP_ENTRY_POINTS                                                                              \
  std::tuple<at::Tensor, at::Tensor> conv2d_fwd(const at::Tensor& x, const at::Tensor& w,                     \
                                                const std::optional<at::Tensor>& b, at::IntArrayRef stride,    \
                                                at::IntArrayRef padding, at::IntArrayRef dilation,            \
                                                int64_t groups, bool relu, int64_t pool);                     \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_bwd(                                                  \
      const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w, const at::Tensor& y,                    \
      const at::Tensor& idx, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,       \
      int64_t groups, bool relu, int64_t pool, std::array<bool, 3> mask);                                     \
  at::Tensor relu_fwd(const at::Tensor& x);                                                                   \
  at::Tensor relu_bwd(const at::Tensor& dy, const at::Tensor& y);                                             \
  std::tuple<at::Tensor, at::Tensor> max_pool2d_fwd(const at::Tensor& x, at::IntArrayRef kernel,              \
                                                    at::IntArrayRef stride, at::IntArrayRef padding,          \
                                                    at::IntArrayRef dilation, bool ceil_mode);                \
  at::Tensor max_pool2d_bwd(const at::Tensor& dy, const at::Tensor& idx, at::IntArrayRef input_hw,            \
                            at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,          \
                            at::IntArrayRef dilation, bool ceil_mode);

namespace fastconv {
namespace cpu {
FASTCONV_OP_ENTRY_POINTS
}  // namespace cpu
namespace cuda {
FASTCONV_OP_ENTRY_POINTS
}  // namespace cuda
}  // namespace fastconv

// Inside TORCH_LIBRARY_IMPL(fastconv_C, <key>, m): every op of namespace fastconv::NS.
#define FASTCONV_IMPL_ALL(m, NS)                              \
  m.impl("conv2d_fwd", &fastconv::NS::conv2d_fwd);            \
  m.impl("conv2d_bwd", &fastconv::NS::conv2d_bwd);            \
  m.impl("relu_fwd", &fastconv::NS::relu_fwd);                \
  m.impl("relu_bwd", &fastconv::NS::relu_bwd);                \
  m.impl("max_pool2d_fwd", &fastconv::NS::max_pool2d_fwd);    \
  m.impl("max_pool2d_bwd", &fastconv::NS::max_pool2d_bwd)
