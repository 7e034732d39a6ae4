// The tile conv kernels (conv2d_tile.cuh) for float.
#include "conv2d_tile.cuh"

namespace fastconv {
namespace cuda {
FASTCONV_TILE_INSTANCES(, float)
}  // namespace cuda
}  // namespace fastconv
