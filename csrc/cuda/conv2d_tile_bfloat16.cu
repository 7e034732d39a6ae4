// The tile conv kernels (conv2d_tile.cuh) for c10::BFloat16.
#include "conv2d_tile.cuh"

namespace fastconv {
namespace cuda {
FASTCONV_TILE_INSTANCES(, c10::BFloat16)
}  // namespace cuda
}  // namespace fastconv
