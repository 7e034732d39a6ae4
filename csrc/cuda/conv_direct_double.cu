// The direct conv kernels (conv_direct.cuh) for double.
#include "conv_direct.cuh"

namespace fastconv {
namespace cuda {
FASTCONV_DIRECT_INSTANCES(, double)
}  // namespace cuda
}  // namespace fastconv
