// The CPU conv2d's private interface: the entry points (conv2d.cpp) and its two cores,
// the small-C direct kernel (conv2d_smallc.cpp) and the ATen-core path (conv2d_aten.cpp),
// plus the row transfer both cores use around their row kernels.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "../common.h"
#include "cpu_kernel.h"

namespace fastconv {
namespace cpu {

// Which core computes conv(x, w): the small-C direct kernel, or ATen's convolution (oneDNN)
// with the pooled epilogue / unpool prologue around it.
enum class ConvPath { kSmallC, kAten };

// auto: small-C when the reduction per output is short (C/groups * R * S <= 32, e.g. a first
// layer on RGB, or depthwise 3x3), where an im2col/GEMM core runs far below peak.
// FASTCONV_CPU_CONV=smallc|aten forces one (any shape is correct on both; tests use this to
// cover both kernels on every case).
// Between them, a core asked for by the calling thread (set_conv_core: auto's measured choice,
// fastconv/backends/cpu.py) comes after the environment and before the rule.
ConvPath conv_path(const ConvGeom& g);

// The calling thread's core for its later conv2d calls: 0 the rule, 1 small-C, 2 ATen; returns
// the one it replaces.
int64_t set_conv_core(int64_t core);

// y [N, K, PO, QO] and idx (uint8, same shape, or empty when pool == 1) are allocated by the
// caller in x's memory format; dx (x's format), dw [K, CG, R, S] contiguous and db [K] are
// filled where need_* is set.
void conv2d_smallc_fwd(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                       const ConvGeom& g, at::Tensor& y, at::Tensor& idx);
void conv2d_smallc_bwd(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w, const at::Tensor& y,
                       const at::Tensor& idx, const ConvGeom& g, bool need_dx, bool need_dw, bool need_db,
                       at::Tensor& dx, at::Tensor& dw, at::Tensor& db);

// The ATen core also needs the schema's stride / padding (top, left, bottom, right) / dilation.
void conv2d_aten_fwd(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, const ConvGeom& g,
                     at::Tensor& y, at::Tensor& idx);
void conv2d_aten_bwd(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w, const at::Tensor& y,
                     const at::Tensor& idx, at::IntArrayRef stride, at::IntArrayRef padding,
                     at::IntArrayRef dilation, const ConvGeom& g, bool need_dx, bool need_dw, bool need_db,
                     at::Tensor& dx, at::Tensor& dw, at::Tensor& db);

// ---------------------------------------------------------------- row transfer

// Raw view of a 4-D [N, K, PO, QO] tensor in either memory format.
template <typename S>
struct View4 {
  S* p;
  int64_t sN, sK, sP, sQ;
  View4() : p(nullptr), sN(0), sK(0), sP(0), sQ(0) {}
  View4(S* data, const at::Tensor& t) : p(data), sN(t.stride(0)), sK(t.stride(1)), sP(t.stride(2)), sQ(t.stride(3)) {}
  S* at(int64_t n, int64_t k, int64_t po) const { return p + n * sN + k * sK + po * sP; }
};

// out[n, k0 + l, po, qo] = buf[qo * ld + l] for l < kn, qo < QO (converted to S).
template <typename S, typename T>
inline void store_row(const View4<S>& out, int64_t n, int64_t po, int64_t k0, int64_t kn, int64_t QO,
                      const T* buf, int64_t ld) {
  if (out.sK == 1) {  // channels_last: one contiguous run of kn per qo
    for (int64_t qo = 0; qo < QO; ++qo) {
      S* o = out.at(n, k0, po) + qo * out.sQ;
      const T* b = buf + qo * ld;
      for (int64_t l = 0; l < kn; ++l) o[l] = static_cast<S>(b[l]);
    }
  } else {  // NCHW: one contiguous run of QO per channel (sQ == 1)
    for (int64_t l = 0; l < kn; ++l) {
      S* o = out.at(n, k0 + l, po);
      for (int64_t qo = 0; qo < QO; ++qo) o[qo] = static_cast<S>(buf[qo * ld + l]);
    }
  }
}

// The unpool prologue's input (docs/design.md §2.2) for row (n, po), channels
// k0 .. k0 + kn - 1, into row buffers:
//   g[qo * ld + l]  = dy * (!relu || !(y <= 0))  (y.p == nullptr: no relu; NaN passes)
//   iv[qo * ld + l] = idx                      (idx.p == nullptr: no pool)
//   db[l]          += sum_qo g
template <typename S, typename T>
inline void load_grad_row(const View4<const S>& dy, const View4<const S>& y, const View4<const uint8_t>& idx,
                          int64_t n, int64_t po, int64_t k0, int64_t kn, int64_t QO, T* g, T* iv, int64_t ld,
                          T* db) {
  const bool relu = y.p != nullptr, pool = idx.p != nullptr;
  // element (l, qo) sits at l * e.sK + qo * e.sQ from e.at(n, k0, po)
  const S* gr = dy.at(n, k0, po);
  const S* yr = relu ? y.at(n, k0, po) : nullptr;
  const uint8_t* ir = pool ? idx.at(n, k0, po) : nullptr;
  // relu is tested outside the loops; inside, the data-dependent mask is a
  // branch-free keep_if.
  if (dy.sK == 1) {  // channels_last: channels innermost
    for (int64_t qo = 0; qo < QO; ++qo) {
      const S* gq = gr + qo * dy.sQ;
      T* go = g + qo * ld;
      if (relu) {
        const S* yq = yr + qo * y.sQ;
        for (int64_t l = 0; l < kn; ++l) go[l] = keep_if(!(static_cast<T>(yq[l]) <= T(0)), static_cast<T>(gq[l]));
      } else {
        for (int64_t l = 0; l < kn; ++l) go[l] = static_cast<T>(gq[l]);
      }
      for (int64_t l = 0; l < kn; ++l) db[l] += go[l];
      if (pool)
        for (int64_t l = 0; l < kn; ++l) iv[qo * ld + l] = static_cast<T>(ir[qo * idx.sQ + l]);
    }
  } else {  // NCHW: one contiguous run of QO per channel
    for (int64_t l = 0; l < kn; ++l) {
      const S* gl = gr + l * dy.sK;
      T* gcol = g + l;
      T sum = 0;
      if (relu) {
        const S* yl = yr + l * y.sK;
        for (int64_t qo = 0; qo < QO; ++qo) {
          const T v = keep_if(!(static_cast<T>(yl[qo]) <= T(0)), static_cast<T>(gl[qo]));
          gcol[qo * ld] = v;
          sum += v;
        }
      } else {
        for (int64_t qo = 0; qo < QO; ++qo) {
          const T v = static_cast<T>(gl[qo]);
          gcol[qo * ld] = v;
          sum += v;
        }
      }
      db[l] += sum;
      if (pool) {
        const uint8_t* il = ir + l * idx.sK;
        for (int64_t qo = 0; qo < QO; ++qo) iv[qo * ld + l] = static_cast<T>(il[qo]);
      }
    }
  }
}

}  // namespace cpu
}  // namespace fastconv
