// Fused conv2d (+ bias)(+ relu)(+ k x k / stride-k max-pool) on CPU: the
// fastconv_C entry points and the ATen-core path.
//
//   forward   y   = pool_k(act(conv2d(x, w) + b))          [N, K, PO, QO]
//             idx = di*k + dj of each window max (uint8), taken on the
//                   accumulator before bias and relu; ties -> first, NaN wins
//   backward  dC[n,k,k*i+di,k*j+dj] = dy[n,k,i,j] * (idx == di*k+dj) * (!relu || y > 0)
//             dx, dw = conv backward of dC;  db = sum dC
//
// Two cores, chosen by conv_path():
//   * direct (conv_direct.cpp): short reductions, everything in one kernel;
//   * aten (here): at::convolution (oneDNN) without bias into a temporary
//     c [N, K, P, Q], then ONE parallel pass pools c (max + idx), adds the
//     bias and applies relu on the pooled values only. The backward builds dC
//     and db in ONE parallel pass from (dy, y, idx) and hands dC to
//     at::convolution_backward for dx and dw. Asymmetric padding ('same' with
//     an even kernel) pads x explicitly and crops dx.
// Half and bfloat16 compute in float on both paths (x, w converted once), so
// the window max is taken on a float accumulator and ties are not created by
// rounding. All tensors keep x's memory format; dw is contiguous.
#include <torch/library.h>

#include <optional>
#include <string>
#include <vector>

#include "conv_cpu.h"
#include "cpu_kernel.h"

