// Includes the kernel header named by FASTCONV_ISA_KERNELS once per
// instruction set, each copy in its own namespace (isa_base, isa_avx2,
// isa_avx512) with FASTCONV_ISA_TARGET set to that ISA's target attribute.
// FASTCONV_ISA_PICK(f) then names the copy of f the running CPU supports
// (cpu_isa() in cpu_kernel.h). No include guard: one expansion per user.
#ifndef FASTCONV_ISA_KERNELS
#error "define FASTCONV_ISA_KERNELS before including isa_each.h"
#endif

// FASTCONV_ISA_VEC_REGS: the hardware vector registers one 64-byte Vec (cpu_kernel.h) takes in
// that copy -- 4 xmm (base: SSE2, 16 registers), 2 ymm (AVX2, 16), 1 zmm (AVX-512, 32) -- so that
// a kernel sizes its register tile to the registers the ISA has.
#define FASTCONV_ISA_NS isa_base
#define FASTCONV_ISA_TARGET
#define FASTCONV_ISA_VEC_REGS 4
#include FASTCONV_ISA_KERNELS
#undef FASTCONV_ISA_NS
#undef FASTCONV_ISA_TARGET
#undef FASTCONV_ISA_VEC_REGS

#ifdef FASTCONV_X86
#define FASTCONV_ISA_NS isa_avx2
#define FASTCONV_ISA_TARGET FASTCONV_TARGET_AVX2
#define FASTCONV_ISA_VEC_REGS 2
#include FASTCONV_ISA_KERNELS
#undef FASTCONV_ISA_NS
#undef FASTCONV_ISA_TARGET
#undef FASTCONV_ISA_VEC_REGS

#define FASTCONV_ISA_NS isa_avx512
#define FASTCONV_ISA_TARGET FASTCONV_TARGET_AVX512
#define FASTCONV_ISA_VEC_REGS 1
#include FASTCONV_ISA_KERNELS
#undef FASTCONV_ISA_NS
#undef FASTCONV_ISA_TARGET
#undef FASTCONV_ISA_VEC_REGS
#endif

#undef FASTCONV_ISA_KERNELS

#ifndef FASTCONV_ISA_PICK
#ifdef FASTCONV_X86
#define FASTCONV_ISA_PICK(...)                                                       \
  (::fastconv::cpu::cpu_isa() == ::fastconv::cpu::Isa::kAvx512 ? &isa_avx512::__VA_ARGS__ \
   : ::fastconv::cpu::cpu_isa() == ::fastconv::cpu::Isa::kAvx2 ? &isa_avx2::__VA_ARGS__   \
                                                                : &isa_base::__VA_ARGS__)
#else
#define FASTCONV_ISA_PICK(...) (&isa_base::__VA_ARGS__)
#endif
#endif
