// Where the tile convolution kernels read their input tile from.
//
// A source is a [N, C, H, W] tensor read in two steps, so that a tile loader
// does the per-pixel work (bounds, window arithmetic) once for all channels:
//
//   const auto px = src.pixel(n, h, w);   // where pixel (h, w) of image n lives
//   acc_t<T> v = src.read(px, c);         // its channel c; 0 outside the tensor
//                                         // (the conv's zero padding)
//
// and `at(n, c, h, w)` = read(pixel(n, h, w), c).
//
//   TensorSource  a real tensor with any strides (x in the forward and wgrad).
//   UnpoolSource  the conv-output gradient dC, rebuilt on the fly from the
//                 pooled dy / y / idx [N, K, PO, QO] (the "unpool prologue"):
//
//       dC[n,k,p,q] = dy[n,k,i,j] * (idx[n,k,i,j] == (p%pool)*pool + q%pool)
//                                 * (!relu || !(y[n,k,i,j] <= 0))
//       with i = p / pool, j = q / pool, and dC = 0 outside the floor-mode
//       windows (p >= PO*pool or q >= QO*pool).
//
//                 For dgrad it also inserts zeros between conv rows / columns
//                 (zh, zw = the conv stride): virtual row u holds conv row u / zh
//                 when zh divides u and 0 otherwise, so that
//                 dx = conv(zero-inserted dC, flipped w, stride 1).
#pragma once

#include "common.cuh"

namespace fastconv {
namespace cuda {

template <typename T>
struct TensorSource {
  static constexpr bool kIsTensor = true;
  const T* p;                // [N, C, H, W]
  int64_t sN, sC, sH, sW;    // element strides
  int H, W;

  struct Pixel {
    int64_t off;  // element offset of channel 0; -1 outside the tensor
  };

  __device__ __forceinline__ Pixel pixel(int64_t n, int h, int w) const {
    if (h < 0 || h >= H || w < 0 || w >= W) return {-1};
    return {n * sN + int64_t(h) * sH + int64_t(w) * sW};
  }
  __device__ __forceinline__ acc_t<T> read(const Pixel& px, int64_t c) const {
    return px.off < 0 ? acc_t<T>(0) : static_cast<acc_t<T>>(p[px.off + c * sC]);
  }
  __device__ __forceinline__ acc_t<T> at(int64_t n, int64_t c, int h, int w) const {
    return read(pixel(n, h, w), c);
  }
};

template <typename T>
struct UnpoolSource {
  static constexpr bool kIsTensor = false;
  const T* dy;               // [N, K, PO, QO]
  const T* y;                // like dy; nullptr without relu
  const uint8_t* idx;        // like dy; nullptr without pooling
  int64_t sN, sC, sH, sW;    // strides shared by dy, y and idx (same shape and memory format)
  int pool;                  // 1 = none
  int PE, QE;                // rows / cols of the conv output covered by windows: PO*pool, QO*pool
  int zh, zw;                // zero insertion (dgrad: the conv stride; wgrad: 1)

  struct Pixel {
    int64_t off;  // element offset of channel 0 of the pooled cell; -1 where dC is 0
    int want;     // window index of this conv pixel inside its cell
  };

  __device__ __forceinline__ Pixel pixel(int64_t n, int u, int v) const {
    if (u < 0 || v < 0) return {-1, 0};
    int p = u, q = v;
    if (zh > 1) {
      if (u % zh != 0) return {-1, 0};
      p = u / zh;
    }
    if (zw > 1) {
      if (v % zw != 0) return {-1, 0};
      q = v / zw;
    }
    if (p >= PE || q >= QE) return {-1, 0};
    const int i = p / pool, j = q / pool;
    return {n * sN + int64_t(i) * sH + int64_t(j) * sW, (p - i * pool) * pool + (q - j * pool)};
  }
  __device__ __forceinline__ acc_t<T> read(const Pixel& px, int64_t k) const {
    using A = acc_t<T>;
    if (px.off < 0) return A(0);
    const int64_t off = px.off + k * sC;
    if (idx != nullptr && int(idx[off]) != px.want) return A(0);
    if (y != nullptr && static_cast<A>(y[off]) <= A(0)) return A(0);
    return static_cast<A>(dy[off]);
  }
  __device__ __forceinline__ acc_t<T> at(int64_t n, int64_t k, int u, int v) const {
    return read(pixel(n, u, v), k);
  }
};

// --------------------------------------------------------------------------- host builders

// x [N, C, H, W] with its strides.
template <typename T>
TensorSource<T> tensor_source(const at::Tensor& x) {
  return TensorSource<T>{x.const_data_ptr<T>(), x.stride(0), x.stride(1), x.stride(2), x.stride(3),
                         int(x.size(2)), int(x.size(3))};
}

// dC from dy and the saved y (relu) and idx (pool > 1), which share dy's shape
// and strides; no zero insertion (dgrad sets zh, zw to the stride).
template <typename T>
UnpoolSource<T> unpool_source(const at::Tensor& dy, const at::Tensor& y, const at::Tensor& idx, bool relu,
                              int pool) {
  UnpoolSource<T> dc{};
  dc.dy = dy.const_data_ptr<T>();
  dc.y = relu ? y.const_data_ptr<T>() : nullptr;
  dc.idx = pool > 1 ? idx.const_data_ptr<uint8_t>() : nullptr;
  dc.sN = dy.stride(0);
  dc.sC = dy.stride(1);
  dc.sH = dy.stride(2);
  dc.sW = dy.stride(3);
  dc.pool = pool;
  dc.PE = int(dy.size(2)) * pool;
  dc.QE = int(dy.size(3)) * pool;
  dc.zh = 1;
  dc.zw = 1;
  return dc;
}

}  // namespace cuda
}  // namespace fastconv
