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
