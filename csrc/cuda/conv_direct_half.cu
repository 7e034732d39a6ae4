// The direct conv kernels (conv_direct.cuh) for c10::Half.
#include "conv_direct.cuh"

namespace fastconv {
namespace cuda {
FASTCONV_DIRECT_INSTANCES(, c10::Half)
}  // namespace cuda
}  // namespace fastconv
