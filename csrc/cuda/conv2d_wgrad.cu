// dw and db of the fused conv (docs/design.md §2.2), reading the conv-output
// gradient dC through the unpool prologue (conv2d_sources.cuh):
//
//   dw[k,c,r,s] = sum_{n,p,q} dC[n,k,p,q] * x[n, g*CG+c, p*sh-pt+r*dh, q*sw-pl+s*dw]
//   db[k]       = sum_{n,p,q} dC[n,k,p,q]
//
// A reduction over N*P*Q per weight. wgrad_kernel splits it:
// a block owns an *entry block* (KB output channels x CB input channels x RB x
// SB taps; DW: KB channels x RB x SB taps) and a *slice* of the (image,
// conv-output tile) pairs. Per tile it stages dC [pixel][channel] and the x
// tile in shared memory; each thread owns KT = 8 channels of one (c, r, s)
// (reading dC as 16-byte broadcasts) and one of PS row-interleaved pixel
// subsets, and adds its sums into shared-memory accumulators it alone owns.
// Every (slice, subset) writes its partial sums to its own row of a workspace
// [slices * PS][E] (E = K*CG*R*S weights + K biases), which reduce_kernel sums
// in a fixed order: deterministic, no atomics.
#include "conv2d.cuh"

#include <vector>

