// The direct conv kernels (conv_direct.cuh) for float.
#include "conv_direct.cuh"

namespace fastconv {
namespace cuda {
FASTCONV_DIRECT_INSTANCES(, float)
}  // namespace cuda
}  // namespace fastconv
