// The small-C direct fused convolution, for short reductions (C/groups * R * S small).
// Math: docs/design.md §2.1 (forward) and §2.2 (backward); below, this kernel's own layout.
//
// Forward, one task per output row (n, po), all channel blocks:
//
//   c[p, q, k]   = sum_t xp[n, p*sh + r*dh, q*sw + s*dw, ci] * w[k, ci, r, s]   t = (r, s, ci)
//   y[n,k,po,qo] = act(max_{di,dj < pool} c[po*pool+di, qo*pool+dj, k] + b[k])
//   idx          = di*pool + dj of that max (uint8; ties -> first, NaN wins)
//
//   x  ──pack──>  xp [N][Hp][Wp][Cp]   zero-padded, NHWC, compute type T
//   w  ──pack──>  wp [blk][tap][KB]    a block = KB output channels of one group
//
//   register tile: TP conv pixels x KB channels (KB = NV * 16 floats)
//   ┌ for tap t:  wv = wp[blk][t][0:KB]               (NV vector loads)
//   │   for pixel j < TP:  acc[j] += xp[pixel j + toff[t]] * wv   (broadcast, FMA)
//   └ acc -> row buffer c[npix][KB] -> pool max/idx, bias, relu -> y, idx
//
// Only the conv pixels inside the floor-mode pool windows are computed. In
// depthwise mode (groups == C == K) the lanes are channels instead: x is a
// vector load xp[pixel + toff[t] + k0 : +KB] and Cp is C rounded up to KB.
//
// Backward, one task per image n (so the dx scatter never races), per block
// and output row; the conv-output gradient is rebuilt in the kernel from the
// pooled gradient and the window index (the unpool prologue):
//
//   g[qo, k]       = dy[n,k,po,qo] * (!relu || y[n,k,po,qo] > 0)
//   dC[j, k]       = g[qo(j), k] * (idx[qo(j), k] == jj(j))       j = (qo, di, dj)
//   dw[k, t]      += sum_j xp[pixel j + toff[t]] * dC[j, k]        (per-task partial sums)
//   dxp[pixel j + toff[t]] += sum_k dC[j, k] * w[k, t]             (dense: vectorised over taps)
//   db[k]         += sum_qo g[qo, k]
//
// then dx = dxp cropped to the input. Conv outputs outside the windows (ragged
// edge) get no gradient. T is float for float/half/bfloat16 and double for
// double; all offsets are int64.
#include <vector>

#include "conv2d.h"
#include "cpu_kernel.h"

namespace fastconv {
namespace cpu {
namespace {

constexpr int64_t kDwTaps = 4;  // taps per register tile of the dw reduction

// Geometry of one small-C call: packing sizes and the split into channel blocks.
struct Plan {
  ConvGeom g;
  bool depthwise;  // lanes are channels (groups == C == K)
  int64_t L;       // lanes per vector of the compute type
  int64_t NV;      // vectors per block
  int64_t KB;      // lanes per block (NV * L)
  int64_t kblk;    // blocks per group (dense mode)
  int64_t nblk;    // blocks in all
  int64_t taps;    // CG*R*S (dense) or R*S (depthwise)
  int64_t taps_pad;  // taps rounded up to kDwTaps (toff is padded with valid offsets)
  int64_t TV;      // taps rounded up to two vectors (transposed weights, dense dx)
  int64_t Hp, Wp, Cp;
  int64_t kk;      // pool * pool
  int64_t npix;    // conv pixels per output row
  int64_t TP;      // pixels a row is padded to: a multiple of every ISA copy's register tile (kTileTP)
  int64_t npix_pad;

