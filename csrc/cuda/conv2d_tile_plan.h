// The host planner of the tile convolution (conv2d_tile.cuh): how a launch
// splits one conv into blocks, and how much of the input, filter and channel
// ranges one shared-memory pass holds.
//
//   plan_tile(TileShape) -> TilePlan
//     1. thread patch PT: the largest of 4, 3, 2 dividing the pool (pool == 1: 2),
//        else 1 (whose smallest tile, one input pixel per pass, always fits);
//     2. fit_tile: the largest cell tile TWY x TWX (<= kThreads threads), then
//        as many input channels per pass as fit kSmemBudget; shrink tile, DW
//        channel block, filter-row and filter-col chunks in that order until
//        the tile + weights fit;
//     3. finish_tile: when the whole reduction fits one pass, one input tile
//        serves up to 64 output channels; then split channel blocks and tiles
//        while the grid would leave the device idle (< 2 blocks per SM).
#pragma once

#include "common.cuh"

namespace fastconv {
namespace cuda {

// Output channels one thread accumulates for a PT x PT patch (<= 32 accumulators).
__host__ __device__ constexpr int tile_kt(int PT) { return PT <= 2 ? 8 : 4; }

// The shape a plan is made for (forward: the conv; dgrad: the transposed conv).
struct TileShape {
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


struct TilePlan {
  int PT, SP, KT;
  int TWY, TWX, KB, CB, RB, SB;
  int IH, IW, xs_elems, threads;
  int tilesX, nTiles, nKB, nKBg;
  int64_t nBlocks;
  size_t smem;
  bool vec_x;
};

// Input tile rows / cols and shared-memory bytes of a (partial) plan.
inline int64_t tile_smem_bytes(TilePlan& pl, const TileShape& s) {
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
inline bool fit_tile(TilePlan& pl, const TileShape& s, int PT) {
  pl.PT = PT;
  pl.SP = s.pool > 1 ? s.pool / PT : 1;
  pl.KT = tile_kt(PT);
  const int64_t CY = s.pool > 1 ? s.PO : ceil_div64(s.P, PT);
  const int64_t CX = s.pool > 1 ? s.QO : ceil_div64(s.Q, PT);
  pl.KB = s.dw_mode ? int(std::min<int64_t>(32, round_up64(s.K, pl.KT))) : pl.KT;
  auto nsub = [&] { return s.dw_mode ? pl.KB / pl.KT : 1; };
  pl.TWX = std::min(pow2_at_least(CX), std::min(32, kThreads / nsub()));
  pl.TWY = std::min(pow2_at_least(CY), kThreads / nsub() / pl.TWX);
  pl.RB = s.R;
  pl.SB = s.S;
  pl.CB = 1;
  const int64_t budget = kSmemBudget;
  for (;;) {
    pl.CB = 1;
    int64_t bytes = tile_smem_bytes(pl, s);
    if (!s.dw_mode && bytes <= budget) {
      // as many input channels per pass as fit (a multiple of the vector width when it can be)
      const int64_t per_c = (int64_t(pl.IH) * pl.IW + int64_t(pl.RB) * pl.SB * pl.KT) * s.elem;
      int64_t cb = std::min<int64_t>(std::max(s.CG, 1), (budget - 16 * s.elem) / per_c);
      if (s.vec_ok && s.CG % s.vec == 0 && cb >= s.vec) cb = cb / s.vec * s.vec;
      pl.CB = int(std::max<int64_t>(cb, 1));
      bytes = tile_smem_bytes(pl, s);
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

inline void finish_tile(TilePlan& pl, const TileShape& s) {
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
  pl.smem = size_t(tile_smem_bytes(pl, s));
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
inline TilePlan plan_tile(const TileShape& s) {
  TilePlan pl{};
  if (!fit_tile(pl, s, preferred_pt(s.pool))) {
    TORCH_CHECK(fit_tile(pl, s, 1), "fastconv (cuda): no shared-memory tiling fits this conv");
  }
  finish_tile(pl, s);
  return pl;
}

}  // namespace cuda
}  // namespace fastconv
