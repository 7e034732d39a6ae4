// Unaligned vector load/store/splat for the per-ISA kernel headers
// (conv2d_smallc_kernel.h, conv2d_aten_kernel.h), which include it inside their
// FASTCONV_ISA_NS namespace so each ISA copy gets its own. Like them it carries
// FASTCONV_ISA_TARGET on every function and has no include guard.

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

// The ISA's native vector (one zmm, ymm or xmm: 64 / FASTCONV_ISA_VEC_REGS bytes) and its
// load / store / splat. A 64-byte Vec on AVX2 or SSE is lowered by GCC through stack
// temporaries in loops; kernels whose inner loops must stay in registers use these and walk a
// 64-byte channel block as FASTCONV_ISA_VEC_REGS native vectors.
template <typename T>
struct NativeOf {
  typedef T type __attribute__((vector_size(kVecBytes / FASTCONV_ISA_VEC_REGS)));
};
template <typename T>
using NVec = typename NativeOf<T>::type;
template <typename T>
constexpr int kNLanes = kLanes<T> / FASTCONV_ISA_VEC_REGS;

template <typename T>
FASTCONV_INLINE FASTCONV_ISA_TARGET NVec<T> nload(const T* p) {
  NVec<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
FASTCONV_INLINE FASTCONV_ISA_TARGET void nstore(T* p, const NVec<T>& v) {
  std::memcpy(p, &v, sizeof v);
}
template <typename T>
FASTCONV_INLINE FASTCONV_ISA_TARGET NVec<T> nsplat(T s) {
  return NVec<T>{} + s;
}