namespace fastconv {
namespace cuda {
namespace {

constexpr int kWgradKT = 8;

template <typename T>
struct WgradArgs {
  // Pointers
  TensorSource<T> x;              // [N, C, H, W]
  UnpoolSource<T> dc;             // dC [N, K, P, Q] (zh = zw = 1)
  acc_t<T>* part;                 // [nSlices * PS][E] partial sums
  // Dimensions
  int K, KG, CG, R, S, P, Q;
  int sh, sw, dh, dw, pt, pl;
  int64_t E;                      // K*CG*R*S + K: dw entries, then db entries
  bool need_dw, need_db;
  bool x_cl, dc_cl;               // channels-fastest tensors: tile loads walk channels first
  bool dw_mode;                   // CG == 1 (same split as the tile kernel's DW layout)
  // Tiling
  int TP, TQ, tilesX, nTiles;     // conv-output tile, tiles across, tiles per image
  int KB, CB, RB, SB, IH, IW;     // entry block; x tile
  int nKBg, nCB, nRB, nSB, nEB;   // entry blocks: per group (REG), chunks, in all
  int PS;                         // pixel subsets per block
  int64_t nTilesAll, nSlices, nBlocks;
  int dcs_elems, xs_elems, accs_elems;
};

template <typename T, bool DW>
__global__ void __launch_bounds__(kThreads) wgrad_kernel(const WgradArgs<T> a) {
  using A = acc_t<T>;
  constexpr int KT = kWgradKT;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* dcs = reinterpret_cast<A*>(smem_raw);   // [TP*TQ][KB]
  A* xs = dcs + a.dcs_elems;                 // DW: [IH][IW][KB], REG: [CB][IH][IW]
  A* accs = xs + a.xs_elems;                 // [PS][KB][crs_n]
  A* dbs = accs + a.accs_elems;              // [KB]

  const int NT = blockDim.x, tid = threadIdx.x;
  const int RSB = a.RB * a.SB;
  const int crs_n = DW ? RSB : a.CB * RSB;   // accumulator entries per channel
  const int nent = a.KB * crs_n;
  const int ntask = (a.KB / KT) * crs_n;
  const int npix = a.TP * a.TQ;
  const int plane = a.IH * a.IW;

  for (int64_t blk = blockIdx.x; blk < a.nBlocks; blk += gridDim.x) {
    const int eb = int(blk % a.nEB);
    const int64_t slice = blk / a.nEB;
    int t = eb;
    const int sbi = t % a.nSB;
    t /= a.nSB;
    const int rbi = t % a.nRB;
    t /= a.nRB;
    int kstart, kend, cbase = 0, c0 = 0, cbi = 0;
    if (DW) {
      kstart = t * a.KB;
      kend = min(a.K, kstart + a.KB);
    } else {
      cbi = t % a.nCB;
      const int kbx = t / a.nCB, g = kbx / a.nKBg;
      kstart = g * a.KG + (kbx % a.nKBg) * a.KB;
      kend = min(kstart + a.KB, (g + 1) * a.KG);
      cbase = g * a.CG;
      c0 = cbi * a.CB;
    }
    const int r0 = rbi * a.RB, s0 = sbi * a.SB;
    const int cnum = DW ? 1 : min(a.CB, a.CG - c0);
    const int rnum = min(a.RB, a.R - r0), snum = min(a.SB, a.S - s0);
    const bool do_db = a.need_db && cbi == 0 && rbi == 0 && sbi == 0;

    if (a.need_dw)
      for (int e = tid; e < a.PS * nent; e += NT) accs[e] = A(0);
    for (int e = tid; e < a.KB; e += NT) dbs[e] = A(0);
    __syncthreads();

    for (int64_t tt = slice; tt < a.nTilesAll; tt += a.nSlices) {
      const int64_t n = tt / a.nTiles;
      const int tile = int(tt % a.nTiles);
      const int p0 = (tile / a.tilesX) * a.TP, q0 = (tile % a.tilesX) * a.TQ;
      const int vp = min(a.TP, a.P - p0), vq = min(a.TQ, a.Q - q0);
      // dC tile [pixel][slot]; slots past kend and pixels past the output hold 0
      if (a.dc_cl) {  // 4 slots of one pixel per thread: one window decode, one 16-byte store
        const int groups = a.KB / 4;
        for (int e = tid; e < npix * groups; e += NT) {
          const int slot = (e % groups) * 4, pix = e / groups;
          const int py = pix / a.TQ;
          const auto px = a.dc.pixel(n, p0 + py, q0 + pix - py * a.TQ);
          A v[4];
#pragma unroll
          for (int j = 0; j < 4; ++j) v[j] = kstart + slot + j < kend ? a.dc.read(px, kstart + slot + j) : A(0);
          store_smem<4>(dcs + pix * a.KB + slot, v);
        }
      } else {
        for (int e = tid; e < npix * a.KB; e += NT) {
          const int slot = e / npix, pix = e % npix, k = kstart + slot;
          dcs[pix * a.KB + slot] = k < kend ? a.dc.at(n, k, p0 + pix / a.TQ, q0 + pix % a.TQ) : A(0);
        }
      }
      if (a.need_dw) {
        const int h0 = p0 * a.sh - a.pt + r0 * a.dh, w0 = q0 * a.sw - a.pl + s0 * a.dw;
        if (DW) {
          for (int e = tid; e < plane * a.KB; e += NT) {
            const int slot = a.x_cl ? e % a.KB : e / plane, pix = a.x_cl ? e / a.KB : e % plane;
            const int k = kstart + slot;
            xs[pix * a.KB + slot] = k < kend ? a.x.at(n, k / a.KG, h0 + pix / a.IW, w0 + pix % a.IW) : A(0);
          }
        } else {
          for (int pix = tid; pix < plane; pix += NT) {
            const int iy = pix / a.IW;
            const auto px = a.x.pixel(n, h0 + iy, w0 + pix - iy * a.IW);
            for (int cb = 0; cb < cnum; ++cb) xs[cb * plane + pix] = a.x.read(px, cbase + c0 + cb);
          }
        }
      }
      __syncthreads();
      if (a.need_dw) {
        for (int u = tid; u < ntask * a.PS; u += NT) {
          const int task = u % ntask, ps = u / ntask;
          const int kt = task / crs_n, crs = task % crs_n;
          const int cb = DW ? 0 : crs / RSB, r = (crs % RSB) / a.SB, s = crs % a.SB;
          if (cb >= cnum || r >= rnum || s >= snum || kstart + kt * KT >= kend) continue;
          A acc[KT];
#pragma unroll
          for (int j = 0; j < KT; ++j) acc[j] = A(0);
          for (int py = ps; py < vp; py += a.PS) {
            const A* drow = dcs + py * a.TQ * a.KB + kt * KT;
            if (DW) {
              const A* xrow = xs + ((py * a.sh + r * a.dh) * a.IW + s * a.dw) * a.KB + kt * KT;
              for (int px = 0; px < vq; ++px) {
                A dv[KT], xv[KT];
                load_smem<KT>(drow + px * a.KB, dv);
                load_smem<KT>(xrow + px * a.sw * a.KB, xv);
#pragma unroll
                for (int j = 0; j < KT; ++j) acc[j] += dv[j] * xv[j];
              }
            } else {
              const A* xrow = xs + (cb * a.IH + py * a.sh + r * a.dh) * a.IW + s * a.dw;
              for (int px = 0; px < vq; ++px) {
                A dv[KT];
                load_smem<KT>(drow + px * a.KB, dv);
                const A xv = xrow[px * a.sw];
#pragma unroll
                for (int j = 0; j < KT; ++j) acc[j] += dv[j] * xv;
              }
            }
          }
          A* dst = accs + ps * nent + kt * KT * crs_n + crs;
#pragma unroll
          for (int j = 0; j < KT; ++j) dst[j * crs_n] += acc[j];
        }
      }
      if (do_db) {
        for (int slot = tid; slot < a.KB; slot += NT) {
          A sum = A(0);
          for (int py = 0; py < vp; ++py)
            for (int px = 0; px < vq; ++px) sum += dcs[(py * a.TQ + px) * a.KB + slot];
          dbs[slot] += sum;
        }
      }
      __syncthreads();
    }

    A* out = a.part + slice * a.PS * a.E;
    if (a.need_dw) {
      for (int u = tid; u < a.PS * nent; u += NT) {
        const int ps = u / nent, ent = u % nent;
        const int kk = ent / crs_n, crs = ent % crs_n;
        const int cb = DW ? 0 : crs / RSB, r = (crs % RSB) / a.SB, s = crs % a.SB;
        const int k = kstart + kk;
        if (k < kend && cb < cnum && r < rnum && s < snum)
          out[ps * a.E + (int64_t(k) * a.CG + c0 + cb) * a.R * a.S + (r0 + r) * a.S + s0 + s] = accs[u];
      }
    }
    if (do_db) {
      const int64_t db0 = int64_t(a.K) * a.CG * a.R * a.S;
      for (int u = tid; u < a.PS * a.KB; u += NT) {
        const int ps = u / a.KB, slot = u % a.KB, k = kstart + slot;
        if (k < kend) out[ps * a.E + db0 + k] = ps == 0 ? dbs[slot] : A(0);
      }
    }
    __syncthreads();  // the next entry block clears accs / dbs
  }
}

// out[e - e_begin] = sum over rows of part[row][e] for e in [e_begin, e_end),
// summed in a fixed order; entries below n_first go to first, the rest to second.
template <typename T>
__global__ void __launch_bounds__(kThreads) reduce_kernel(const acc_t<T>* part, int64_t rows, int64_t E,
                                                          int64_t e_begin, int64_t e_end, int64_t n_first,
                                                          T* first, T* second) {
  using A = acc_t<T>;
  constexpr int kX = 32, kY = kThreads / 32;
  __shared__ A red[kY][kX + 1];
  const int tx = threadIdx.x % kX, ty = threadIdx.x / kX;
  for (int64_t e0 = e_begin + int64_t(blockIdx.x) * kX; e0 < e_end; e0 += int64_t(gridDim.x) * kX) {
    const int64_t e = e0 + tx;
    A sum = A(0);
    if (e < e_end)
      for (int64_t r = ty; r < rows; r += kY) sum += part[r * E + e];
    red[ty][tx] = sum;
    __syncthreads();
    if (ty == 0 && e < e_end) {
      A total = A(0);
#pragma unroll
      for (int i = 0; i < kY; ++i) total += red[i][tx];
      if (e < n_first) {
        first[e] = static_cast<T>(total);
      } else {
        second[e - n_first] = static_cast<T>(total);
      }
    }
    __syncthreads();
  }
}

// --------------------------------------------------------------------------- wgrad planner

constexpr int64_t kWorkspaceBudget = int64_t(64) << 20;

struct WgradPlan {
  int TP, TQ, KB, CB, RB, SB, IH, IW, PS;
  int dcs_elems, xs_elems, accs_elems;
  size_t smem;
};

int64_t wgrad_smem_bytes(WgradPlan& pl, const ConvGeom& g, bool dw_mode, bool need_dw, int elem) {
  const int64_t IH = (pl.TP - 1) * g.sh + (pl.RB - 1) * g.dh + 1;
  const int64_t IW = (pl.TQ - 1) * g.sw + (pl.SB - 1) * g.dw + 1;
  if (IH * IW > (int64_t(1) << 30)) return std::numeric_limits<int64_t>::max();
  const int64_t crs_n = dw_mode ? int64_t(pl.RB) * pl.SB : int64_t(pl.CB) * pl.RB * pl.SB;
  const int64_t ntask = (pl.KB / kWgradKT) * crs_n;
  pl.PS = int(std::max<int64_t>(1, std::min<int64_t>(pl.TP, kThreads / std::max<int64_t>(ntask, 1))));
  pl.IH = int(IH);
  pl.IW = int(IW);
  pl.dcs_elems = int(round_up64(int64_t(pl.TP) * pl.TQ * pl.KB, 4));
  pl.xs_elems = need_dw ? int(round_up64(dw_mode ? IH * IW * pl.KB : IH * IW * pl.CB, 4)) : 0;
  pl.accs_elems = need_dw ? int(round_up64(pl.PS * pl.KB * crs_n, 4)) : 0;
  return (int64_t(pl.dcs_elems) + pl.xs_elems + pl.accs_elems + pl.KB) * elem;
}

WgradPlan plan_wgrad(const ConvGeom& g, bool dw_mode, bool need_dw, int elem) {
  WgradPlan pl{};
  pl.TQ = std::min(pow2_at_least(g.Q), 32);
  pl.TP = std::min(pow2_at_least(g.P), 128 / pl.TQ);
  pl.KB = int(std::min<int64_t>(32, round_up64(dw_mode ? g.K : g.KG, kWgradKT)));
  pl.CB = dw_mode || !need_dw ? 1 : int(std::max<int64_t>(g.CG, 1));
  pl.RB = need_dw ? int(g.R) : 1;
  pl.SB = need_dw ? int(g.S) : 1;
  for (;;) {
    if (wgrad_smem_bytes(pl, g, dw_mode, need_dw, elem) <= kSmemBudget) break;
    if (pl.CB > 8) {
      pl.CB = ceil_div(pl.CB, 2);
    } else if (pl.TP * pl.TQ > 64) {
      if (pl.TP >= pl.TQ) pl.TP /= 2; else pl.TQ /= 2;
    } else if (pl.CB > 1) {
      pl.CB = ceil_div(pl.CB, 2);
    } else if (pl.KB > kWgradKT) {
      pl.KB = int(round_up64(pl.KB / 2, kWgradKT));
    } else if (pl.RB > 1) {
      pl.RB = ceil_div(pl.RB, 2);
    } else if (pl.SB > 1) {
      pl.SB = ceil_div(pl.SB, 2);
    } else if (pl.TP * pl.TQ > 1) {
      if (pl.TP >= pl.TQ) pl.TP /= 2; else pl.TQ /= 2;
    } else {
      TORCH_CHECK(false, "fastconv (cuda): no shared-memory tiling fits this conv's weight gradient");
    }
  }
  pl.smem = size_t(wgrad_smem_bytes(pl, g, dw_mode, need_dw, elem));
  return pl;
}

// dw and / or db: wgrad_kernel into a workspace, then reduce_kernel.
template <typename T>
void wgrad(const ConvGeom& g, const at::Tensor& x, const UnpoolSource<T>& dc, bool dc_cl, bool need_dw,
           bool need_db, at::Tensor& dw, at::Tensor& db, cudaStream_t stream) {
  using A = acc_t<T>;
  const bool dw_mode = g.CG == 1;
  const WgradPlan pl = plan_wgrad(g, dw_mode, need_dw, int(sizeof(A)));
  WgradArgs<T> a{};
  a.x = tensor_source<T>(x);
  a.dc = dc;
  set_conv_dims(a, g);
  a.E = g.K * g.CG * g.R * g.S + g.K;
  a.need_dw = need_dw;
  a.need_db = need_db;
  a.x_cl = g.C > 1 && x.stride(1) == 1;
  a.dc_cl = dc_cl;
  a.dw_mode = dw_mode;
  a.TP = pl.TP;
  a.TQ = pl.TQ;
  a.tilesX = int(ceil_div64(g.Q, pl.TQ));
  a.nTiles = int(ceil_div64(g.P, pl.TP)) * a.tilesX;
  a.KB = pl.KB;
  a.CB = pl.CB;
  a.RB = pl.RB;
  a.SB = pl.SB;
  a.IH = pl.IH;
  a.IW = pl.IW;
  a.PS = pl.PS;
  a.nKBg = dw_mode ? 1 : int(ceil_div64(g.KG, pl.KB));
  a.nCB = dw_mode ? 1 : int(ceil_div64(std::max<int64_t>(g.CG, 1), pl.CB));
  a.nRB = int(ceil_div64(g.R, pl.RB));
  a.nSB = int(ceil_div64(g.S, pl.SB));
  if (!need_dw) a.nCB = a.nRB = a.nSB = 1;
  const int64_t nkb = dw_mode ? ceil_div64(g.K, pl.KB) : g.groups * a.nKBg;
  const int64_t neb = nkb * a.nCB * a.nRB * a.nSB;
  check_int_range(neb, "wgrad entry blocks");
  a.nEB = int(neb);
  a.nTilesAll = g.N * a.nTiles;
  const int64_t want = 4 * int64_t(sm_count());
  int64_t slices = std::min<int64_t>(a.nTilesAll, std::max<int64_t>(1, ceil_div64(want, a.nEB)));
  slices = std::max<int64_t>(1, std::min<int64_t>(slices, kWorkspaceBudget / (a.PS * a.E * int64_t(sizeof(A)))));
  a.nSlices = slices;
  a.nBlocks = a.nEB * slices;
  a.dcs_elems = pl.dcs_elems;
  a.xs_elems = pl.xs_elems;
  a.accs_elems = pl.accs_elems;

  const int64_t rows = slices * a.PS;
  at::Tensor part = at::empty({rows, a.E}, x.options().dtype(c10::CppTypeToScalarType<A>::value));
  a.part = part.mutable_data_ptr<A>();
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(a.nBlocks, kMaxGrid));
  TORCH_INTERNAL_ASSERT(pl.smem <= size_t(kSmemBudget));
  if (dw_mode) {
    wgrad_kernel<T, true><<<grid, kThreads, pl.smem, stream>>>(a);
  } else {
    wgrad_kernel<T, false><<<grid, kThreads, pl.smem, stream>>>(a);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const int64_t n_dw = g.K * g.CG * g.R * g.S;
  const int64_t e_begin = need_dw ? 0 : n_dw, e_end = need_db ? a.E : n_dw;
  if (e_end > e_begin) {
    const unsigned rgrid = static_cast<unsigned>(
        std::max<int64_t>(1, std::min<int64_t>(ceil_div64(e_end - e_begin, 32), int64_t(sm_count()) * 8)));
    reduce_kernel<T><<<rgrid, kThreads, 0, stream>>>(part.const_data_ptr<A>(), rows, a.E, e_begin, e_end, n_dw,
                                                     need_dw ? dw.mutable_data_ptr<T>() : nullptr,
                                                     need_db ? db.mutable_data_ptr<T>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

void conv2d_wgrad(const ConvGeom& g, const at::Tensor& x, const at::Tensor& dy, const at::Tensor& y,
                  const at::Tensor& idx, bool need_dw, bool need_db, at::Tensor& dw, at::Tensor& db) {
  const bool dc_cl = g.K > 1 && dy.stride(1) == 1;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv2d_wgrad_cuda", [&] {
    const auto dc = unpool_source<scalar_t>(dy, y, idx, g.relu, int(g.pool));
    wgrad<scalar_t>(g, x, dc, dc_cl, need_dw, need_db, dw, db, stream);
  });
}

}  // namespace cuda
}  // namespace fastconv
