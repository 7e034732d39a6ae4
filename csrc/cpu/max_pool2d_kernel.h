// The NCHW max-pool forward row (max_pool2d.cpp). Included once per instruction set through
// isa_each.h; every function carries FASTCONV_ISA_TARGET (pool_fwd_row: see below). No include guard.
//
//   pool_fwd_row: one output row oh of one (n, c) plane,
//     y[ow]   = max x[ih][iw] over ih in [h0, h1) step dh, iw = ow*sw - pw + j*dw, j < kw,
//               iw inside [0, W)
//     idx[ow] = ih*W + iw of that max (taps scanned in row-major order: ties -> first, NaN wins)
//
// The interior outputs (whole window inside [0, W) along w) run tap by tap over the whole run
// of outputs, y and idx holding the running max and its position: each tap is then a strided
// load, a compare and two selects per output, which the compiler vectorizes in every ISA copy
// (SW, the w stride, a compile-time 1 or 2, the common pools; 0 reads it at run time). The
// outputs whose window crosses the padding run one by one.
//
// The AVX-512 copy vectorizes with 8-lane ymm, not 16-lane zmm (prefer-vector-width=256): a pool's
// output row is short (7 to 56 outputs in the common nets) and a 16-wide loop leaves most rows to
// its scalar remainder -- measured 3x slower than the AVX2 copy on 3x3/s2 over 32x32 planes.

#if FASTCONV_ISA_VEC_REGS == 1
#define FASTCONV_POOL_ROW_TARGET __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=256")))
#else
#define FASTCONV_POOL_ROW_TARGET FASTCONV_ISA_TARGET
#endif

namespace FASTCONV_ISA_NS {

template <typename T, int SW>
FASTCONV_POOL_ROW_TARGET void pool_fwd_row(const T* __restrict__ xp, int64_t W, int64_t h0, int64_t h1, int64_t dh, int64_t sw_rt,
                                      int64_t pw, int64_t kw, int64_t dw, int64_t OW, T* __restrict__ y, int32_t* __restrict__ idx) {
  using A = acc_t<T>;
  const int64_t sw = SW ? SW : sw_rt;
  const int64_t span = (kw - 1) * dw;  // last tap's offset from the window start
  // interior: ow*sw - pw >= 0 and ow*sw - pw + span < W
  int64_t lo = std::min<int64_t>(OW, (pw + sw - 1) / sw);
  int64_t hi = W - 1 - span + pw >= 0 ? std::min<int64_t>(OW, (W - 1 - span + pw) / sw + 1) : 0;
  if (hi < lo) hi = lo;

  for (int64_t ow = lo; ow < hi; ++ow) {
    y[ow] = static_cast<T>(-std::numeric_limits<A>::infinity());
    idx[ow] = static_cast<int32_t>(h0 * W + ow * sw - pw);
  }
  for (int64_t ih = h0; ih < h1; ih += dh) {
    for (int64_t j = 0; j < kw; ++j) {
      const int64_t base = ih * W + j * dw - pw;  // x position of output 0's tap (ih, j)
      const T* xr = xp + base;
      const int32_t b32 = static_cast<int32_t>(base);
      const int32_t s32 = static_cast<int32_t>(sw);
      for (int64_t ow = lo; ow < hi; ++ow) {
        const A v = static_cast<A>(xr[ow * sw]);
        const bool take = beats(v, static_cast<A>(y[ow]));
        y[ow] = take ? xr[ow * sw] : y[ow];
        idx[ow] = take ? b32 + static_cast<int32_t>(ow) * s32 : idx[ow];
      }
    }
  }
  // the edges, one output at a time
  for (int64_t ow = 0; ow < OW; ++ow) {
    if (ow == lo) ow = hi;
    if (ow >= OW) break;
    int64_t w0 = ow * sw - pw;
    const int64_t w1 = std::min(w0 + span + 1, W);
    while (w0 < 0) w0 += dw;
    A m = -std::numeric_limits<A>::infinity();
    int64_t mi = h0 * W + w0;
    for (int64_t ih = h0; ih < h1; ih += dh)
      for (int64_t iw = w0; iw < w1; iw += dw) {
        const A v = static_cast<A>(xp[ih * W + iw]);
        const bool take = beats(v, m);
        m = take ? v : m;
        mi = take ? ih * W + iw : mi;
      }
    y[ow] = static_cast<T>(m);
    idx[ow] = static_cast<int32_t>(mi);
  }
}

}  // namespace FASTCONV_ISA_NS

#undef FASTCONV_POOL_ROW_TARGET
