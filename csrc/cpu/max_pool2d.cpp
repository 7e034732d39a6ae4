// General 2-D max-pool on CPU, like torch.nn.functional.max_pool2d
// (kernel, stride, padding, dilation, ceil_mode; windows may overlap).
//
//   y[n,c,oh,ow]   = max x[n,c,ih,iw] over ih = oh*sh - ph + i*dh, iw = ow*sw - pw + j*dw,
//                    i < kh, j < kw, (ih, iw) inside the input
//   idx[n,c,oh,ow] = ih*W + iw of that max, int32. The window is scanned in
//                    row-major order and a value replaces the running max when
//                    it is larger or NaN: ties -> first, NaN wins (PyTorch's rule).
//   dx[n,c,h,w]    = sum of dy[n,c,oh,ow] over the windows with idx == h*W + w
//
// x / dy / idx arrive contiguous in NCHW or channels_last (NHWC in memory);
// outputs keep that format. NCHW kernels run output rows (forward: the per-ISA
// row kernel of max_pool2d_kernel.h, vectorized over the row) or one (n, c) plane
// (backward) per task; NHWC kernels run one output pixel (forward) or one (n, channel
// block) (backward) per task with channels innermost. The backward of half and
// bfloat16 sums in float.

#include <atomic>
#include <vector>

#include "common.h"
#include "cpu_kernel.h"
#include "../ops.h"

