// The tile convolution with the fused bias / relu / max-pool epilogue.
//
//   y[n,k,po,qo] = act(max_{di,dj < pool} C[n,k,po*pool+di,qo*pool+dj] + b[k])
//   C[n,k,p,q]   = sum_{c < CG, r < R, s < S} src[n, g*CG+c, p*sh-pt+r*dh, q*sw-pl+s*dw] * w[k,c,r,s]
//   idx          = di*pool + dj of the max (pool_better: ties -> first, NaN wins)
//   with g = k / KG the group of k. pool == 1 stores C (+ b, act) itself.
//
// It runs the fused forward (src = x) and dgrad (src = the zero-inserted,
// unpooled dC, w flipped and transposed per group, stride 1; see conv2d_bwd.cu).
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

#include "conv2d_sources.cuh"
#include "conv2d_tile_plan.h"

namespace fastconv {
namespace cuda {

template <typename T, typename Src>
struct TileArgs {
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
  // Tiling (TilePlan)
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
__device__ __forceinline__ void load_x_reg(acc_t<T>* xs, const TileArgs<T, Src>& a, int64_t n,
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
__device__ __forceinline__ void load_x_dw(acc_t<T>* xs, const TileArgs<T, Src>& a, int64_t n,
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
__global__ void __launch_bounds__(kThreads) conv2d_tile_kernel(const TileArgs<T, Src> a) {
  using A = acc_t<T>;
  constexpr int KT = tile_kt(PT);
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

// --------------------------------------------------------------------------- launcher

// The planner's view of a launch, read off its arguments (dw_mode: one input
// channel per group, the DW layout).
template <typename T, typename Src>
inline TileShape tile_shape(const TileArgs<T, Src>& a, int64_t N, int groups, bool vec_ok) {
  TileShape s{};
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

template <typename T, typename Src, int PT>
void launch_tile_pt(const TileArgs<T, Src>& a, const TilePlan& pl, bool dw_mode, cudaStream_t stream) {
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(pl.nBlocks, kMaxGrid));
  if (dw_mode) {
    conv2d_tile_kernel<T, Src, PT, true><<<grid, pl.threads, pl.smem, stream>>>(a);
  } else {
    conv2d_tile_kernel<T, Src, PT, false><<<grid, pl.threads, pl.smem, stream>>>(a);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Fill a's tiling from the plan and launch. Tensor sources (the forward) have
// every thread patch 1..4; the dgrad source only 1 and 2 (pool == 1 there).
template <typename T, typename Src>
void launch_tile(TileArgs<T, Src> a, const TilePlan& pl, const TileShape& s, cudaStream_t stream) {
  TORCH_INTERNAL_ASSERT(pl.smem <= size_t(kSmemBudget) && pl.threads <= kThreads && pl.threads > 0);
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
    case 1: launch_tile_pt<T, Src, 1>(a, pl, s.dw_mode, stream); break;
    case 2: launch_tile_pt<T, Src, 2>(a, pl, s.dw_mode, stream); break;
    default:
      if constexpr (Src::kIsTensor) {
        if (pl.PT == 3) {
          launch_tile_pt<T, Src, 3>(a, pl, s.dw_mode, stream);
        } else {
          launch_tile_pt<T, Src, 4>(a, pl, s.dw_mode, stream);
        }
      } else {
        TORCH_INTERNAL_ASSERT(false, "fastconv (cuda): thread patch ", pl.PT, " for a dgrad source");
      }
  }
}

// One tile-conv launch for geometry g (the forward's conv, or the transposed
// conv of dgrad_geom): the arguments from g and the tensors, the plan, the
// launch. src_cl: src is channels-fastest; vec_ok: it also allows 16-byte
// channel loads (channels_vec_ok).
template <typename T, typename Src>
void conv2d_tile(const ConvGeom& g, const Src& src, bool src_cl, bool vec_ok, const T* w, const T* bias,
                 at::Tensor& y, uint8_t* idx, cudaStream_t stream) {
  TileArgs<T, Src> a{};
  a.src = src;
  a.w = w;
  a.bias = bias;
  a.y = y.mutable_data_ptr<T>();
  a.idx = idx;
  a.ysN = y.stride(0);
  a.ysK = y.stride(1);
  a.ysH = y.stride(2);
  a.ysW = y.stride(3);
  set_conv_dims(a, g);
  a.PO = int(g.PO);
  a.QO = int(g.QO);
  a.pool = int(g.pool);
  a.relu = g.relu;
  a.src_cl = src_cl;
  const TileShape s = tile_shape(a, g.N, int(g.groups), vec_ok);
  launch_tile(a, plan_tile(s), s, stream);
}

// The kernels are compiled once per dtype in conv2d_tile_<dtype>.cu (four
// translation units that build in parallel); every other file only links them.
#define FASTCONV_TILE_INSTANCES(PREFIX, T)                                                          \
  PREFIX template void launch_tile<T, TensorSource<T>>(TileArgs<T, TensorSource<T>>, const TilePlan&, \
                                                         const TileShape&, cudaStream_t);           \
  PREFIX template void launch_tile<T, UnpoolSource<T>>(TileArgs<T, UnpoolSource<T>>, const TilePlan&, \
                                                         const TileShape&, cudaStream_t);

FASTCONV_TILE_INSTANCES(extern, float)
FASTCONV_TILE_INSTANCES(extern, double)
FASTCONV_TILE_INSTANCES(extern, c10::Half)
FASTCONV_TILE_INSTANCES(extern, c10::BFloat16)

}  // namespace cuda
}  // namespace fastconv
