// The direct conv kernels (conv_direct.cuh) for c10::BFloat16.
#include "conv_direct.cuh"

namespace fastconv {
namespace cuda {
FASTCONV_DIRECT_INSTANCES(, c10::BFloat16)
}  // namespace cuda
}  // namespace fastconv
