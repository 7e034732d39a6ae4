// fastconv_C::conv2d_fwd / conv2d_bwd on CPU: the fused conv + bias + relu + max-pool
// (docs/design.md §2.1, §2.2), checks and the choice of core.
//
// Two cores, chosen by conv_path() per call:
//   * small-C (conv2d_smallc.cpp): short reductions, the conv, the pooled epilogue and, in
//     the backward, the unpool prologue, dgrad and wgrad in one kernel each way;
//   * aten (conv2d_aten.cpp): ATen's convolution for the GEMM core with one fused pass
//     around it each way.
// All tensors keep x's memory format; dw is contiguous.

#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "conv2d.h"
#include "../ops.h"

namespace fastconv {
namespace cpu {

namespace {
// The core the calling thread asked for (set_conv_core), 0 = none: read by conv_path() on the
// thread that enters conv2d_fwd / conv2d_bwd, before any parallel region.
thread_local int64_t tl_core = 0;
}  // namespace

int64_t set_conv_core(int64_t core) {
  TORCH_CHECK(core >= 0 && core <= 2, "fastconv cpu_conv_core: core must be 0 (the rule), 1 (smallc) or 2 (aten), got ",
              core);
  const int64_t was = tl_core;
  tl_core = core;
  return was;
}

ConvPath conv_path(const ConvGeom& g) {
  const char* env = std::getenv("FASTCONV_CPU_CONV");
  const std::string want = env ? env : "";
  if (want == "smallc") return ConvPath::kSmallC;
  if (want == "aten") return ConvPath::kAten;
  TORCH_CHECK(want.empty() || want == "auto", "FASTCONV_CPU_CONV must be auto, smallc or aten, got '", want, "'");
  if (tl_core == 1) return ConvPath::kSmallC;
  if (tl_core == 2) return ConvPath::kAten;
  return g.CG * g.R * g.S <= 32 ? ConvPath::kSmallC : ConvPath::kAten;
}

namespace {

void check_operands(const char* op, const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "fastconv cpu ", op, ": x and w must be CPU tensors");
  TORCH_CHECK(w.scalar_type() == x.scalar_type(), "fastconv cpu ", op, ": w dtype ", w.scalar_type(),
              " differs from x dtype ", x.scalar_type());
  if (b.has_value()) {
    TORCH_CHECK(b->device().is_cpu() && b->scalar_type() == x.scalar_type(), "fastconv cpu ", op,
                ": b must be a CPU tensor of x's dtype");
    TORCH_CHECK(b->dim() == 1 && b->size(0) == w.size(0), "fastconv cpu ", op, ": b must be [K] = [",
                w.size(0), "], got ", b->sizes());
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> conv2d_fwd(const at::Tensor& x_in, const at::Tensor& w,
                                              const std::optional<at::Tensor>& b, at::IntArrayRef stride,
                                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                              bool relu, int64_t pool) {
  check_operands("conv2d_fwd", x_in, w, b);
  const ConvGeom g = conv_geom(x_in, w, stride, padding, dilation, groups, relu, pool);
  const at::MemoryFormat fmt = memory_format_of(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  at::Tensor y = at::empty({g.N, g.K, g.PO, g.QO}, x.options().memory_format(fmt));
  at::Tensor idx = pool > 1 ? at::empty({g.N, g.K, g.PO, g.QO}, x.options().dtype(at::kByte).memory_format(fmt))
                            : at::empty({0}, x.options().dtype(at::kByte));
  if (g.N == 0) return {y, idx};
  if (conv_path(g) == ConvPath::kSmallC) {
    conv2d_smallc_fwd(x, w, b, g, y, idx);
  } else {
    conv2d_aten_fwd(x, w, b, stride, padding, dilation, g, y, idx);
  }
  return {y, idx};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_bwd(const at::Tensor& dy_in, const at::Tensor& x_in,
                                                          const at::Tensor& w, const at::Tensor& y_in,
                                                          const at::Tensor& idx_in, at::IntArrayRef stride,
                                                          at::IntArrayRef padding, at::IntArrayRef dilation,
                                                          int64_t groups, bool relu, int64_t pool,
                                                          std::array<bool, 3> mask) {
  check_operands("conv2d_bwd", x_in, w, std::nullopt);
  const ConvGeom g = conv_geom(x_in, w, stride, padding, dilation, groups, relu, pool);
  const std::vector<int64_t> out_shape{g.N, g.K, g.PO, g.QO};
  TORCH_CHECK(dy_in.sizes() == at::IntArrayRef(out_shape) && dy_in.scalar_type() == x_in.scalar_type(),
              "fastconv cpu conv2d_bwd: dy must be ", at::IntArrayRef(out_shape), " of x's dtype, got ",
              dy_in.sizes(), " ", dy_in.scalar_type());
  TORCH_CHECK(!relu || (y_in.sizes() == dy_in.sizes() && y_in.scalar_type() == dy_in.scalar_type()),
              "fastconv cpu conv2d_bwd: with relu, y must be the forward output ", dy_in.sizes());
  TORCH_CHECK(pool == 1 || (idx_in.sizes() == dy_in.sizes() && idx_in.scalar_type() == at::kByte),
              "fastconv cpu conv2d_bwd: with pool, idx must be uint8 ", dy_in.sizes());
  const at::MemoryFormat fmt = memory_format_of(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor dy = dy_in.contiguous(fmt);
  const at::Tensor y = relu ? y_in.contiguous(fmt) : y_in;
  const at::Tensor idx = pool > 1 ? idx_in.contiguous(fmt) : idx_in;
  at::Tensor dx = mask[0] ? at::empty_like(x, x.options().memory_format(fmt)) : at::empty({0}, x.options());
  at::Tensor dw = mask[1] ? at::empty(w.sizes(), w.options().memory_format(at::MemoryFormat::Contiguous))
                          : at::empty({0}, w.options());
  at::Tensor db = mask[2] ? at::empty({g.K}, w.options()) : at::empty({0}, w.options());
  if (g.N == 0) {
    dx.zero_();
    dw.zero_();
    db.zero_();
    return {dx, dw, db};
  }
  if (conv_path(g) == ConvPath::kSmallC) {
    conv2d_smallc_bwd(dy, x, w, y, idx, g, mask[0], mask[1], mask[2], dx, dw, db);
  } else {
    conv2d_aten_bwd(dy, x, w, y, idx, stride, padding, dilation, g, mask[0], mask[1], mask[2], dx, dw, db);
  }
  return {dx, dw, db};
}

}  // namespace cpu
}  // namespace fastconv
