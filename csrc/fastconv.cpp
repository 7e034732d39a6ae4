// The operator library fastconv_C: every kernel schema, defined once, and the
// CPU kernels' registration (the library fastconv._C). The entry points of each
// device are declared in csrc/ops.h; the CUDA kernels are a second library,
// fastconv._C_cuda, loaded after this one, that registers in csrc/cuda/register.cu.
//
// The ops' math is docs/design.md §2 (conv2d_fwd §2.1, conv2d_bwd §2.2, relu and
// max_pool2d §2.3). Conventions of the schemas:
//   * x [N, C, H, W] NCHW-contiguous or channels_last; outputs keep x's format.
//   * padding of conv2d is (top, left, bottom, right); pool = 1 means no pooling.
//   * conv2d_fwd returns (y, idx), idx uint8 [N, K, PO, QO], or an empty uint8
//     tensor when pool == 1.
//   * conv2d_bwd returns (dx, dw, db); entries whose output_mask is false are
//     undefined. y / idx may be empty when relu / pool is off.
//   * max_pool2d_fwd returns (y, idx), idx the int32 plane index h * W + w.
#include <Python.h>
#include <torch/library.h>

#include "cpu/conv2d.h"
#include "cpu/cpu_kernel.h"
#include "ops.h"

TORCH_LIBRARY(fastconv_C, m) {
  m.def("conv2d_fwd(Tensor x, Tensor w, Tensor? b, int[2] stride, int[4] padding, "
        "int[2] dilation, int groups, bool relu, int pool) -> (Tensor, Tensor)");
  m.def("conv2d_bwd(Tensor dy, Tensor x, Tensor w, Tensor y, Tensor idx, int[2] stride, "
        "int[4] padding, int[2] dilation, int groups, bool relu, int pool, "
        "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def("relu_fwd(Tensor x) -> Tensor");
  m.def("relu_bwd(Tensor dy, Tensor y) -> Tensor");
  m.def("max_pool2d_fwd(Tensor x, int[2] kernel, int[2] stride, int[2] padding, "
        "int[2] dilation, bool ceil_mode) -> (Tensor, Tensor)");
  m.def("max_pool2d_bwd(Tensor dy, Tensor idx, int[2] input_hw, int[2] kernel, int[2] stride, "
        "int[2] padding, int[2] dilation, bool ceil_mode) -> Tensor");
  // The copy of the vector kernels a CPU call runs now: base, avx2 or avx512 (the CPU's widest,
  // lowered by FASTCONV_CPU_ISA; csrc/cpu/cpu_kernel.h).
  m.def("cpu_isa() -> str", []() -> std::string {
    switch (fastconv::cpu::cpu_isa()) {
      case fastconv::cpu::Isa::kAvx512: return "avx512";
      case fastconv::cpu::Isa::kAvx2: return "avx2";
      default: return "base";
    }
  });
  // The conv core of the calling thread's later CPU conv2d calls (0 the rule, 1 small-C, 2 ATen;
  // FASTCONV_CPU_CONV overrides it); returns the previous one (csrc/cpu/conv2d.h).
  m.def("cpu_conv_core(int core) -> int", [](int64_t core) -> int64_t { return fastconv::cpu::set_conv_core(core); });
}

TORCH_LIBRARY_IMPL(fastconv_C, CPU, m) { FASTCONV_IMPL_ALL(m, cpu); }


// A bare module init: importing fastconv._C only loads the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&def);
}
