// Device helpers shared by the CUDA kernels of csrc/cuda.
//
//   * acc_t<T>: the accumulator type (float for half / bfloat16 / float, double
//     for double);
//   * Vec<T, N>: N elements moved as one aligned load or store;
//   * pool_better: torch's max-pool rule (ties -> first in row-major order, NaN
//     wins, the last NaN in row-major order), for any scan order;
//   * load_smem / store_smem: runs of a shared-memory tile in 16-byte pieces;
//   * store_run: KT consecutive-channel outputs, vectorized when the layout and
//     the address allow it;
//   * host helpers: argument checks, the 16-byte-load condition, the device's
//     SM count, grid sizes for grid-stride loops.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "../common.h"

namespace fastconv {
namespace cuda {

template <typename T>
using acc_t = at::opmath_type<T>;

// Threads per block of every kernel here (launch bounds and planners agree on it).
constexpr int kThreads = 256;

// Most blocks a grid-stride kernel is launched with (gridDim.x may go to 2^31 - 1).
constexpr int64_t kMaxGrid = int64_t(1) << 30;

// Shared memory every planner here fits a block into: the default limit, no
// opt-in, leaving room for several blocks per SM.
constexpr int64_t kSmemBudget = 48 * 1024;

// N elements of T moved as one load / store; the address must be aligned to
// sizeof(Vec) (callers check with is_aligned).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

__host__ __device__ inline bool is_aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

__host__ __device__ inline int ceil_div(int a, int b) { return (a + b - 1) / b; }
__host__ __device__ inline int64_t ceil_div64(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int64_t round_up64(int64_t v, int64_t m) { return ceil_div64(v, m) * m; }

// The smallest power of two >= v (capped at 2^30).
inline int pow2_at_least(int64_t v) {
  int p = 1;
  while (p < v && p < (1 << 30)) p <<= 1;
  return p;
}

// ceil(a / b) for b > 0 and any sign of a.
__device__ __forceinline__ int ceil_div_signed(int a, int b) {
  return a >= 0 ? (a + b - 1) / b : -((-a) / b);
}

// Does candidate (v, vi) replace the running max (best, bi) of a pooling
// window? vi / bi are row-major positions inside the window. The result is
// what torch's scan `if (v > best || isnan(v))` in row-major order ends with:
// the first of equal maxima, or the last NaN when there is one. Starting from
// (best = -inf, bi = 0) it gives the same answer for any scan order.
template <typename A>
__device__ __forceinline__ bool pool_better(A v, int vi, A best, int bi) {
  if (isnan(v)) return !isnan(best) || vi > bi;
  if (isnan(best)) return false;
  return v > best || (v == best && vi < bi);
}

// relu that keeps NaN (like torch.relu).
template <typename A>
__device__ __forceinline__ A relu_keep_nan(A v) {
  return (v > A(0) || isnan(v)) ? v : A(0);
}

// out[0..KT) = p[0..KT) from shared memory, in 16-byte pieces. p must be
// 16-byte aligned (every caller's offsets are multiples of KT, a multiple of 4).
template <int KT, typename A>
__device__ __forceinline__ void load_smem(const A* p, A (&out)[KT]) {
  constexpr int V = 16 / int(sizeof(A));
  static_assert(KT % V == 0, "KT must fill whole 16-byte pieces");
#pragma unroll
  for (int i = 0; i < KT; i += V) {
    const Vec<A, V> t = *reinterpret_cast<const Vec<A, V>*>(p + i);
#pragma unroll
    for (int j = 0; j < V; ++j) out[i + j] = t.v[j];
  }
}

// p[0..N) = v[0..N) into shared memory, in 16-byte pieces (p 16-byte aligned).
template <int N, typename A>
__device__ __forceinline__ void store_smem(A* p, const A (&v)[N]) {
  constexpr int V = 16 / int(sizeof(A));
  static_assert(N % V == 0, "N must fill whole 16-byte pieces");
#pragma unroll
  for (int i = 0; i < N; i += V) {
    Vec<A, V> t;
#pragma unroll
    for (int j = 0; j < V; ++j) t.v[j] = v[i + j];
    *reinterpret_cast<Vec<A, V>*>(p + i) = t;
  }
}

// Store vals[0..count) at p[0], p[stride], ...: one or more 16-byte (or one
// KT-wide) vector stores when the run is whole, contiguous and aligned,
// scalar stores otherwise.
template <int KT, typename T>
__device__ __forceinline__ void store_run(T* p, int64_t stride, const T (&vals)[KT], int count) {
  constexpr int kBytes = KT * int(sizeof(T));
  if (count == KT && stride == 1) {
    if constexpr (kBytes >= 16 && kBytes % 16 == 0) {
      constexpr int V = 16 / int(sizeof(T));
      if (is_aligned(p, 16)) {
#pragma unroll
        for (int i = 0; i < KT; i += V) {
          Vec<T, V> t;
#pragma unroll
          for (int j = 0; j < V; ++j) t.v[j] = vals[i + j];
          *reinterpret_cast<Vec<T, V>*>(p + i) = t;
        }
        return;
      }
    } else if constexpr (kBytes < 16 && (kBytes & (kBytes - 1)) == 0) {
      if (is_aligned(p, kBytes)) {
        Vec<T, KT> t;
#pragma unroll
        for (int j = 0; j < KT; ++j) t.v[j] = vals[j];
        *reinterpret_cast<Vec<T, KT>*>(p) = t;
        return;
      }
    }
  }
#pragma unroll
  for (int j = 0; j < KT; ++j)
    if (j < count) p[j * stride] = vals[j];
}

inline int sm_count() {
  return at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
}

// Blocks for a grid-stride loop over `work` items of `per_block` each: enough
// to fill the device several times over, never more than the work.
inline unsigned grid_for(int64_t work, int64_t per_block = kThreads) {
  const int64_t want = ceil_div64(std::max<int64_t>(work, 1), per_block);
  const int64_t cap = int64_t(sm_count()) * 32;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(want, cap)));
}

// Every tensor argument of a CUDA kernel entry: defined, on x's CUDA device, of x's dtype.
inline void check_cuda_like(const at::Tensor& t, const char* name, const at::Tensor& x, const char* op) {
  TORCH_CHECK(t.defined(), "fastconv_C::", op, ": ", name, " is undefined");
  TORCH_CHECK(t.is_cuda() && t.device() == x.device(), "fastconv_C::", op, ": ", name,
              " must be on the CUDA device of the input (", x.device(), "), got ", t.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "fastconv_C::", op, ": ", name, " must have dtype ",
              x.scalar_type(), ", got ", t.scalar_type());
}

// True when t's channels are innermost with 16-byte aligned pixels: the
// condition (with channel counts the planners check) for 16-byte channel loads.
inline bool channels_vec_ok(const at::Tensor& t) {
  const int64_t V = 16 / int64_t(t.element_size());
  return t.dim() == 4 && t.stride(1) == 1 && t.stride(0) % V == 0 && t.stride(2) % V == 0 &&
         t.stride(3) % V == 0 && is_aligned(t.const_data_ptr(), 16);
}

inline void check_int_range(int64_t v, const char* what) {
  TORCH_CHECK(v >= 0 && v <= std::numeric_limits<int>::max(), "fastconv (cuda): ", what, " = ", v,
              " does not fit the kernels' 32-bit size fields");
}

// The conv sizes every conv kernel reads, into the int fields of a launch-
// argument struct (TileArgs, WgradArgs; after check_conv_sizes). The structs
// keep their own field order: it is the kernels' parameter layout.
template <typename Args>
void set_conv_dims(Args& a, const ConvGeom& g) {
  a.K = int(g.K);
  a.KG = int(g.KG);
  a.CG = int(g.CG);
  a.R = int(g.R);
  a.S = int(g.S);
  a.P = int(g.P);
  a.Q = int(g.Q);
  a.sh = int(g.sh);
  a.sw = int(g.sw);
  a.dh = int(g.dh);
  a.dw = int(g.dw);
  a.pt = int(g.pt);
  a.pl = int(g.pl);
}

// Every size of a conv that the kernels keep in an int field (the Python
// backend declines larger calls first, see fastconv/backends/cuda.py).
inline void check_conv_sizes(const ConvGeom& g) {
  for (int64_t v : {g.C, g.H, g.W, g.K, g.R, g.S, g.P, g.Q, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, g.groups})
    check_int_range(v, "a conv size");
}

}  // namespace cuda
}  // namespace fastconv