  int64_t k0(int64_t b) const {  // first output channel of block b
    return depthwise ? b * KB : (b / kblk) * g.KG + (b % kblk) * KB;
  }
  int64_t kn(int64_t b) const {  // output channels in block b
    return depthwise ? std::min(KB, g.C - b * KB) : std::min(KB, g.KG - (b % kblk) * KB);
  }
  int64_t xoff(int64_t b) const {  // first input channel block b reads
    return depthwise ? b * KB : (b / kblk) * g.CG;
  }
};

Plan make_plan(const ConvGeom& g, int64_t lanes) {
  Plan pl;
  pl.g = g;
  pl.depthwise = g.groups == g.C && g.K == g.C && g.groups > 1;
  pl.L = lanes;
  const int64_t width = pl.depthwise ? g.C : g.KG;
  pl.NV = width > lanes ? 2 : 1;
  pl.KB = pl.NV * lanes;
  pl.kblk = (g.KG + pl.KB - 1) / pl.KB;
  pl.nblk = pl.depthwise ? (g.C + pl.KB - 1) / pl.KB : g.groups * pl.kblk;
  pl.taps = pl.depthwise ? g.R * g.S : g.CG * g.R * g.S;
  pl.taps_pad = round_up(pl.taps, kDwTaps);
  pl.TV = round_up(pl.taps, 2 * lanes);
  pl.Hp = std::max(g.pt + g.H, (g.P - 1) * g.sh + (g.R - 1) * g.dh + 1);
  pl.Wp = std::max(g.pl + g.W, (g.Q - 1) * g.sw + (g.S - 1) * g.dw + 1);
  pl.Cp = pl.depthwise ? pl.nblk * pl.KB : g.C;
  pl.kk = g.pool * g.pool;
  pl.npix = pl.kk * g.QO;
  pl.TP = pl.NV == 1 ? 8 : 4;
  pl.npix_pad = round_up(pl.npix, pl.TP);
  return pl;
}

// Packed operands of one call, in the compute type T.
template <typename T>
struct Operands {
  const Plan* pl;
  const int64_t* toff;  // [taps_pad] offset of tap t from a pixel's base in xp
  const T* xp;          // [N][Hp][Wp][Cp]
  const T* wp;          // [nblk][taps][KB]
  const T* bp;          // [nblk][KB] or nullptr
  const T* wt;          // [nblk][KB][TV] (dense dx only)
  T* dxp;               // [N][Hp][Wp][Cp] (dx only)
};

// Per-task scratch (rows of the current output row).
template <typename T>
struct Scratch {
  std::vector<int64_t> pb;  // [npix_pad] xp offset of each conv pixel (+ block's channel offset)
  std::vector<T> c;         // [npix_pad][KB] conv outputs (forward) or dC (backward)
  std::vector<T> y;         // [QO][KB] pooled output / pooled gradient g
  std::vector<T> i;         // [QO][KB] window index (as T, exact for < 2^24)
  std::vector<T> dw;        // [taps][KB] dw partial of the current block (backward)

