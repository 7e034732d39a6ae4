// The tiled direct convolution with the fused bias / relu / max-pool epilogue.
//
//   y[n,k,po,qo] = act(max_{di,dj < pool} C[n,k,po*pool+di,qo*pool+dj] + b[k])
//   C[n,k,p,q]   = sum_{c < CG, r < R, s < S} src[n, g*CG+c, p*sh-pt+r*dh, q*sw-pl+s*dw] * w[k,c,r,s]
//   idx          = di*pool + dj of the max (pool_better: ties -> first, NaN wins)
//   with g = k / KG the group of k. pool == 1 stores C (+ b, act) itself.
//
// It runs the fused forward (src = x) and dgrad (src = the zero-inserted,
// unpooled dC, w flipped and transposed per group, stride 1; see conv_bwd.cu).
//
// Work split. A block owns one image n, a tile of TWY x TWX *cells* and a
// block of KB output channels:
//
//   cell = one pooled output (a pool x pool window of C) when pool > 1,
//          a PT x PT patch of C when pool == 1.
//
//        conv output C (one channel)           one thread = one cell x KT channels
//     +----+----+----+----+-- ...              +-------+   PT x PT accumulators per
//     |cell|cell|cell|cell|                    | pool  |   channel in registers; a
//     +----+----+----+----+                    |   x   |   window with pool = SP*PT
//     |cell|cell| ...                          | pool  |   is done in SP x SP sub-
//     +----+----+                              +-------+   passes, keeping a running
//      <--- TWX cells ---> (TWY rows)                      max, so only y and idx
//                                                          are ever written.
//
// Per (sub-pass, input-channel chunk CB, filter-row chunk RB, filter-col chunk
// SB) the block stages the input tile with its halo and the weights in shared
// memory (fp32, or fp64 for double), synchronizes, accumulates, synchronizes.
// Two layouts of the same kernel:
//
//   REG (CG > 1, or any conv that is not depthwise-like): all threads of a block
//        share the block's output channels and walk them KT at a time (weights
//        are broadcast from shared memory); xs[cb][iy][ix], ws[cb][r][s][kt].
//        When the whole reduction fits one pass, the input tile is loaded once
//        for all KB channels of the block.
//   DW  (CG == 1: depthwise, with any channel multiplier KG): every output
//        channel has its own input channel, so threads split the KB channels
//        into KB/KT subsets and the tile holds one "slot" per output channel:
//        xs[iy][ix][slot] (slot k reads input channel k / KG), ws[r][s][slot].
//
// Invariants: every thread of a block runs the same number of loop trips and
// reaches every __syncthreads (cells past the output compute on valid shared
// memory and store nothing); shared-memory reads stay inside the tile by the
// definition of IH / IW; loops over c, r, s use exact bounds (never padded
// zero weights) so that 0 * NaN never reaches a real output; global offsets
// are 64-bit.
#pragma once

#include "conv_sources.cuh"