namespace fastconv {
namespace cpu {

ConvPath conv_path(const ConvGeom& g) {
  const char* env = std::getenv("FASTCONV_CPU_CONV");
  const std::string want = env ? env : "";
  if (want == "direct") return ConvPath::kDirect;
  if (want == "aten") return ConvPath::kAten;
  TORCH_CHECK(want.empty() || want == "auto", "FASTCONV_CPU_CONV must be auto, direct or aten, got '", want, "'");
  return g.CG * g.R * g.S <= 32 ? ConvPath::kDirect : ConvPath::kAten;
}

namespace {

constexpr int64_t kChannelBlock = 64;

bool symmetric(at::IntArrayRef padding) { return padding[0] == padding[2] && padding[1] == padding[3]; }

at::ScalarType compute_type(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

// x in the compute type, explicitly padded when the padding is asymmetric;
// (padded x, the symmetric padding left for aten).
std::pair<at::Tensor, std::vector<int64_t>> aten_input(const at::Tensor& x, at::IntArrayRef padding,
                                                       at::MemoryFormat fmt) {
  at::Tensor xc = x.to(compute_type(x.scalar_type()));
  if (symmetric(padding)) return {xc, {padding[0], padding[1]}};
  xc = at::constant_pad_nd(xc, {padding[1], padding[3], padding[0], padding[2]}, 0).contiguous(fmt);
  return {xc, {0, 0}};
}

// ---------------------------------------------------------------- forward epilogue

// y[n,k,po,qo] = act(max_{di,dj} c[n,k,po*p+di,qo*p+dj] + b[k]), idx = argmax (p = pool).
template <typename scalar_t, typename T>
void epilogue_nchw(const ConvGeom& g, const T* c, const T* bias, scalar_t* y, uint8_t* idx) {
  const int64_t p = g.pool, P = g.P, Q = g.Q, PO = g.PO, QO = g.QO;
  at::parallel_for(0, g.N * g.K * PO, std::max<int64_t>(1, 8192 / (QO * p * p)), [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {
      const int64_t plane = row / PO, po = row % PO;
      const T bk = bias ? bias[plane % g.K] : T(0);
      const T* cw = c + plane * P * Q + po * p * Q;
      scalar_t* yr = y + row * QO;
      uint8_t* ir = idx ? idx + row * QO : nullptr;
      for (int64_t qo = 0; qo < QO; ++qo) {
        const T* w0 = cw + qo * p;
        T m = w0[0];
        int64_t mi = 0;
        for (int64_t di = 0; di < p; ++di)
          for (int64_t dj = 0; dj < p; ++dj) {
            const T v = w0[di * Q + dj];
            if (beats(v, m)) {
              m = v;
              mi = di * p + dj;
            }
          }
        T out = m + bk;
        if (g.relu && out < T(0)) out = T(0);
        yr[qo] = static_cast<scalar_t>(out);
        if (ir) ir[qo] = static_cast<uint8_t>(mi);
      }
    }
  });
}

template <typename scalar_t, typename T>
void epilogue_nhwc(const ConvGeom& g, const T* c, const T* bias, scalar_t* y, uint8_t* idx) {
  const int64_t p = g.pool, K = g.K, P = g.P, Q = g.Q, PO = g.PO, QO = g.QO;
  at::parallel_for(0, g.N * PO * QO, std::max<int64_t>(1, 8192 / (K * p * p)), [&](int64_t o0, int64_t o1) {
    T m[kChannelBlock];
    uint8_t mi[kChannelBlock];
    for (int64_t o = o0; o < o1; ++o) {
      const int64_t n = o / (PO * QO), po = o / QO % PO, qo = o % QO;
      const T* cw = c + ((n * P + po * p) * Q + qo * p) * K;
      for (int64_t k0 = 0; k0 < K; k0 += kChannelBlock) {
        const int64_t kn = std::min(kChannelBlock, K - k0);
        for (int64_t k = 0; k < kn; ++k) {
          m[k] = cw[k0 + k];
          mi[k] = 0;
        }
        for (int64_t di = 0; di < p; ++di)
          for (int64_t dj = 0; dj < p; ++dj) {
            const T* cr = cw + (di * Q + dj) * K + k0;
            const uint8_t here = static_cast<uint8_t>(di * p + dj);
            for (int64_t k = 0; k < kn; ++k) {
              const T v = cr[k];
              const bool take = beats(v, m[k]);
              m[k] = take ? v : m[k];
              mi[k] = take ? here : mi[k];
            }
          }
        scalar_t* yr = y + o * K + k0;
        for (int64_t k = 0; k < kn; ++k) {
          T out = m[k] + (bias ? bias[k0 + k] : T(0));
          if (g.relu && out < T(0)) out = T(0);
          yr[k] = static_cast<scalar_t>(out);
        }
        if (idx) std::copy(mi, mi + kn, idx + o * K + k0);
      }
    }
  });
}

void aten_conv_fwd(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                   at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, const ConvGeom& g,
                   at::MemoryFormat fmt, at::Tensor& y, at::Tensor& idx) {
  const at::ScalarType ct = compute_type(x.scalar_type());
  auto [xc, pad] = aten_input(x, padding, fmt);
  at::Tensor c = at::convolution(xc, w.to(ct), std::nullopt, stride, pad, dilation, false, {0, 0}, g.groups)
                     .contiguous(fmt);
  TORCH_CHECK(c.size(2) == g.P && c.size(3) == g.Q, "fastconv cpu conv2d_fwd: aten conv gave ", c.sizes());
  const at::Tensor bc = b.has_value() ? b->to(ct).contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv_epilogue", [&] {
    using T = acc_t<scalar_t>;
    const T* bp = bc.defined() ? bc.const_data_ptr<T>() : nullptr;
    uint8_t* ip = g.pool > 1 ? idx.mutable_data_ptr<uint8_t>() : nullptr;
    if (fmt == at::MemoryFormat::ChannelsLast) {
      epilogue_nhwc<scalar_t, T>(g, c.const_data_ptr<T>(), bp, y.mutable_data_ptr<scalar_t>(), ip);
    } else {
      epilogue_nchw<scalar_t, T>(g, c.const_data_ptr<T>(), bp, y.mutable_data_ptr<scalar_t>(), ip);
    }
  });
}

// ---------------------------------------------------------------- backward prologue

// dC [N, K, P, Q] in the compute type from (dy, y, idx), and db[k] = sum dC.
// NCHW: one task per channel k (all images), so db needs no partial sums.
template <typename scalar_t, typename T>
void build_dc_nchw(const ConvGeom& g, const scalar_t* dy, const scalar_t* y, const uint8_t* idx, T* dc, T* db) {
  const int64_t p = g.pool, P = g.P, Q = g.Q, PO = g.PO, QO = g.QO;
  at::parallel_for(0, g.K, 1, [&](int64_t k0, int64_t k1) {
    std::vector<T> grow(QO);
    std::vector<uint8_t> irow(QO);
    for (int64_t k = k0; k < k1; ++k) {
      T sum = 0;
      for (int64_t n = 0; n < g.N; ++n) {
        const int64_t plane = n * g.K + k;
        T* out = dc + plane * P * Q;
        for (int64_t po = 0; po < PO; ++po) {
          const int64_t o = (plane * PO + po) * QO;
          for (int64_t qo = 0; qo < QO; ++qo) {
            T gv = static_cast<T>(dy[o + qo]);
            if (y && !(static_cast<T>(y[o + qo]) > T(0))) gv = T(0);
            grow[qo] = gv;
            sum += gv;
            irow[qo] = idx ? idx[o + qo] : 0;
          }
          for (int64_t di = 0; di < p; ++di) {
            T* r = out + (po * p + di) * Q;
            for (int64_t qo = 0; qo < QO; ++qo)
              for (int64_t dj = 0; dj < p; ++dj)
                r[qo * p + dj] = irow[qo] == di * p + dj ? grow[qo] : T(0);
            std::fill(r + QO * p, r + Q, T(0));  // ragged right edge
          }
        }
        std::fill(out + PO * p * Q, out + P * Q, T(0));  // ragged bottom edge
      }
      db[k] = sum;
    }
  });
}

// NHWC: one task range per chunk of (n, po) rows; db from per-chunk partials.
template <typename scalar_t, typename T>
void build_dc_nhwc(const ConvGeom& g, const scalar_t* dy, const scalar_t* y, const uint8_t* idx, T* dc, T* db) {
  const int64_t p = g.pool, K = g.K, P = g.P, Q = g.Q, PO = g.PO, QO = g.QO;
  const int64_t rows = g.N * PO, chunks = num_chunks(rows);
  std::vector<T> part(chunks * K, T(0));
  parallel_chunks(rows, chunks, [&](int64_t ch, int64_t r0, int64_t r1) {
    T* sum = part.data() + ch * K;
    std::vector<T> gk(K);
    std::vector<uint8_t> ik(K);
    for (int64_t row = r0; row < r1; ++row) {
      const int64_t n = row / PO, po = row % PO;
      for (int64_t qo = 0; qo < QO; ++qo) {
        const int64_t o = ((n * PO + po) * QO + qo) * K;
        for (int64_t k = 0; k < K; ++k) {
          T gv = static_cast<T>(dy[o + k]);
          if (y && !(static_cast<T>(y[o + k]) > T(0))) gv = T(0);
          gk[k] = gv;
          sum[k] += gv;
          ik[k] = idx ? idx[o + k] : 0;
        }
        for (int64_t di = 0; di < p; ++di)
          for (int64_t dj = 0; dj < p; ++dj) {
            T* out = dc + ((n * P + po * p + di) * Q + qo * p + dj) * K;
            const uint8_t here = static_cast<uint8_t>(di * p + dj);
            for (int64_t k = 0; k < K; ++k) out[k] = ik[k] == here ? gk[k] : T(0);
          }
      }
      for (int64_t di = 0; di < p; ++di) {  // ragged right edge of these rows
        T* out = dc + ((n * P + po * p + di) * Q + QO * p) * K;
        std::fill(out, out + (Q - QO * p) * K, T(0));
      }
      if (po == PO - 1) {  // ragged bottom edge of image n
        T* out = dc + (n * P + PO * p) * Q * K;
        std::fill(out, out + (P - PO * p) * Q * K, T(0));
      }
    }
  });
  for (int64_t k = 0; k < K; ++k) {
    T s = 0;
    for (int64_t ch = 0; ch < chunks; ++ch) s += part[ch * K + k];
    db[k] = s;
  }
}

void aten_conv_bwd(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w, const at::Tensor& y,
                   const at::Tensor& idx, at::IntArrayRef stride, at::IntArrayRef padding,
                   at::IntArrayRef dilation, const ConvGeom& g, at::MemoryFormat fmt, bool need_dx,
                   bool need_dw, bool need_db, at::Tensor& dx, at::Tensor& dw, at::Tensor& db) {
  const at::ScalarType ct = compute_type(x.scalar_type());
  at::Tensor dc, dbc;
  if (g.pool == 1 && !g.relu && ct == x.scalar_type()) {
    dc = dy;  // dC is dy itself
    if (need_db) dbc = dy.sum({0, 2, 3});
  } else {
    dc = at::empty({g.N, g.K, g.P, g.Q}, dy.options().dtype(ct).memory_format(fmt));
    dbc = at::empty({g.K}, dy.options().dtype(ct));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv_unpool", [&] {
      using T = acc_t<scalar_t>;
      const scalar_t* yp = g.relu ? y.const_data_ptr<scalar_t>() : nullptr;
      const uint8_t* ip = g.pool > 1 ? idx.const_data_ptr<uint8_t>() : nullptr;
      if (fmt == at::MemoryFormat::ChannelsLast) {
        build_dc_nhwc<scalar_t, T>(g, dy.const_data_ptr<scalar_t>(), yp, ip, dc.mutable_data_ptr<T>(),
                                   dbc.mutable_data_ptr<T>());
      } else {
        build_dc_nchw<scalar_t, T>(g, dy.const_data_ptr<scalar_t>(), yp, ip, dc.mutable_data_ptr<T>(),
                                   dbc.mutable_data_ptr<T>());
      }
    });
  }
  if (need_db) db.copy_(dbc);
  if (!need_dx && !need_dw) return;
  auto [xc, pad] = aten_input(x, padding, fmt);
  auto grads = at::convolution_backward(dc, xc, w.to(ct), std::nullopt, stride, pad, dilation, false, {0, 0},
                                        g.groups, {need_dx, need_dw, false});
  if (need_dx) {
    at::Tensor d = std::get<0>(grads);
    if (!symmetric(padding)) d = d.slice(2, padding[0], padding[0] + g.H).slice(3, padding[1], padding[1] + g.W);
    dx.copy_(d);
  }
  if (need_dw) dw.copy_(std::get<1>(grads));
}

