// The ISA's native vector and its unaligned load / store / splat, for the per-ISA kernel
// headers (conv2d_smallc_kernel.h, conv2d_aten_kernel.h), which include it inside their
// FASTCONV_ISA_NS namespace so each ISA copy gets its own. Like them it carries
// FASTCONV_ISA_TARGET on every function and has no include guard.
//
// Vec<T> is one zmm, ymm or xmm register (64 / FASTCONV_ISA_VEC_REGS bytes, kNLanes<T> lanes;
// arithmetic, comparisons -> lane masks and `mask ? a : b` work lane-wise). A 64-byte vector on
// AVX2 or SSE is lowered by GCC through stack temporaries in loops, so a 64-byte channel block
// is walked as FASTCONV_ISA_VEC_REGS native vectors instead.

template <typename T>
struct NativeOf {
  typedef T type __attribute__((vector_size(kVecBytes / FASTCONV_ISA_VEC_REGS)));
};
template <typename T>
using Vec = typename NativeOf<T>::type;
template <typename T>
constexpr int kNLanes = kLanes<T> / FASTCONV_ISA_VEC_REGS;

template <typename T>
FASTCONV_INLINE FASTCONV_ISA_TARGET Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
FASTCONV_INLINE FASTCONV_ISA_TARGET void store(T* p, const Vec<T>& v) {
  std::memcpy(p, &v, sizeof v);
}
template <typename T>
FASTCONV_INLINE FASTCONV_ISA_TARGET Vec<T> splat(T s) {
  return Vec<T>{} + s;
}