namespace fastconv {
namespace cuda {

// Output channels one thread accumulates for a PT x PT patch (<= 32 accumulators).
__host__ __device__ constexpr int direct_kt(int PT) { return PT <= 2 ? 8 : 4; }

template <typename T, typename Src>
struct DirectArgs {
  // Pointers
  Src src;                        // input [N, C, H, W] (x, or the virtual dC of dgrad)
  const T* w;                     // [K, CG, R, S] contiguous
  const T* bias;                  // [K] or nullptr
  T* y;                           // [N, K, PO, QO] ([N, K, P, Q] when pool == 1)
  uint8_t* idx;                   // like y; nullptr when pool == 1
  int64_t ysN, ysK, ysH, ysW;     // element strides of y (idx has the same)
  // Dimensions
  int K, KG, CG, R, S;            // output channels, per group; input channels per group; filter
  int P, Q, PO, QO;               // conv output, stored output
  int sh, sw, dh, dw, pt, pl;     // pt / pl may be negative (dgrad)
  int pool;                       // 1..16, 1 = none
  bool relu;
  bool src_cl;                    // src is channels-fastest: tile loads walk channels first
  bool vec_x;                     // 16-byte tile loads (TensorSource only; checked by the host)
  // Tiling (DirectPlan)
  int SP;                         // sub-passes per window side: pool == SP * PT (1 when pool == 1)
  int TWY, TWX;                   // cells per tile
  int tilesX, nTiles;             // tiles across one image, tiles per image
  int KB, nKB, nKBg;              // channels per block; channel blocks in all; per group (REG)
  int CB, RB, SB;                 // input channels / filter rows / filter cols per shared-memory pass
  int IH, IW;                     // shared-memory input tile
  int xs_elems;                   // elements of the input tile (the weight tile follows it)
  int64_t nBlocks;                // N * nTiles * nKB
};

// --------------------------------------------------------------------------- tile loaders

// REG input tile: xs[cb][iy][ix] = src[n, c_first + cb, h0 + iy, w0 + ix], cb < cnum.
// The 16-byte path reads V channels of a pixel at once (neighbouring threads:
// neighbouring 16-byte pieces); the scalar path gives each thread whole pixels
// (neighbouring threads: neighbouring pixels, conflict-free shared stores).
template <typename T, typename Src>
__device__ __forceinline__ void load_x_reg(acc_t<T>* xs, const DirectArgs<T, Src>& a, int64_t n,
                                           int c_first, int cnum, int h0, int w0) {
  using A = acc_t<T>;
  const int NT = blockDim.x, tid = threadIdx.x;
  const int plane = a.IH * a.IW;
  if constexpr (Src::kIsTensor) {
    constexpr int V = 16 / int(sizeof(T));
    if (a.vec_x) {  // channels_last, cnum and c_first multiples of V, 16-byte aligned pixels
      const int cv = cnum / V;
      for (int e = tid; e < cv * plane; e += NT) {
        const int cb = (e % cv) * V, pix = e / cv;
        const int iy = pix / a.IW, ix = pix % a.IW;
        const int h = h0 + iy, w = w0 + ix;
        Vec<T, V> t;
        if (h >= 0 && h < a.src.H && w >= 0 && w < a.src.W) {
          t = *reinterpret_cast<const Vec<T, V>*>(a.src.p + n * a.src.sN + int64_t(c_first + cb) * a.src.sC +
                                                  int64_t(h) * a.src.sH + int64_t(w) * a.src.sW);
        } else {
#pragma unroll
          for (int j = 0; j < V; ++j) t.v[j] = T(0);
        }
#pragma unroll
        for (int j = 0; j < V; ++j) xs[(cb + j) * plane + pix] = static_cast<A>(t.v[j]);
      }
      return;
    }
  }
  // pixel-major: one pixel decode per thread and pixel, then its channels
  for (int pix = tid; pix < plane; pix += NT) {
    const int iy = pix / a.IW;
    const auto px = a.src.pixel(n, h0 + iy, w0 + pix - iy * a.IW);
    for (int cb = 0; cb < cnum; ++cb) xs[cb * plane + pix] = a.src.read(px, c_first + cb);
  }
}

// DW input tile: xs[iy][ix][slot] = src[n, (kstart + slot) / KG, h0 + iy, w0 + ix]
// for output channels kstart + slot < kend, 0 for the slots past them (KB is a
// multiple of 4).
template <typename T, typename Src>
__device__ __forceinline__ void load_x_dw(acc_t<T>* xs, const DirectArgs<T, Src>& a, int64_t n,
                                          int kstart, int kend, int h0, int w0) {
  using A = acc_t<T>;
  const int NT = blockDim.x, tid = threadIdx.x;
  const int KB = a.KB, plane = a.IH * a.IW;
  if constexpr (Src::kIsTensor) {
    constexpr int V = 16 / int(sizeof(T));
    if (a.vec_x) {  // channels_last, KG == 1, K and KB multiples of V, 16-byte aligned pixels
      const int sv = KB / V;
      for (int e = tid; e < sv * plane; e += NT) {
        const int slot = (e % sv) * V, pix = e / sv;
        const int h = h0 + pix / a.IW, w = w0 + pix % a.IW;
        const int k = kstart + slot;
        Vec<T, V> t;
        if (k < kend && h >= 0 && h < a.src.H && w >= 0 && w < a.src.W) {
          t = *reinterpret_cast<const Vec<T, V>*>(a.src.p + n * a.src.sN + int64_t(k) * a.src.sC +
                                                  int64_t(h) * a.src.sH + int64_t(w) * a.src.sW);
        } else {
#pragma unroll
          for (int j = 0; j < V; ++j) t.v[j] = T(0);
        }
#pragma unroll
        for (int j = 0; j < V; ++j) xs[pix * KB + slot + j] = static_cast<A>(t.v[j]);
      }
      return;
    }
  }
  if (a.src_cl) {  // 4 slots of one pixel per thread: one pixel decode, one 16-byte store
    const int groups = KB / 4;
    for (int e = tid; e < groups * plane; e += NT) {
      const int slot = (e % groups) * 4, pix = e / groups;
      const int iy = pix / a.IW;
      const auto px = a.src.pixel(n, h0 + iy, w0 + pix - iy * a.IW);
      A v[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int k = kstart + slot + j;
        v[j] = k < kend ? a.src.read(px, a.KG == 1 ? k : k / a.KG) : A(0);
      }
      store_smem<4>(xs + pix * KB + slot, v);
    }
  } else {
    for (int e = tid; e < KB * plane; e += NT) {
      const int slot = e / plane, pix = e % plane, k = kstart + slot;
      xs[pix * KB + slot] = k < kend ? a.src.at(n, k / a.KG, h0 + pix / a.IW, w0 + pix % a.IW) : A(0);
    }
  }
}

// --------------------------------------------------------------------------- kernel

template <typename T, typename Src, int PT, bool DW>
__global__ void __launch_bounds__(kThreads) direct_conv_kernel(const DirectArgs<T, Src> a) {
  using A = acc_t<T>;
  constexpr int KT = direct_kt(PT);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* xs = reinterpret_cast<A*>(smem_raw);
  A* ws = xs + a.xs_elems;

  const int NT = blockDim.x, tid = threadIdx.x;
  const int nsub = DW ? a.KB / KT : 1;
  const int sub = DW ? tid % nsub : 0;
  const int cell = DW ? tid / nsub : tid;
  const int wy = cell / a.TWX, wx = cell % a.TWX;
  const int CP = a.pool > 1 ? a.pool : PT;  // cell pitch in conv pixels
  const int RSB = a.RB * a.SB;
  // The input tile survives the channel loop when one pass covers the whole reduction.
  const bool x_once = !DW && a.CB >= a.CG && a.RB == a.R && a.SB == a.S && a.SP == 1;

  for (int64_t blk = blockIdx.x; blk < a.nBlocks; blk += gridDim.x) {
    const int kb = int(blk % a.nKB);
    const int64_t rest = blk / a.nKB;
    const int tile = int(rest % a.nTiles);
    const int64_t n = rest / a.nTiles;
    const int cy0 = (tile / a.tilesX) * a.TWY, cx0 = (tile % a.tilesX) * a.TWX;
    int kstart, kend, cbase;
    if (DW) {
      kstart = kb * a.KB;
      kend = min(a.K, kstart + a.KB);
      cbase = 0;
    } else {
      const int g = kb / a.nKBg;
      kstart = g * a.KG + (kb % a.nKBg) * a.KB;
      kend = min(kstart + a.KB, (g + 1) * a.KG);
      cbase = g * a.CG;
    }
    const int nkc = DW ? 1 : ceil_div(kend - kstart, KT);  // the same for every thread

    for (int it = 0; it < nkc; ++it) {
      const int kc = DW ? kstart + sub * KT : kstart + it * KT;  // this thread's first channel
      A best[KT];
      int bi[KT];
#pragma unroll
      for (int kt = 0; kt < KT; ++kt) {
        best[kt] = -std::numeric_limits<A>::infinity();
        bi[kt] = 0;
      }
      for (int sa = 0; sa < a.SP; ++sa) {
        for (int sb = 0; sb < a.SP; ++sb) {
          A acc[KT][PT][PT];
#pragma unroll
          for (int kt = 0; kt < KT; ++kt)
#pragma unroll
            for (int i = 0; i < PT; ++i)
#pragma unroll
              for (int j = 0; j < PT; ++j) acc[kt][i][j] = A(0);
          const int oy0 = cy0 * CP + sa * PT, ox0 = cx0 * CP + sb * PT;  // tile origin in C
          const int cg_end = DW ? 1 : a.CG;
          for (int c0 = 0; c0 < cg_end; c0 += a.CB) {
            const int cnum = DW ? 1 : min(a.CB, a.CG - c0);
            for (int r0 = 0; r0 < a.R; r0 += a.RB) {
              const int rnum = min(a.RB, a.R - r0);
              for (int s0 = 0; s0 < a.S; s0 += a.SB) {
                const int snum = min(a.SB, a.S - s0);
                const int h0 = oy0 * a.sh - a.pt + r0 * a.dh;
                const int w0 = ox0 * a.sw - a.pl + s0 * a.dw;
                if (DW) {
                  load_x_dw(xs, a, n, kstart, kend, h0, w0);
                  for (int e = tid; e < RSB * a.KB; e += NT) {
                    const int slot = e % a.KB, rs = e / a.KB, r = rs / a.SB, s = rs % a.SB;
                    const int k = kstart + slot;
                    ws[e] = (k < kend && r < rnum && s < snum)
                                ? static_cast<A>(a.w[int64_t(k) * a.R * a.S + (r0 + r) * a.S + s0 + s])
                                : A(0);
                  }
                } else {
                  if (!x_once || it == 0) load_x_reg(xs, a, n, cbase + c0, cnum, h0, w0);
                  for (int e = tid; e < cnum * RSB * KT; e += NT) {
                    const int kt = e % KT, crs = e / KT;
                    const int cb = crs / RSB, r = (crs % RSB) / a.SB, s = crs % a.SB;
                    const int k = kc + kt;
                    ws[e] = (k < kend && r < rnum && s < snum)
                                ? static_cast<A>(a.w[(int64_t(k) * a.CG + c0 + cb) * a.R * a.S +
                                                     (r0 + r) * a.S + s0 + s])
                                : A(0);
                  }
                }
                __syncthreads();
                if (DW) {
                  const int pix_row = a.IW * a.KB;
                  const int dws = a.dw * a.KB, rstep = a.sh * pix_row, cstep = a.sw * a.KB;
                  const A* xcell = xs + wy * CP * rstep + wx * CP * cstep + sub * KT;
                  for (int r = 0; r < rnum; ++r) {
                    const A* xp = xcell + r * a.dh * pix_row;
                    const A* wp = ws + r * a.SB * a.KB + sub * KT;
                    for (int s = 0; s < snum; ++s, xp += dws, wp += a.KB) {
                      A wv[KT];
                      load_smem<KT>(wp, wv);
#pragma unroll
                      for (int i = 0; i < PT; ++i) {
#pragma unroll
                        for (int j = 0; j < PT; ++j) {
                          A xv[KT];
                          load_smem<KT>(xp + i * rstep + j * cstep, xv);
#pragma unroll
                          for (int kt = 0; kt < KT; ++kt) acc[kt][i][j] += xv[kt] * wv[kt];
                        }
                      }
                    }
                  }
                } else {
                  const int dws = a.dw, rstep = a.sh * a.IW, cstep = a.sw;
                  const A* xcell = xs + wy * CP * rstep + wx * CP * cstep;
                  for (int cb = 0; cb < cnum; ++cb) {
                    for (int r = 0; r < rnum; ++r) {
                      const A* xp = xcell + (cb * a.IH + r * a.dh) * a.IW;
                      const A* wp = ws + (cb * RSB + r * a.SB) * KT;
                      for (int s = 0; s < snum; ++s, xp += dws, wp += KT) {
                        A wv[KT];
                        load_smem<KT>(wp, wv);
#pragma unroll
                        for (int i = 0; i < PT; ++i) {
#pragma unroll
                          for (int j = 0; j < PT; ++j) {
                            const A xv = xp[i * rstep + j * cstep];
#pragma unroll
                            for (int kt = 0; kt < KT; ++kt) acc[kt][i][j] += xv * wv[kt];
                          }
                        }
                      }
                    }
                  }
                }
                __syncthreads();
              }
            }
          }
          const int kcount = kend - kc;
          if (a.pool > 1) {
#pragma unroll
            for (int i = 0; i < PT; ++i) {
#pragma unroll
              for (int j = 0; j < PT; ++j) {
                const int wi = (sa * PT + i) * a.pool + sb * PT + j;
#pragma unroll
                for (int kt = 0; kt < KT; ++kt) {
                  if (pool_better(acc[kt][i][j], wi, best[kt], bi[kt])) {
                    best[kt] = acc[kt][i][j];
                    bi[kt] = wi;
                  }
                }
              }
            }
          } else if (kcount > 0) {
#pragma unroll
            for (int i = 0; i < PT; ++i) {
#pragma unroll
              for (int j = 0; j < PT; ++j) {
                const int p = (cy0 + wy) * PT + i, q = (cx0 + wx) * PT + j;
                if (p < a.P && q < a.Q) {
                  T vals[KT];
#pragma unroll
                  for (int kt = 0; kt < KT; ++kt) {
                    A v = acc[kt][i][j];
                    if (kt < kcount) {
                      if (a.bias != nullptr) v += static_cast<A>(a.bias[kc + kt]);
                      if (a.relu) v = relu_keep_nan(v);
                    }
                    vals[kt] = static_cast<T>(v);
                  }
                  store_run<KT>(a.y + n * a.ysN + int64_t(kc) * a.ysK + int64_t(p) * a.ysH + int64_t(q) * a.ysW,
                                a.ysK, vals, kcount);
                }
              }
            }
          }
        }
      }
      const int kcount = kend - kc;
      const int po = cy0 + wy, qo = cx0 + wx;
      if (a.pool > 1 && kcount > 0 && po < a.PO && qo < a.QO) {
        T vals[KT];
        uint8_t ids[KT];
#pragma unroll
        for (int kt = 0; kt < KT; ++kt) {
          A v = best[kt];
          if (kt < kcount) {
            if (a.bias != nullptr) v += static_cast<A>(a.bias[kc + kt]);
            if (a.relu) v = relu_keep_nan(v);
          }
          vals[kt] = static_cast<T>(v);
          ids[kt] = static_cast<uint8_t>(bi[kt]);
        }
        const int64_t off = n * a.ysN + int64_t(kc) * a.ysK + int64_t(po) * a.ysH + int64_t(qo) * a.ysW;
        store_run<KT>(a.y + off, a.ysK, vals, kcount);
        store_run<KT>(a.idx + off, a.ysK, ids, kcount);
      }
    }
  }
}

// --------------------------------------------------------------------------- planner

// The shape a plan is made for (forward: the conv; dgrad: the transposed conv).
struct DirectShape {
  int64_t N;
  int K, KG, CG, groups, R, S;
  int P, Q, PO, QO;
  int sh, sw, dh, dw;
  int pool;
  int elem;          // bytes of the accumulator type (4 or 8)
  int vec;           // elements of T in 16 bytes
  bool dw_mode;      // CG == 1: the DW layout
  bool vec_ok;       // the source allows 16-byte channel loads (channels_last, aligned)
};

// The planner's view of a launch, read off its arguments (dw_mode: one input
// channel per group, the DW layout).
template <typename T, typename Src>
inline DirectShape direct_shape(const DirectArgs<T, Src>& a, int64_t N, int groups, bool vec_ok) {
  DirectShape s{};
  s.N = N;
  s.K = a.K;
  s.KG = a.KG;
  s.CG = a.CG;
  s.groups = groups;
  s.R = a.R;
  s.S = a.S;
  s.P = a.P;
  s.Q = a.Q;
  s.PO = a.PO;
  s.QO = a.QO;
  s.sh = a.sh;
  s.sw = a.sw;
  s.dh = a.dh;
  s.dw = a.dw;
  s.pool = a.pool;
  s.elem = int(sizeof(acc_t<T>));
  s.vec = 16 / int(sizeof(T));
  s.dw_mode = a.CG == 1;
  s.vec_ok = vec_ok;
  return s;
}

struct DirectPlan {
  int PT, SP, KT;
  int TWY, TWX, KB, CB, RB, SB;
  int IH, IW, xs_elems, threads;
  int tilesX, nTiles, nKB, nKBg;
  int64_t nBlocks;
  size_t smem;
  bool vec_x;
};

constexpr int64_t kDirectSmemBudget = 48 * 1024;  // no opt-in needed, leaves room for several blocks per SM

inline int pow2_at_least(int64_t v) {
  int p = 1;
  while (p < v && p < (1 << 30)) p <<= 1;
  return p;
}

inline int64_t round_up64(int64_t v, int64_t m) { return ceil_div64(v, m) * m; }

// Input tile rows / cols and shared-memory bytes of a (partial) plan.
inline int64_t direct_smem_bytes(DirectPlan& pl, const DirectShape& s) {
  const int64_t CP = s.pool > 1 ? s.pool : pl.PT;
  const int64_t IH = (pl.TWY - 1) * CP * s.sh + (pl.PT - 1) * int64_t(s.sh) + (pl.RB - 1) * int64_t(s.dh) + 1;
  const int64_t IW = (pl.TWX - 1) * CP * s.sw + (pl.PT - 1) * int64_t(s.sw) + (pl.SB - 1) * int64_t(s.dw) + 1;
  const int64_t xs = round_up64(s.dw_mode ? IH * IW * pl.KB : IH * IW * pl.CB, 4);
  const int64_t wsz = s.dw_mode ? int64_t(pl.RB) * pl.SB * pl.KB : int64_t(pl.CB) * pl.RB * pl.SB * pl.KT;
  if (IH * IW > (int64_t(1) << 30)) return std::numeric_limits<int64_t>::max();
  pl.IH = int(IH);
  pl.IW = int(IW);
  pl.xs_elems = int(std::min<int64_t>(xs, int64_t(1) << 30));
  return (xs + wsz) * s.elem;
}

// Fit a plan with thread patch PT into the shared-memory budget; false if even
// one cell with a 1 x 1 filter chunk does not fit (large strides with PT > 1).
inline bool fit_direct(DirectPlan& pl, const DirectShape& s, int PT) {
  pl.PT = PT;
  pl.SP = s.pool > 1 ? s.pool / PT : 1;
  pl.KT = direct_kt(PT);
  const int64_t CY = s.pool > 1 ? s.PO : ceil_div64(s.P, PT);
  const int64_t CX = s.pool > 1 ? s.QO : ceil_div64(s.Q, PT);
  pl.KB = s.dw_mode ? int(std::min<int64_t>(32, round_up64(s.K, pl.KT))) : pl.KT;
  auto nsub = [&] { return s.dw_mode ? pl.KB / pl.KT : 1; };
  pl.TWX = std::min(pow2_at_least(CX), std::min(32, kThreads / nsub()));
  pl.TWY = std::min(pow2_at_least(CY), kThreads / nsub() / pl.TWX);
  pl.RB = s.R;
  pl.SB = s.S;
  pl.CB = 1;
  const int64_t budget = kDirectSmemBudget;
  for (;;) {
    pl.CB = 1;
    int64_t bytes = direct_smem_bytes(pl, s);
    if (!s.dw_mode && bytes <= budget) {
      // as many input channels per pass as fit (a multiple of the vector width when it can be)
      const int64_t per_c = (int64_t(pl.IH) * pl.IW + int64_t(pl.RB) * pl.SB * pl.KT) * s.elem;
      int64_t cb = std::min<int64_t>(std::max(s.CG, 1), (budget - 16 * s.elem) / per_c);
      if (s.vec_ok && s.CG % s.vec == 0 && cb >= s.vec) cb = cb / s.vec * s.vec;
      pl.CB = int(std::max<int64_t>(cb, 1));
      bytes = direct_smem_bytes(pl, s);
    }
    if (bytes <= budget) break;
    if (pl.TWY * pl.TWX * nsub() > 64) {
      if (pl.TWY >= pl.TWX) pl.TWY /= 2; else pl.TWX /= 2;
    } else if (s.dw_mode && pl.KB > pl.KT) {
      pl.KB = int(round_up64(pl.KB / 2, pl.KT));
    } else if (pl.RB > 1) {
      pl.RB = ceil_div(pl.RB, 2);
    } else if (pl.SB > 1) {
      pl.SB = ceil_div(pl.SB, 2);
    } else if (pl.TWY > 1 || pl.TWX > 1) {
      if (pl.TWY >= pl.TWX) pl.TWY /= 2; else pl.TWX /= 2;
    } else {
      return false;
    }
  }
  return true;
}

inline void finish_direct(DirectPlan& pl, const DirectShape& s) {
  const int64_t CY = s.pool > 1 ? s.PO : ceil_div64(s.P, pl.PT);
  const int64_t CX = s.pool > 1 ? s.QO : ceil_div64(s.Q, pl.PT);
  const int64_t want = 2 * int64_t(sm_count());
  auto blocks = [&] {
    pl.nKBg = s.dw_mode ? 1 : int(ceil_div64(s.KG, pl.KB));
    pl.nKB = s.dw_mode ? int(ceil_div64(s.K, pl.KB)) : s.groups * pl.nKBg;
    pl.tilesX = int(ceil_div64(CX, pl.TWX));
    pl.nTiles = int(ceil_div64(CY, pl.TWY)) * pl.tilesX;
    return s.N * pl.nTiles * pl.nKB;
  };
  if (!s.dw_mode) {
    const bool x_once = pl.CB >= s.CG && pl.RB == s.R && pl.SB == s.S && pl.SP == 1;
    // one input tile serves up to 64 channels; split them while the device would be idle
    pl.KB = x_once ? int(std::min<int64_t>(64, round_up64(std::max(s.KG, 1), pl.KT))) : pl.KT;
    while (pl.KB > pl.KT && blocks() < want) pl.KB = int(round_up64(pl.KB / 2, pl.KT));
  }
  const int nsub = s.dw_mode ? pl.KB / pl.KT : 1;
  while (blocks() < want && pl.TWY * pl.TWX * nsub > 64) {
    if (pl.TWY >= pl.TWX) pl.TWY /= 2; else pl.TWX /= 2;
  }
  pl.nBlocks = blocks();
  pl.smem = size_t(direct_smem_bytes(pl, s));
  pl.threads = nsub * pl.TWY * pl.TWX;
  pl.vec_x = s.vec_ok && (s.dw_mode ? (s.KG == 1 && s.K % s.vec == 0 && pl.KB % s.vec == 0)
                                    : (s.CG % s.vec == 0 && pl.CB % s.vec == 0));
}

// Thread patch PT for a pool: the largest of 4, 3, 2 dividing it (pool == 1: 2).
inline int preferred_pt(int pool) {
  if (pool == 1) return 2;
  for (int pt : {4, 3, 2})
    if (pool % pt == 0) return pt;
  return 1;
}

// The plan for a shape: the preferred thread patch, else PT = 1 (whose
// smallest tile is a single input pixel per pass, so it always fits).
inline DirectPlan plan_direct(const DirectShape& s) {
  DirectPlan pl{};
  if (!fit_direct(pl, s, preferred_pt(s.pool))) {
    TORCH_CHECK(fit_direct(pl, s, 1), "fastconv (cuda): no shared-memory tiling fits this conv");
  }
  finish_direct(pl, s);
  return pl;
}

// --------------------------------------------------------------------------- launcher

template <typename T, typename Src, int PT>
void launch_direct_pt(const DirectArgs<T, Src>& a, const DirectPlan& pl, bool dw_mode, cudaStream_t stream) {
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(pl.nBlocks, kMaxGrid));
  if (dw_mode) {
    direct_conv_kernel<T, Src, PT, true><<<grid, pl.threads, pl.smem, stream>>>(a);
  } else {
    direct_conv_kernel<T, Src, PT, false><<<grid, pl.threads, pl.smem, stream>>>(a);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Fill a's tiling from the plan and launch. Tensor sources (the forward) have
// every thread patch 1..4; the dgrad source only 1 and 2 (pool == 1 there).
template <typename T, typename Src>
void launch_direct(DirectArgs<T, Src> a, const DirectPlan& pl, const DirectShape& s, cudaStream_t stream) {
  TORCH_INTERNAL_ASSERT(pl.smem <= size_t(kDirectSmemBudget) && pl.threads <= kThreads && pl.threads > 0);
  a.vec_x = pl.vec_x;
  a.SP = pl.SP;
  a.TWY = pl.TWY;
  a.TWX = pl.TWX;
  a.tilesX = pl.tilesX;
  a.nTiles = pl.nTiles;
  a.KB = pl.KB;
  a.nKB = pl.nKB;
  a.nKBg = pl.nKBg;
  a.CB = pl.CB;
  a.RB = pl.RB;
  a.SB = pl.SB;
  a.IH = pl.IH;
  a.IW = pl.IW;
  a.xs_elems = pl.xs_elems;
  a.nBlocks = pl.nBlocks;
  if (pl.nBlocks == 0) return;
  switch (pl.PT) {
    case 1: launch_direct_pt<T, Src, 1>(a, pl, s.dw_mode, stream); break;
    case 2: launch_direct_pt<T, Src, 2>(a, pl, s.dw_mode, stream); break;
    default:
      if constexpr (Src::kIsTensor) {
        if (pl.PT == 3) {
          launch_direct_pt<T, Src, 3>(a, pl, s.dw_mode, stream);
        } else {
          launch_direct_pt<T, Src, 4>(a, pl, s.dw_mode, stream);
        }
      } else {
        TORCH_INTERNAL_ASSERT(false, "fastconv (cuda): thread patch ", pl.PT, " for a dgrad source");
      }
  }
}

// The kernels are compiled once per dtype in conv_direct_<dtype>.cu (four
// translation units that build in parallel); every other file only links them.
#define FASTCONV_DIRECT_INSTANCES(PREFIX, T)                                                          \
  PREFIX template void launch_direct<T, TensorSource<T>>(DirectArgs<T, TensorSource<T>>, const DirectPlan&, \
                                                         const DirectShape&, cudaStream_t);           \
  PREFIX template void launch_direct<T, UnpoolSource<T>>(DirectArgs<T, UnpoolSource<T>>, const DirectPlan&, \
                                                         const DirectShape&, cudaStream_t);

FASTCONV_DIRECT_INSTANCES(extern, float)
FASTCONV_DIRECT_INSTANCES(extern, double)
FASTCONV_DIRECT_INSTANCES(extern, c10::Half)
FASTCONV_DIRECT_INSTANCES(extern, c10::BFloat16)

}  // namespace cuda
}  // namespace fastconv