namespace fastconv {
namespace cpu {
namespace {

constexpr int64_t kChannelBlock = 64;

}  // namespace

#define FASTCONV_ISA_KERNELS "max_pool2d_kernel.h"
#include "isa_each.h"

namespace {

// First valid tap and end of a window along one axis: [start, end) stepping by d.
struct Span {
  int64_t start, end;
};

FASTCONV_INLINE Span window_span(int64_t o, int64_t s, int64_t p, int64_t k, int64_t d, int64_t size) {
  int64_t i0 = o * s - p;
  const int64_t end = std::min(i0 + (k - 1) * d + 1, size);
  while (i0 < 0) i0 += d;
  return {i0, end};
}

template <typename scalar_t>
using PoolRowFn = void (*)(const scalar_t*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                           int64_t, scalar_t*, int32_t*);

template <typename scalar_t>
void pool_fwd_nchw(const PoolGeom& g, const scalar_t* x, scalar_t* y, int32_t* idx) {
  const PoolRowFn<scalar_t> row_fn = g.sw == 1   ? FASTCONV_ISA_PICK(pool_fwd_row<scalar_t, 1>)
                                     : g.sw == 2 ? FASTCONV_ISA_PICK(pool_fwd_row<scalar_t, 2>)
                                                 : FASTCONV_ISA_PICK(pool_fwd_row<scalar_t, 0>);
  const int64_t rows = g.N * g.C * g.OH;
  at::parallel_for(0, rows, grain_for(g.OW * g.kh * g.kw), [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; ++row) {
      const int64_t plane = row / g.OH, oh = row % g.OH;
      const Span h = window_span(oh, g.sh, g.ph, g.kh, g.dh, g.H);
      row_fn(x + plane * g.H * g.W, g.W, h.start, h.end, g.dh, g.sw, g.pw, g.kw, g.dw, g.OW, y + row * g.OW,
             idx + row * g.OW);
    }
  });
}

template <typename scalar_t>
void pool_fwd_nhwc(const PoolGeom& g, const scalar_t* x, scalar_t* y, int32_t* idx) {
  using acc = acc_t<scalar_t>;
  const int64_t pixels = g.N * g.OH * g.OW;
  at::parallel_for(0, pixels, grain_for(g.C * g.kh * g.kw),
                   [&](int64_t b, int64_t e) {
    acc m[kChannelBlock];
    int32_t mi[kChannelBlock];
    for (int64_t pix = b; pix < e; ++pix) {
      const int64_t n = pix / (g.OH * g.OW), oh = pix / g.OW % g.OH, ow = pix % g.OW;
      const Span h = window_span(oh, g.sh, g.ph, g.kh, g.dh, g.H);
      const Span w = window_span(ow, g.sw, g.pw, g.kw, g.dw, g.W);
      for (int64_t c0 = 0; c0 < g.C; c0 += kChannelBlock) {
        const int64_t cn = std::min(kChannelBlock, g.C - c0);
        const int32_t first = static_cast<int32_t>(h.start * g.W + w.start);
        for (int64_t c = 0; c < cn; ++c) {
          m[c] = -std::numeric_limits<acc>::infinity();
          mi[c] = first;
        }
        for (int64_t ih = h.start; ih < h.end; ih += g.dh) {
          for (int64_t iw = w.start; iw < w.end; iw += g.dw) {
            const scalar_t* xr = x + ((n * g.H + ih) * g.W + iw) * g.C + c0;
            const int32_t here = static_cast<int32_t>(ih * g.W + iw);
            for (int64_t c = 0; c < cn; ++c) {
              const acc v = xr[c];
              const bool take = beats(v, m[c]);
              m[c] = take ? v : m[c];
              mi[c] = take ? here : mi[c];
            }
          }
        }
        scalar_t* yr = y + pix * g.C + c0;
        int32_t* ir = idx + pix * g.C + c0;
        for (int64_t c = 0; c < cn; ++c) {
          yr[c] = static_cast<scalar_t>(m[c]);
          ir[c] = mi[c];
        }
      }
    }
  });
}

// dx = scatter-add of dy at idx. Every task owns a disjoint part of dx.
template <typename scalar_t>
void pool_bwd_nchw(const PoolGeom& g, const scalar_t* dy, const int32_t* idx, scalar_t* dx,
                   std::atomic<bool>& bad) {
  using acc = acc_t<scalar_t>;
  const int64_t HW = g.H * g.W, OHW = g.OH * g.OW;
  at::parallel_for(0, g.N * g.C, grain_for(HW + OHW), [&](int64_t b, int64_t e) {
    constexpr bool kDirect = std::is_same<acc, scalar_t>::value;  // sum straight into dx
    std::vector<acc> sum(kDirect ? 0 : HW);
    for (int64_t plane = b; plane < e; ++plane) {
      scalar_t* out = dx + plane * HW;
      acc* s;
      if constexpr (kDirect) {
        s = out;
      } else {
        s = sum.data();
      }
      std::fill(s, s + HW, acc(0));
      const scalar_t* gp = dy + plane * OHW;
      const int32_t* ip = idx + plane * OHW;
      for (int64_t o = 0; o < OHW; ++o) {
        const int64_t i = ip[o];
        if (i < 0 || i >= HW) {
          bad = true;
          continue;
        }
        s[i] += static_cast<acc>(gp[o]);
      }
      if constexpr (!kDirect) {
        for (int64_t i = 0; i < HW; ++i) out[i] = static_cast<scalar_t>(s[i]);
      }
    }
  });
}

template <typename scalar_t>
void pool_bwd_nhwc(const PoolGeom& g, const scalar_t* dy, const int32_t* idx, scalar_t* dx,
                   std::atomic<bool>& bad) {
  using acc = acc_t<scalar_t>;
  const int64_t HW = g.H * g.W, OHW = g.OH * g.OW;
  const int64_t blocks = (g.C + kChannelBlock - 1) / kChannelBlock;
  at::parallel_for(0, g.N * blocks, grain_for((HW + OHW) * kChannelBlock), [&](int64_t b, int64_t e) {
    std::vector<acc> sum(HW * kChannelBlock);
    for (int64_t task = b; task < e; ++task) {
      const int64_t n = task / blocks, c0 = task % blocks * kChannelBlock;
      const int64_t cn = std::min(kChannelBlock, g.C - c0);
      std::fill(sum.begin(), sum.begin() + HW * cn, acc(0));
      for (int64_t o = 0; o < OHW; ++o) {
        const scalar_t* gr = dy + (n * OHW + o) * g.C + c0;
        const int32_t* ir = idx + (n * OHW + o) * g.C + c0;
        for (int64_t c = 0; c < cn; ++c) {
          const int64_t i = ir[c];
          if (i < 0 || i >= HW) {
            bad = true;
            continue;
          }
          sum[i * cn + c] += static_cast<acc>(gr[c]);
        }
      }
      for (int64_t i = 0; i < HW; ++i) {
        scalar_t* out = dx + (n * HW + i) * g.C + c0;
        for (int64_t c = 0; c < cn; ++c) out[c] = static_cast<scalar_t>(sum[i * cn + c]);
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> max_pool2d_fwd(const at::Tensor& x_in, at::IntArrayRef kernel,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation, bool ceil_mode) {
  TORCH_CHECK(x_in.device().is_cpu(), "fastconv cpu max_pool2d_fwd: x must be a CPU tensor");
  const PoolGeom g = pool_geom(x_in.sizes(), kernel, stride, padding, dilation, ceil_mode);
  TORCH_CHECK(g.H * g.W <= std::numeric_limits<int32_t>::max(),
              "fastconv cpu max_pool2d_fwd: H*W must fit the int32 index, got ", g.H * g.W);
  const at::MemoryFormat fmt = memory_format_of(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  at::Tensor y = at::empty({g.N, g.C, g.OH, g.OW}, x.options().memory_format(fmt));
  at::Tensor idx = at::empty({g.N, g.C, g.OH, g.OW}, x.options().dtype(at::kInt).memory_format(fmt));
  if (y.numel() == 0) return {y, idx};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_max_pool2d_fwd", [&] {
    if (fmt == at::MemoryFormat::ChannelsLast) {
      pool_fwd_nhwc<scalar_t>(g, x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                              idx.mutable_data_ptr<int32_t>());
    } else {
      pool_fwd_nchw<scalar_t>(g, x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                              idx.mutable_data_ptr<int32_t>());
    }
  });
  return {y, idx};
}

at::Tensor max_pool2d_bwd(const at::Tensor& dy_in, const at::Tensor& idx_in, at::IntArrayRef input_hw,
                          at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation, bool ceil_mode) {
  TORCH_CHECK(dy_in.device().is_cpu() && idx_in.device().is_cpu(),
              "fastconv cpu max_pool2d_bwd: dy and idx must be CPU tensors");
  TORCH_CHECK(idx_in.scalar_type() == at::kInt, "fastconv cpu max_pool2d_bwd: idx must be int32, got ",
              idx_in.scalar_type());
  TORCH_CHECK(dy_in.dim() == 4 && dy_in.sizes() == idx_in.sizes(),
              "fastconv cpu max_pool2d_bwd: dy ", dy_in.sizes(), " and idx ", idx_in.sizes(),
              " must be 4-D of the same shape");
  TORCH_CHECK(input_hw.size() == 2, "fastconv cpu max_pool2d_bwd: input_hw needs 2 values");
  const PoolGeom g = pool_geom({dy_in.size(0), dy_in.size(1), input_hw[0], input_hw[1]}, kernel, stride,
                               padding, dilation, ceil_mode);
  TORCH_CHECK(g.OH == dy_in.size(2) && g.OW == dy_in.size(3), "fastconv cpu max_pool2d_bwd: dy is ",
              dy_in.sizes(), " but the pool of a ", input_hw, " input gives ", g.OH, "x", g.OW);
  const at::MemoryFormat fmt = memory_format_of(idx_in);
  const at::Tensor dy = dy_in.contiguous(fmt);
  const at::Tensor idx = idx_in.contiguous(fmt);
  at::Tensor dx = at::empty({g.N, g.C, g.H, g.W}, dy.options().memory_format(fmt));
  if (dx.numel() == 0) return dx;
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "fastconv_max_pool2d_bwd", [&] {
    if (fmt == at::MemoryFormat::ChannelsLast) {
      pool_bwd_nhwc<scalar_t>(g, dy.const_data_ptr<scalar_t>(), idx.const_data_ptr<int32_t>(),
                              dx.mutable_data_ptr<scalar_t>(), bad);
    } else {
      pool_bwd_nchw<scalar_t>(g, dy.const_data_ptr<scalar_t>(), idx.const_data_ptr<int32_t>(),
                              dx.mutable_data_ptr<scalar_t>(), bad);
    }
  });
  TORCH_CHECK(!bad, "fastconv cpu max_pool2d_bwd: idx holds positions outside the ", g.H, "x", g.W,
              " input plane (it must come from max_pool2d_fwd)");
  return dx;
}

}  // namespace cpu
}  // namespace fastconv