// ---------------------------------------------------------------- entry points

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

std::tuple<at::Tensor, at::Tensor> conv2d_fwd(const at::Tensor& x_in, const at::Tensor& w,
                                              const std::optional<at::Tensor>& b, at::IntArrayRef stride,
                                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                              bool relu, int64_t pool) {
  check_operands("conv2d_fwd", x_in, w, b);
  const ConvGeom g = conv_geom(x_in, w, stride, padding, dilation, groups, relu, pool);
  const at::MemoryFormat fmt = format_of(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  at::Tensor y = at::empty({g.N, g.K, g.PO, g.QO}, x.options().memory_format(fmt));
  at::Tensor idx = pool > 1 ? at::empty({g.N, g.K, g.PO, g.QO}, x.options().dtype(at::kByte).memory_format(fmt))
                            : at::empty({0}, x.options().dtype(at::kByte));
  if (g.N == 0) return {y, idx};
  if (conv_path(g) == ConvPath::kDirect) {
    direct_conv_fwd(x, w, b, g, y, idx);
  } else {
    aten_conv_fwd(x, w, b, stride, padding, dilation, g, fmt, y, idx);
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
  const at::MemoryFormat fmt = format_of(x_in);
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
  if (conv_path(g) == ConvPath::kDirect) {
    direct_conv_bwd(dy, x, w, y, idx, g, mask[0], mask[1], mask[2], dx, dw, db);
  } else {
    aten_conv_bwd(dy, x, w, y, idx, stride, padding, dilation, g, fmt, mask[0], mask[1], mask[2], dx, dw, db);
  }
  return {dx, dw, db};
}

}  // namespace
}  // namespace cpu
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv_C, CPU, m) {
  m.impl("conv2d_fwd", &fastconv::cpu::conv2d_fwd);
  m.impl("conv2d_bwd", &fastconv::cpu::conv2d_bwd);
}
