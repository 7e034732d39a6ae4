// Row kernels around the ATen conv core (conv2d_aten.cpp), on channels-last rows.
// Included once per instruction set through isa_each.h; every function carries
// FASTCONV_ISA_TARGET (see conv2d_smallc_kernel.h for why). No include guard.
//
//   pool_row:    c [p rows][Q][K] conv outputs of rows po*p .. po*p+p-1 (row stride Q*K)
//                -> y[qo][k] = act(max_{di,dj} c[di][qo*p+dj][k] + b[k]),
//                   i[qo][k] = di*p + dj of that max (as T; ties -> first, NaN wins)
//   unpool_row:  g[qo][k] pooled gradient, i[qo][k] window index
//                -> dC[di][qo*p+dj][k] = g[qo][k] * (i[qo][k] == di*p+dj), 0 past QO*p

namespace FASTCONV_ISA_NS {

#include "vec_io_kernel.h"

// One vector of channels k .. k+L-1 of one pooled output.
template <typename T>
FASTCONV_INLINE FASTCONV_ISA_TARGET void pool_vec(const T* w0, int64_t ldr, int64_t K, int64_t p, const T* bias,
                                                  bool relu, T* yo, T* io, int64_t k) {
  using V = Vec<T>;
  V m = load(w0 + k);
  V id = V{};
  for (int64_t di = 0; di < p; ++di)
    for (int64_t dj = 0; dj < p; ++dj) {
      if (di == 0 && dj == 0) continue;
      const V a = load(w0 + di * ldr + dj * K + k);
      const auto take = (a > m) | (a != a);
      m = take ? a : m;
      id = take ? (V{} + static_cast<T>(di * p + dj)) : id;
    }
  if (bias) m += load(bias + k);
  if (relu) m = (m < V{}) ? V{} : m;
  store(yo + k, m);
  store(io + k, id);
}

// Scalar version for channel counts below one vector.
template <typename T>
FASTCONV_INLINE FASTCONV_ISA_TARGET void pool_one(const T* w0, int64_t ldr, int64_t K, int64_t p, const T* bias,
                                                  bool relu, T* yo, T* io, int64_t k) {
  T m = w0[k];
  T id = 0;
  for (int64_t di = 0; di < p; ++di)
    for (int64_t dj = 0; dj < p; ++dj) {
      const T a = w0[di * ldr + dj * K + k];
      const bool take = beats(a, m);
      m = take ? a : m;
      id = take ? static_cast<T>(di * p + dj) : id;
    }
  if (bias) m += bias[k];
  if (relu && m < T(0)) m = T(0);
  yo[k] = m;
  io[k] = id;
}

template <typename T>
FASTCONV_ISA_TARGET void pool_row(const T* c, int64_t Q, int64_t K, int64_t QO, int64_t p, const T* bias, bool relu,
                                  T* y, T* i) {
  constexpr int64_t L = kNLanes<T>;  // the ISA's native vector (vec_io_kernel.h)
  const int64_t ldr = Q * K;
  for (int64_t qo = 0; qo < QO; ++qo) {
    const T* w0 = c + qo * p * K;
    T* yo = y + qo * K;
    T* io = i + qo * K;
    if (K < L) {
      for (int64_t k = 0; k < K; ++k) pool_one(w0, ldr, K, p, bias, relu, yo, io, k);
      continue;
    }
    for (int64_t k = 0; k + L <= K; k += L) pool_vec(w0, ldr, K, p, bias, relu, yo, io, k);
    if (K % L) pool_vec(w0, ldr, K, p, bias, relu, yo, io, K - L);  // overlapping tail: same values
  }
}

template <typename T>
FASTCONV_INLINE FASTCONV_ISA_TARGET void unpool_vec(const T* g, const T* i, T jj, T* o, int64_t k) {
  using V = Vec<T>;
  store(o + k, (load(i + k) == jj) ? load(g + k) : V{});
}

template <typename T>
FASTCONV_ISA_TARGET void unpool_row(const T* g, const T* i, int64_t Q, int64_t K, int64_t QO, int64_t p, T* dc) {
  constexpr int64_t L = kNLanes<T>;  // the ISA's native vector (vec_io_kernel.h)
  for (int64_t di = 0; di < p; ++di) {
    T* row = dc + di * Q * K;
    for (int64_t qo = 0; qo < QO; ++qo) {
      const T* gq = g + qo * K;
      const T* iq = i + qo * K;
      for (int64_t dj = 0; dj < p; ++dj) {
        T* o = row + (qo * p + dj) * K;
        const T jj = static_cast<T>(di * p + dj);
        if (K < L) {
          for (int64_t k = 0; k < K; ++k) o[k] = iq[k] == jj ? gq[k] : T(0);
          continue;
        }
        for (int64_t k = 0; k + L <= K; k += L) unpool_vec(gq, iq, jj, o, k);
        if (K % L) unpool_vec(gq, iq, jj, o, K - L);
      }
    }
    std::fill(row + QO * p * K, row + Q * K, T(0));
  }
}

}  // namespace FASTCONV_ISA_NS
