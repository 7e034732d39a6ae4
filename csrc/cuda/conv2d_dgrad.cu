// dx of the fused conv (docs/design.md §2.2):
//
//   dx[n,c,h,w] = sum_{k in group(c), r, s} dC[n,k,(h+pt-r*dh)/sh,(w+pl-s*dw)/sw] * w[k,c%CG,r,s]
//                 (terms whose division is not exact are absent)
//
// is the tile conv kernel (conv2d_tile.cuh) run on the zero-inserted dC (the
// unpool source with zh, zw = the stride, conv2d_sources.cuh) with w flipped
// and transposed per group, stride 1, dilation (dh, dw) and padding
// ((R-1)*dh - pt, (S-1)*dw - pl): dgrad_geom below.
#include "conv2d.cuh"

namespace fastconv {
namespace cuda {
namespace {

// The transposed conv whose output is dx: input dC (K channels, P x Q),
// output C channels of H x W; no bias, relu or pool.
ConvGeom dgrad_geom(const ConvGeom& g) {
  ConvGeom t = g;
  t.C = g.K;
  t.H = g.P;
  t.W = g.Q;
  t.K = g.C;
  t.KG = g.CG;
  t.CG = g.KG;
  t.P = t.PO = g.H;
  t.Q = t.QO = g.W;
  t.sh = t.sw = 1;
  t.pt = (g.R - 1) * g.dh - g.pt;
  t.pl = (g.S - 1) * g.dw - g.pl;
  t.pool = 1;
  t.relu = false;
  return t;
}

}  // namespace

void conv2d_dgrad(const ConvGeom& g, const at::Tensor& dy, const at::Tensor& y, const at::Tensor& idx,
                  const at::Tensor& w, at::Tensor& dx) {
  // w [groups*KG, CG, R, S] -> w' [groups*CG, KG, R, S] with w'[g*CG+c, m, r, s] = w[g*KG+m, c, R-1-r, S-1-s]
  const at::Tensor wt = w.reshape({g.groups, g.KG, g.CG, g.R, g.S})
                            .transpose(1, 2)
                            .flip({3, 4})
                            .reshape({g.C, g.KG, g.R, g.S})
                            .contiguous();
  const bool dc_cl = g.K > 1 && dy.stride(1) == 1;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "fastconv_conv2d_dgrad_cuda", [&] {
    using T = scalar_t;
    auto dc = unpool_source<T>(dy, y, idx, g.relu, int(g.pool));
    dc.zh = int(g.sh);
    dc.zw = int(g.sw);
    conv2d_tile<T>(dgrad_geom(g), dc, dc_cl, false, wt.const_data_ptr<T>(), nullptr, dx, nullptr, stream);
  });
  // wt is freed on return: the caching allocator hands its memory only to
  // later work on this stream, which runs after the kernel.
}

}  // namespace cuda
}  // namespace fastconv
