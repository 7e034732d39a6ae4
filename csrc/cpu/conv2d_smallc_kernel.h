// The small-C conv row kernels (layout: conv2d_smallc.cpp), included by
// conv2d_smallc.cpp once per instruction set with FASTCONV_ISA_NS (a namespace)
// and FASTCONV_ISA_TARGET (a target attribute, or nothing) defined.
//
// Every function here carries FASTCONV_ISA_TARGET itself rather than being
// inlined into a wrapper that does: GCC lowers vector comparisons and
// `mask ? a : b` for the ISA of the function they are written in, so in a
// function without the attribute they would become scalar code per lane.
// No include guard: one copy per ISA.

namespace FASTCONV_ISA_NS {

#include "vec_io_kernel.h"

// Register tiles per ISA. The row kernels compute in the ISA's native vectors (Vec, kNLanes:
// a 64-byte channel block of NV Vec is NV * FASTCONV_ISA_VEC_REGS of them). A tile of TP pixels x
// a block keeps TP * NV * FASTCONV_ISA_VEC_REGS accumulators, the block's weights and one
// broadcast live, in hardware registers:
//   AVX-512 (32 zmm): TP = 8 / 4 (NV = 1 / 2)  ->  8+1+1 = 10 / 8+2+1 = 11 zmm
//   AVX2    (16 ymm): TP = 4 / 2                -> 2*(4+1)+1 = 11 / 2*(4+2)+1 = 13 ymm
//   base    (16 xmm): TP = 2 / 1                -> 4*(2+1)+1 = 13 / 4*(2+2)+1 = 17 xmm (one spills)
// The host pads the pixels to 8 / 4 (Plan::TP), a multiple of every copy's TP. The dw reduction's
// tile holds kDwTaps taps at most, fewer where the accumulators would not fit (DWT).
template <int NV>
constexpr int kTileTP = (NV == 1 ? 8 : 4) / FASTCONV_ISA_VEC_REGS > 0 ? (NV == 1 ? 8 : 4) / FASTCONV_ISA_VEC_REGS : 1;
template <int NV>
constexpr int kTileDWT = kTileTP<NV> < kDwTaps ? kTileTP<NV> : static_cast<int>(kDwTaps);

// ---------------------------------------------------------------- forward row

// One output row (n, po) of block blk: conv tile by tile into s.c, then the
// epilogue into s.y (act(max + b)) and s.i (window index).
template <typename T, int NV, bool DW>
FASTCONV_ISA_TARGET void fwd_row(const Operands<T>& op, Scratch<T>& s, int64_t n, int64_t po, int64_t blk) {
  constexpr int L = kNLanes<T>;                    // lanes of the ISA's native vector
  constexpr int NVn = NV * FASTCONV_ISA_VEC_REGS;   // native vectors per channel block
  constexpr int KB = NV * kLanes<T>;                // the block's channels (the data layout)
  constexpr int TP = kTileTP<NV>;
  using V = Vec<T>;
  const Plan& pl = *op.pl;
  const int64_t taps = pl.taps, kk = pl.kk, QO = pl.g.QO;
  const int64_t* toff = op.toff;
  const T* wb = op.wp + blk * taps * KB;
  int64_t* pb = s.pb.data();
  T* c = s.c.data();
  pixel_bases(pl, n, po, pl.xoff(blk), pb);

  for (int64_t j0 = 0; j0 < pl.npix_pad; j0 += TP) {
    const T* xj[TP];
    for (int j = 0; j < TP; ++j) xj[j] = op.xp + pb[j0 + j];
    V acc[TP][NVn];
    for (int j = 0; j < TP; ++j)
      for (int v = 0; v < NVn; ++v) acc[j][v] = V{};
    for (int64_t t = 0; t < taps; ++t) {
      const int64_t o = toff[t];
      V wv[NVn];
      for (int v = 0; v < NVn; ++v) wv[v] = load(wb + t * KB + v * L);
#pragma GCC unroll 8
      for (int j = 0; j < TP; ++j) {
        if constexpr (DW) {
          for (int v = 0; v < NVn; ++v) acc[j][v] += load(xj[j] + o + v * L) * wv[v];
        } else {
          const T xv = xj[j][o];
          for (int v = 0; v < NVn; ++v) acc[j][v] += xv * wv[v];
        }
      }
    }
    for (int j = 0; j < TP; ++j)
      for (int v = 0; v < NVn; ++v) store(c + (j0 + j) * KB + v * L, acc[j][v]);
  }

  const bool relu = pl.g.relu;
  const T* bias = op.bp ? op.bp + blk * KB : nullptr;
  for (int64_t qo = 0; qo < QO; ++qo) {
    const T* win = c + qo * kk * KB;
    for (int v = 0; v < NVn; ++v) {
      V m = load(win + v * L);
      V id = V{};
      for (int64_t jj = 1; jj < kk; ++jj) {
        const V a = load(win + jj * KB + v * L);
        const auto take = (a > m) | (a != a);  // larger or NaN: ties keep the first
        m = take ? a : m;
        id = take ? splat(static_cast<T>(jj)) : id;
      }
      if (bias) m += load(bias + v * L);
      if (relu) m = (m < V{}) ? V{} : m;
      store(s.y.data() + qo * KB + v * L, m);
      if (kk > 1) store(s.i.data() + qo * KB + v * L, id);
    }
  }
}

// ---------------------------------------------------------------- backward row

// One output row (n, po) of block blk, given the pooled gradient s.y and the
// window index s.i: rebuild dC, then accumulate dw (into s.dw) and dx (into op.dxp).
template <typename T, int NV, bool DW>
FASTCONV_ISA_TARGET void bwd_row(const Operands<T>& op, Scratch<T>& s, int64_t n, int64_t po, int64_t blk,
                             bool need_dx, bool need_dw) {
  constexpr int L = kNLanes<T>;                    // lanes of the ISA's native vector
  constexpr int NVn = NV * FASTCONV_ISA_VEC_REGS;   // native vectors per channel block
  constexpr int KB = NV * kLanes<T>;                // the block's channels (the data layout)
  constexpr int TP = kTileTP<NV>;
  constexpr int DWT = kTileDWT<NV>;
  using V = Vec<T>;
  const Plan& pl = *op.pl;
  const int64_t taps = pl.taps, kk = pl.kk, QO = pl.g.QO, npix = pl.npix;
  const int64_t* toff = op.toff;
  int64_t* pb = s.pb.data();
  T* dC = s.c.data();
  pixel_bases(pl, n, po, pl.xoff(blk), pb);

  // unpool prologue: dC[(qo, jj), k] = g[qo, k] * (idx[qo, k] == jj)
  for (int64_t qo = 0; qo < QO; ++qo) {
    for (int v = 0; v < NVn; ++v) {
      const V gv = load(s.y.data() + qo * KB + v * L);
      if (kk == 1) {
        store(dC + qo * KB + v * L, gv);
        continue;
      }
      const V iv = load(s.i.data() + qo * KB + v * L);
      for (int64_t jj = 0; jj < kk; ++jj)
        store(dC + (qo * kk + jj) * KB + v * L, (iv == static_cast<T>(jj)) ? gv : V{});
    }
  }
  for (int64_t j = npix; j < pl.npix_pad; ++j)
    for (int v = 0; v < NVn; ++v) store(dC + j * KB + v * L, V{});

  if (need_dw) {
    // dw[t, k] += sum_j x[j, t] * dC[j, k], DWT taps per register tile
    T* dwb = s.dw.data();
    for (int64_t t0 = 0; t0 < taps; t0 += DWT) {
      V acc[DWT][NVn];
      int64_t o[DWT];
      for (int tt = 0; tt < DWT; ++tt) {
        o[tt] = toff[t0 + tt];
        for (int v = 0; v < NVn; ++v) acc[tt][v] = V{};
      }
      for (int64_t j = 0; j < npix; ++j) {
        const T* xb = op.xp + pb[j];
        V d[NVn];
        for (int v = 0; v < NVn; ++v) d[v] = load(dC + j * KB + v * L);
#pragma GCC unroll 4
        for (int tt = 0; tt < DWT; ++tt) {
          if constexpr (DW) {
            for (int v = 0; v < NVn; ++v) acc[tt][v] += load(xb + o[tt] + v * L) * d[v];
          } else {
            const T xv = xb[o[tt]];
            for (int v = 0; v < NVn; ++v) acc[tt][v] += xv * d[v];
          }
        }
      }
      for (int64_t tt = 0; tt < DWT && t0 + tt < taps; ++tt)
        for (int v = 0; v < NVn; ++v) {
          T* p = dwb + (t0 + tt) * KB + v * L;
          store(p, load(p) + acc[tt][v]);
        }
    }
  }

  if (need_dx) {
    if constexpr (DW) {
      // lanes are channels: dxp[j + toff[t], k] += dC[j, k] * w[t, k]
      const T* wb = op.wp + blk * taps * KB;
      for (int64_t j = 0; j < npix; ++j) {
        T* xb = op.dxp + pb[j];
        V d[NVn];
        for (int v = 0; v < NVn; ++v) d[v] = load(dC + j * KB + v * L);
        for (int64_t t = 0; t < taps; ++t)
          for (int v = 0; v < NVn; ++v) {
            T* p = xb + toff[t] + v * L;
            store(p, load(p) + d[v] * load(wb + t * KB + v * L));
          }
      }
    } else {
      // out[j, t] = sum_k dC[j, k] * wt[k, t], vectorised over taps, then scattered
      const int64_t TV = pl.TV, kn = pl.kn(blk);
      const T* wtb = op.wt + blk * KB * TV;
      for (int64_t j0 = 0; j0 < npix; j0 += TP) {
        for (int64_t tv0 = 0; tv0 < taps; tv0 += 2 * L) {
          V acc[TP][2];
          for (int j = 0; j < TP; ++j) acc[j][0] = acc[j][1] = V{};
          for (int64_t k = 0; k < kn; ++k) {
            const V w0 = load(wtb + k * TV + tv0), w1 = load(wtb + k * TV + tv0 + L);
#pragma GCC unroll 8
            for (int j = 0; j < TP; ++j) {
              const T d = dC[(j0 + j) * KB + k];
              acc[j][0] += d * w0;
              acc[j][1] += d * w1;
            }
          }
          const int64_t tn = std::min<int64_t>(2 * L, taps - tv0);
          for (int64_t j = 0; j < TP && j0 + j < npix; ++j) {
            T* xb = op.dxp + pb[j0 + j];
            T out[2 * L];
            store(out, acc[j][0]);
            store(out + L, acc[j][1]);
            for (int64_t t = 0; t < tn; ++t) xb[toff[tv0 + t]] += out[t];
          }
        }
      }
    }
  }
}

}  // namespace FASTCONV_ISA_NS
