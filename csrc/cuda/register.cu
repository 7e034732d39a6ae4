// The CUDA kernels of every fastconv_C op (entry points declared in csrc/ops.h).
#include <torch/library.h>

#include "../ops.h"

TORCH_LIBRARY_IMPL(fastconv_C, CUDA, m) { FASTCONV_IMPL_ALL(m, cuda); }