  explicit Scratch(const Plan& pl)
      : pb(pl.npix_pad), c(pl.npix_pad * pl.KB), y(pl.g.QO * pl.KB), i(pl.g.QO * pl.KB) {}
};

// xp offsets of the conv pixels of output row po, in window order (qo, di, dj);
// the tail up to npix_pad repeats the last pixel (computed, never stored).
FASTCONV_INLINE void pixel_bases(const Plan& pl, int64_t n, int64_t po, int64_t xoff, int64_t* pb) {
  const ConvGeom& g = pl.g;
  const int64_t k = g.pool;
  int64_t j = 0;
  for (int64_t qo = 0; qo < g.QO; ++qo)
    for (int64_t di = 0; di < k; ++di)
      for (int64_t dj = 0; dj < k; ++dj)
        pb[j++] = ((n * pl.Hp + (po * k + di) * g.sh) * pl.Wp + (qo * k + dj) * g.sw) * pl.Cp + xoff;
  for (; j < pl.npix_pad; ++j) pb[j] = pb[pl.npix - 1];
}

// ---------------------------------------------------------------- ISA variants

// The row kernels, compiled once per instruction set (see cpu_kernel.h).
#define FASTCONV_ISA_KERNELS "conv2d_smallc_kernel.h"
#include "isa_each.h"

template <typename T>
using FwdFn = void (*)(const Operands<T>&, Scratch<T>&, int64_t, int64_t, int64_t);
template <typename T>
using BwdFn = void (*)(const Operands<T>&, Scratch<T>&, int64_t, int64_t, int64_t, bool, bool);

template <typename T, int NV, bool DW>
FwdFn<T> fwd_for_isa() {
  return FASTCONV_ISA_PICK(fwd_row<T, NV, DW>);
}

template <typename T, int NV, bool DW>
BwdFn<T> bwd_for_isa() {
  return FASTCONV_ISA_PICK(bwd_row<T, NV, DW>);
}

template <typename T>
FwdFn<T> pick_fwd(const Plan& pl) {
  if (pl.depthwise) return pl.NV == 1 ? fwd_for_isa<T, 1, true>() : fwd_for_isa<T, 2, true>();
  return pl.NV == 1 ? fwd_for_isa<T, 1, false>() : fwd_for_isa<T, 2, false>();
}

template <typename T>
BwdFn<T> pick_bwd(const Plan& pl) {
  if (pl.depthwise) return pl.NV == 1 ? bwd_for_isa<T, 1, true>() : bwd_for_isa<T, 2, true>();
  return pl.NV == 1 ? bwd_for_isa<T, 1, false>() : bwd_for_isa<T, 2, false>();
}

// ---------------------------------------------------------------- packing

std::vector<int64_t> tap_offsets(const Plan& pl) {
  const ConvGeom& g = pl.g;
  std::vector<int64_t> toff(pl.taps_pad);
  const int64_t cg = pl.depthwise ? 1 : g.CG;
  for (int64_t r = 0; r < g.R; ++r)
    for (int64_t s = 0; s < g.S; ++s)
      for (int64_t ci = 0; ci < cg; ++ci)
        toff[(r * g.S + s) * cg + ci] = (r * g.dh * pl.Wp + s * g.dw) * pl.Cp + ci;
  for (int64_t t = pl.taps; t < pl.taps_pad; ++t) toff[t] = toff[0];
  return toff;
}

// xp[n][hp][wp][c] = x[n, c, hp - pt, wp - pl] inside the input, 0 elsewhere.
template <typename scalar_t, typename T>
at::Tensor pack_input(const at::Tensor& x, const Plan& pl) {
  const ConvGeom& g = pl.g;
  at::Tensor xp = at::empty({g.N * pl.Hp * pl.Wp * pl.Cp}, x.options().dtype(c10::CppTypeToScalarType<T>::value));
  const scalar_t* src = x.const_data_ptr<scalar_t>();
  T* dst = xp.mutable_data_ptr<T>();
  const int64_t sN = x.stride(0), sC = x.stride(1), sH = x.stride(2), sW = x.stride(3);
  const int64_t plane = pl.Hp * pl.Wp * pl.Cp;
  at::parallel_for(0, g.N * pl.Hp, grain_for(pl.Wp * pl.Cp), [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; ++row) {
      const int64_t n = row / pl.Hp, hp = row % pl.Hp, h = hp - g.pt;
      T* d = dst + n * plane + hp * pl.Wp * pl.Cp;
      std::fill(d, d + pl.Wp * pl.Cp, T(0));
      if (h < 0 || h >= g.H) continue;
      const scalar_t* s = src + n * sN + h * sH;
      for (int64_t w = 0; w < g.W; ++w)
        for (int64_t c = 0; c < g.C; ++c) d[(w + g.pl) * pl.Cp + c] = static_cast<T>(s[w * sW + c * sC]);
    }
  });
  return xp;
}

// wp[blk][t][l] = w[k0 + l, ci, r, s] (t = (r, s, ci)), 0 past the block's channels.
template <typename scalar_t, typename T>
std::vector<T> pack_weight(const at::Tensor& w, const Plan& pl) {
  const ConvGeom& g = pl.g;
  std::vector<T> wp(pl.nblk * pl.taps * pl.KB, T(0));
  const scalar_t* src = w.const_data_ptr<scalar_t>();
  const int64_t cg = pl.depthwise ? 1 : g.CG;
  for (int64_t b = 0; b < pl.nblk; ++b)
    for (int64_t l = 0; l < pl.kn(b); ++l)
      for (int64_t ci = 0; ci < cg; ++ci)
        for (int64_t r = 0; r < g.R; ++r)
          for (int64_t s = 0; s < g.S; ++s)
            wp[(b * pl.taps + (r * g.S + s) * cg + ci) * pl.KB + l] = static_cast<T>(
                src[(pl.k0(b) + l) * w.stride(0) + ci * w.stride(1) + r * w.stride(2) + s * w.stride(3)]);
  return wp;
}

// wt[blk][l][t] = wp[blk][t][l], taps padded to TV with zeros.
template <typename T>
std::vector<T> transpose_weight(const std::vector<T>& wp, const Plan& pl) {
  std::vector<T> wt(pl.nblk * pl.KB * pl.TV, T(0));
  for (int64_t b = 0; b < pl.nblk; ++b)
    for (int64_t t = 0; t < pl.taps; ++t)
      for (int64_t l = 0; l < pl.KB; ++l)
        wt[(b * pl.KB + l) * pl.TV + t] = wp[(b * pl.taps + t) * pl.KB + l];
  return wt;
}

// ---------------------------------------------------------------- drivers

template <typename scalar_t>
void fwd_impl(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b, const ConvGeom& g,
              at::Tensor& y, at::Tensor& idx) {
  using T = acc_t<scalar_t>;
  const Plan pl = make_plan(g, kLanes<T>);
  const std::vector<int64_t> toff = tap_offsets(pl);
  const at::Tensor xp = pack_input<scalar_t, T>(x, pl);
  const std::vector<T> wp = pack_weight<scalar_t, T>(w, pl);
  std::vector<T> bp;
  if (b.has_value()) {
    bp.assign(pl.nblk * pl.KB, T(0));
    const scalar_t* bs = b->const_data_ptr<scalar_t>();
    for (int64_t blk = 0; blk < pl.nblk; ++blk)
      for (int64_t l = 0; l < pl.kn(blk); ++l) bp[blk * pl.KB + l] = static_cast<T>(bs[(pl.k0(blk) + l) * b->stride(0)]);
  }
  const Operands<T> op{&pl, toff.data(), xp.const_data_ptr<T>(), wp.data(), bp.empty() ? nullptr : bp.data(),
                       nullptr, nullptr};
  const FwdFn<T> kernel = pick_fwd<T>(pl);

  const View4<scalar_t> yv(y.mutable_data_ptr<scalar_t>(), y);
  const View4<uint8_t> iv = g.pool > 1 ? View4<uint8_t>(idx.mutable_data_ptr<uint8_t>(), idx) : View4<uint8_t>();
  const int64_t work = pl.npix * pl.taps * g.K;  // MACs per row
  at::parallel_for(0, g.N * g.PO, grain_for(work), [&](int64_t r0, int64_t r1) {
    Scratch<T> s(pl);
    for (int64_t row = r0; row < r1; ++row) {
      const int64_t n = row / g.PO, po = row % g.PO;
      for (int64_t blk = 0; blk < pl.nblk; ++blk) {
        kernel(op, s, n, po, blk);
        store_row(yv, n, po, pl.k0(blk), pl.kn(blk), g.QO, s.y.data(), pl.KB);
        if (iv.p) store_row(iv, n, po, pl.k0(blk), pl.kn(blk), g.QO, s.i.data(), pl.KB);
      }
    }
  });
}

template <typename scalar_t>
void bwd_impl(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w, const at::Tensor& y,
              const at::Tensor& idx, const ConvGeom& g, bool need_dx, bool need_dw, bool need_db, at::Tensor& dx,
              at::Tensor& dw, at::Tensor& db) {
  using T = acc_t<scalar_t>;
  const Plan pl = make_plan(g, kLanes<T>);
  const std::vector<int64_t> toff = tap_offsets(pl);
  const at::Tensor xp = need_dw ? pack_input<scalar_t, T>(x, pl) : at::Tensor();
  const std::vector<T> wp = need_dx ? pack_weight<scalar_t, T>(w, pl) : std::vector<T>();
  const std::vector<T> wt = need_dx && !pl.depthwise ? transpose_weight(wp, pl) : std::vector<T>();
  const at::TensorOptions topt = x.options().dtype(c10::CppTypeToScalarType<T>::value);
  at::Tensor dxp = need_dx ? at::zeros({g.N * pl.Hp * pl.Wp * pl.Cp}, topt) : at::Tensor();
  const Operands<T> op{&pl, toff.data(), need_dw ? xp.const_data_ptr<T>() : nullptr, wp.data(), nullptr,
                       wt.data(), need_dx ? dxp.mutable_data_ptr<T>() : nullptr};
  const BwdFn<T> kernel = pick_bwd<T>(pl);

  const View4<const scalar_t> dyv(dy.const_data_ptr<scalar_t>(), dy);
  const View4<const scalar_t> yv = g.relu ? View4<const scalar_t>(y.const_data_ptr<scalar_t>(), y)
                                          : View4<const scalar_t>();
  const View4<const uint8_t> iv = g.pool > 1 ? View4<const uint8_t>(idx.const_data_ptr<uint8_t>(), idx)
                                             : View4<const uint8_t>();

  const int64_t chunks = num_chunks(g.N, g.PO * pl.npix * pl.taps * g.K);
  const int64_t dw_size = pl.nblk * pl.taps * pl.KB, db_size = pl.nblk * pl.KB;
  std::vector<T> dw_part(need_dw ? chunks * dw_size : 0, T(0));
  std::vector<T> db_part(chunks * db_size, T(0));
  parallel_chunks(g.N, chunks, [&](int64_t ch, int64_t n0, int64_t n1) {
    Scratch<T> s(pl);
    if (need_dw) s.dw.resize(pl.taps * pl.KB);
    for (int64_t blk = 0; blk < pl.nblk; ++blk) {
      const int64_t k0 = pl.k0(blk), kn = pl.kn(blk);
      T* dbp = db_part.data() + ch * db_size + blk * pl.KB;
      if (need_dw) std::fill(s.dw.begin(), s.dw.end(), T(0));
      for (int64_t n = n0; n < n1; ++n) {
        for (int64_t po = 0; po < g.PO; ++po) {
          // lanes past the block stay 0
          std::fill(s.y.begin(), s.y.end(), T(0));
          load_grad_row(dyv, yv, iv, n, po, k0, kn, g.QO, s.y.data(), s.i.data(), pl.KB, dbp);
          if (need_dx || need_dw) kernel(op, s, n, po, blk, need_dx, need_dw);
        }
      }
      if (need_dw) std::copy(s.dw.begin(), s.dw.end(), dw_part.begin() + ch * dw_size + blk * pl.taps * pl.KB);
    }
  });

  if (need_dw) {
    // dw[k0 + l, ci, r, s] = sum over chunks of partial[blk][t = (r, s, ci)][l]
    scalar_t* dwd = dw.mutable_data_ptr<scalar_t>();
    const int64_t cg = pl.depthwise ? 1 : g.CG;
    for (int64_t blk = 0; blk < pl.nblk; ++blk)
      for (int64_t l = 0; l < pl.kn(blk); ++l)
        for (int64_t ci = 0; ci < cg; ++ci)
          for (int64_t r = 0; r < g.R; ++r)
            for (int64_t s = 0; s < g.S; ++s) {
              const int64_t t = (r * g.S + s) * cg + ci;
              T sum = 0;
              for (int64_t ch = 0; ch < chunks; ++ch) sum += dw_part[ch * dw_size + (blk * pl.taps + t) * pl.KB + l];
              dwd[(((pl.k0(blk) + l) * g.CG + ci) * g.R + r) * g.S + s] = static_cast<scalar_t>(sum);
            }
  }
  if (need_db) {
    scalar_t* dbd = db.mutable_data_ptr<scalar_t>();
    for (int64_t blk = 0; blk < pl.nblk; ++blk)
      for (int64_t l = 0; l < pl.kn(blk); ++l) {
        T sum = 0;
        for (int64_t ch = 0; ch < chunks; ++ch) sum += db_part[ch * db_size + blk * pl.KB + l];
        dbd[pl.k0(blk) + l] = static_cast<scalar_t>(sum);
      }
  }
  if (need_dx) {
    // dx[n, c, h, w] = dxp[n, h + pt, w + pl, c]
    const T* src = dxp.const_data_ptr<T>();
    scalar_t* dst = dx.mutable_data_ptr<scalar_t>();
    const int64_t sN = dx.stride(0), sC = dx.stride(1), sH = dx.stride(2), sW = dx.stride(3);
    at::parallel_for(0, g.N * g.H, grain_for(g.W * g.C), [&](int64_t b, int64_t e) {
      for (int64_t row = b; row < e; ++row) {
        const int64_t n = row / g.H, h = row % g.H;
        const T* s = src + ((n * pl.Hp + h + g.pt) * pl.Wp + g.pl) * pl.Cp;
        scalar_t* d = dst + n * sN + h * sH;
        for (int64_t w_ = 0; w_ < g.W; ++w_)
          for (int64_t c = 0; c < g.C; ++c) d[w_ * sW + c * sC] = static_cast<scalar_t>(s[w_ * pl.Cp + c]);
      }
    });
  }
}

}  // namespace

void conv2d_smallc_fwd(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                       const ConvGeom& g, at::Tensor& y, at::Tensor& idx) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv2d_smallc_fwd",
                                  [&] { fwd_impl<scalar_t>(x, w, b, g, y, idx); });
}

void conv2d_smallc_bwd(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w, const at::Tensor& y,
                       const at::Tensor& idx, const ConvGeom& g, bool need_dx, bool need_dw, bool need_db,
                       at::Tensor& dx, at::Tensor& dw, at::Tensor& db) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv2d_smallc_bwd", [&] {
    bwd_impl<scalar_t>(dy, x, w, y, idx, g, need_dx, need_dw, need_db, dx, dw, db);
  });
}

}  // namespace cpu
}  // namespace fastconv
