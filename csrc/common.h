// Shared by csrc/cpu and csrc/cuda: the geometry of one fastconv call and the
// checks every kernel entry runs. Argument checks that users see (with names
// and expected values) live in fastconv/_args.py; these TORCH_CHECKs are the
// last line of defence for direct torch.ops.fastconv_C calls.
#pragma once

#include <ATen/ATen.h>

namespace fastconv {

// Conv geometry. Layout-independent: kernels read strides/format themselves.
//   x [N, C, H, W], w [K, C/groups, R, S], conv output [N, K, P, Q],
//   pooled output [N, K, PO, QO] with PO = P / pool, QO = Q / pool (floor).
// padding is (top, left, bottom, right); kernels only need top/left, the
// bottom/right pads only change P and Q.
struct ConvGeom {
  int64_t N, C, H, W;          // input
  int64_t K, CG, R, S;         // weight; CG = C / groups
  int64_t P, Q;                // conv output
  int64_t PO, QO;              // stored output (== P, Q when pool == 1)
  int64_t sh, sw, pt, pl, dh, dw;
  int64_t groups, KG;          // KG = K / groups
  bool relu;
  int64_t pool;
};

inline ConvGeom conv_geom(const at::Tensor& x, const at::Tensor& w,
                          at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation, int64_t groups, bool relu,
                          int64_t pool) {
  TORCH_CHECK(x.dim() == 4, "fastconv: x must be 4-D [N, C, H, W], got ", x.dim(), "-D");
  TORCH_CHECK(w.dim() == 4, "fastconv: w must be 4-D [K, C/groups, R, S], got ", w.dim(), "-D");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 4 && dilation.size() == 2,
              "fastconv: stride/dilation need 2 values and padding 4 (top, left, bottom, right)");
  TORCH_CHECK(groups >= 1, "fastconv: groups must be >= 1");
  TORCH_CHECK(pool >= 1 && pool <= 16, "fastconv: pool must be in 1..16, got ", pool);
  ConvGeom g;
  g.N = x.size(0); g.C = x.size(1); g.H = x.size(2); g.W = x.size(3);
  g.K = w.size(0); g.CG = w.size(1); g.R = w.size(2); g.S = w.size(3);
  g.sh = stride[0]; g.sw = stride[1];
  g.pt = padding[0]; g.pl = padding[1];
  g.dh = dilation[0]; g.dw = dilation[1];
  g.groups = groups; g.relu = relu; g.pool = pool;
  TORCH_CHECK(g.CG * groups == g.C, "fastconv: w.size(1) * groups must equal C");
  TORCH_CHECK(g.K % groups == 0, "fastconv: K must be divisible by groups");
  TORCH_CHECK(g.sh > 0 && g.sw > 0 && g.dh > 0 && g.dw > 0, "fastconv: stride and dilation must be > 0");
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0 && padding[2] >= 0 && padding[3] >= 0,
              "fastconv: padding must be >= 0");
  g.KG = g.K / groups;
  g.P = (g.H + padding[0] + padding[2] - g.dh * (g.R - 1) - 1) / g.sh + 1;
  g.Q = (g.W + padding[1] + padding[3] - g.dw * (g.S - 1) - 1) / g.sw + 1;
  TORCH_CHECK(g.P >= 1 && g.Q >= 1, "fastconv: kernel larger than padded input");
  g.PO = g.P / pool;
  g.QO = g.Q / pool;
  TORCH_CHECK(g.PO >= 1 && g.QO >= 1, "fastconv: pool larger than conv output");
  return g;
}

// General max-pool geometry (PyTorch's output-size rule, incl. ceil_mode).
struct PoolGeom {
  int64_t N, C, H, W, OH, OW;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

inline int64_t pool_out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode) {
  int64_t span = in + 2 * p - d * (k - 1) - 1;
  int64_t out = (ceil_mode ? (span + s - 1) / s : span / s) + 1;
  // the last window must start inside the input or the left padding
  if (ceil_mode && (out - 1) * s >= in + p) --out;
  return out;
}

inline PoolGeom pool_geom(at::IntArrayRef sizes, at::IntArrayRef kernel, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  TORCH_CHECK(sizes.size() == 4, "fastconv: max_pool2d input must be 4-D");
  TORCH_CHECK(kernel.size() == 2 && stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "fastconv: max_pool2d kernel/stride/padding/dilation need 2 values each");
  PoolGeom g;
  g.N = sizes[0]; g.C = sizes[1]; g.H = sizes[2]; g.W = sizes[3];
  g.kh = kernel[0]; g.kw = kernel[1]; g.sh = stride[0]; g.sw = stride[1];
  g.ph = padding[0]; g.pw = padding[1]; g.dh = dilation[0]; g.dw = dilation[1];
  TORCH_CHECK(g.kh > 0 && g.kw > 0 && g.sh > 0 && g.sw > 0 && g.dh > 0 && g.dw > 0,
              "fastconv: max_pool2d kernel, stride and dilation must be > 0");
  TORCH_CHECK(g.ph >= 0 && g.pw >= 0 && 2 * g.ph <= g.kh && 2 * g.pw <= g.kw,
              "fastconv: max_pool2d padding must be in [0, kernel/2]");
  g.OH = pool_out_size(g.H, g.kh, g.sh, g.ph, g.dh, ceil_mode);
  g.OW = pool_out_size(g.W, g.kw, g.sw, g.pw, g.dw, ceil_mode);
  TORCH_CHECK(g.OH >= 1 && g.OW >= 1, "fastconv: max_pool2d output would be empty");
  return g;
}

// Memory format that outputs keep: the rule of fastconv/_layout.py, so that the
// real kernels and the fake (shape-only) kernels agree on strides.
inline at::MemoryFormat memory_format_of(const at::Tensor& x) {
  if (x.dim() != 4 || x.is_contiguous()) return at::MemoryFormat::Contiguous;
  if (x.is_contiguous(at::MemoryFormat::ChannelsLast)) return at::MemoryFormat::ChannelsLast;
  return x.stride(1) < x.stride(3) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

}  // namespace fastconv
