// Private helpers of the CPU kernels in csrc/cpu: the compute type, the 64-byte
// channel blocks of the data layout, the instruction set a hot loop is compiled
// for, and a deterministic chunked parallel loop.
//
// SIMD without build flags: the extension is compiled with plain -O3 (it must
// run on any x86-64), so a hot loop is written once on GCC/Clang vector types
// in a header that is included once per instruction set, every function in it
// carrying that ISA's __attribute__((target(...))) (conv2d_smallc_kernel.h).
// Each copy computes in that ISA's native vector (vec_io_kernel.h: one zmm, ymm
// or xmm); cpu_isa() picks the copy the running CPU supports at call time.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>

#if defined(__GNUC__)
// 64-byte vectors passed between (always inlined) helpers: no ABI is involved.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define FASTCONV_X86 1
#define FASTCONV_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define FASTCONV_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#endif
#define FASTCONV_INLINE inline __attribute__((always_inline))

namespace fastconv {
namespace cpu {

// Accumulation type: float for float/half/bfloat16, double for double.
template <typename scalar_t>
using acc_t = at::opmath_type<scalar_t>;

// ---------------------------------------------------------------- channel blocks

// The data layout's channel block: kVecBytes, kLanes<T> elements of T (the packed weights and
// the small-C kernels' blocks of KB = NV * kLanes channels). Every ISA copy walks a block as
// 64 / (its native vector's bytes) vectors (vec_io_kernel.h).
constexpr int kVecBytes = 64;
template <typename T>
constexpr int kLanes = kVecBytes / static_cast<int>(sizeof(T));

// ---------------------------------------------------------------- ISA choice

enum class Isa { kBase = 0, kAvx2 = 1, kAvx512 = 2 };

// The widest ISA this CPU runs, lowered (never raised) by the environment
// variable FASTCONV_CPU_ISA=base|avx2|avx512 (read on every call so tests can
// cover each variant).
inline Isa cpu_isa() {
  static const Isa native = [] {
#ifdef FASTCONV_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
      return Isa::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
    return Isa::kBase;
  }();
  const char* env = std::getenv("FASTCONV_CPU_ISA");
  if (env == nullptr || *env == '\0') return native;
  const std::string s(env);
  Isa want;
  if (s == "base") {
    want = Isa::kBase;
  } else if (s == "avx2") {
    want = Isa::kAvx2;
  } else if (s == "avx512") {
    want = Isa::kAvx512;
  } else {
    TORCH_CHECK(false, "FASTCONV_CPU_ISA must be base, avx2 or avx512, got '", s, "'");
  }
  return std::min(want, native);
}

// ---------------------------------------------------------------- parallel loops

// Runs body(chunk, begin, end) over [0, n) split into `chunks` contiguous
// pieces, in parallel. Unlike a bare at::parallel_for the split does not
// depend on scheduling, so per-chunk partial sums reduce in a fixed order
// and results are reproducible run to run.
template <typename F>
void parallel_chunks(int64_t n, int64_t chunks, const F& body) {
  chunks = std::max<int64_t>(1, std::min(chunks, n));
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) body(c, n * c / chunks, n * (c + 1) / chunks);
  });
}

// Work below this many elements (or multiply-adds) per task runs on the
// calling thread: waking OpenMP workers costs more than such a task.
constexpr int64_t kMinTaskWork = 32768;

// Grain for at::parallel_for over items of `work` each.
inline int64_t grain_for(int64_t work) { return std::max<int64_t>(1, kMinTaskWork / std::max<int64_t>(1, work)); }

// Chunks for parallel_chunks over n items of `work` each: one per thread at
// most, and none smaller than kMinTaskWork.
inline int64_t num_chunks(int64_t n, int64_t work) {
  const int64_t by_work = std::max<int64_t>(1, n * std::max<int64_t>(1, work) / kMinTaskWork);
  return std::max<int64_t>(1, std::min<int64_t>({n, by_work, static_cast<int64_t>(at::get_num_threads())}));
}

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// keep ? v : 0 as bit operations: GCC turns a data-dependent float select in a
// strided loop into a branch, and a mispredicted one per element.
template <typename T>
FASTCONV_INLINE T keep_if(bool keep, T v) {
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  static_assert(sizeof(T) == sizeof(U), "keep_if needs float or double");
  U bits;
  std::memcpy(&bits, &v, sizeof v);
  bits &= U(0) - U(keep);
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

// The NaN-aware "better max" test shared by every max-pool here: a value
// replaces the running max when it is larger or NaN (PyTorch's rule), so NaN
// propagates and, on ties, the first element in scan order keeps the index.
template <typename T>
FASTCONV_INLINE bool beats(T v, T m) {
  return v > m || v != v;
}

}  // namespace cpu
}  // namespace fastconv
