// The tile conv kernels (conv2d_tile.cuh) for double.
#include "conv2d_tile.cuh"

namespace fastconv {
namespace cuda {
FASTCONV_TILE_INSTANCES(, double)
}  // namespace cuda
}  // namespace fastconv
