// fastconv_C::max_pool2d_fwd / max_pool2d_bwd on CUDA: general max-pool
// (kernel, stride, padding, dilation, ceil_mode; windows may overlap).
//
//   y[n,c,oh,ow]   = max over h = oh*sh - ph + i*dh, w = ow*sw - pw + j*dw inside the input
//   idx[n,c,oh,ow] = h*W + w of that max (int32), torch's rule: ties -> first in
//                    row-major order, NaN wins (the last NaN); starts at the
//                    window's first element inside the input, value -inf.
//   dx[n,c,h,w]    = sum over the windows (oh, ow) that cover (h, w) and whose
//                    idx == h*W + w of dy[n,c,oh,ow]
//
// The backward gathers (one thread per input element, windows visited in
// row-major order): no atomics, deterministic. Both kernels walk their output
// in memory order (channels first for channels_last) so that neighbouring
// threads touch neighbouring addresses.

#include "../common.h"
#include "common.cuh"
#include "../ops.h"

namespace fastconv {
namespace cuda {
namespace {

// Logical [N, C, A, B] coordinates of the linear position i of a tensor stored
// channels-fastest (cl) or NCHW.
struct Coord {
  int64_t n;
  int c, a, b;
};

__device__ __forceinline__ Coord unflatten(int64_t i, int C, int A, int B, bool cl) {
  Coord r;
  if (cl) {
    r.c = int(i % C);
    i /= C;
    r.b = int(i % B);
    i /= B;
    r.a = int(i % A);
    r.n = i / A;
  } else {
    r.b = int(i % B);
    i /= B;
    r.a = int(i % A);
    i /= A;
    r.c = int(i % C);
    r.n = i / C;
  }
  return r;
}

struct Strides {
  int64_t n, c, h, w;
};

inline Strides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

struct PoolArgs {
  int C, H, W, OH, OW;
  int kh, kw, sh, sw, ph, pw, dh, dw;
};

template <typename T>
__global__ void __launch_bounds__(kThreads) max_pool2d_fwd_kernel(const T* x, Strides xs, T* y, int32_t* idx,
                                                                  Strides ys, PoolArgs a, int64_t total,
                                                                  bool cl) {
  using A = acc_t<T>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const Coord o = unflatten(i, a.C, a.OH, a.OW, cl);
    int h0 = o.a * a.sh - a.ph, w0 = o.b * a.sw - a.pw;
    if (h0 < 0) h0 += ceil_div_signed(-h0, a.dh) * a.dh;
    if (w0 < 0) w0 += ceil_div_signed(-w0, a.dw) * a.dw;
    const int h1 = min(o.a * a.sh - a.ph + (a.kh - 1) * a.dh + 1, a.H);
    const int w1 = min(o.b * a.sw - a.pw + (a.kw - 1) * a.dw + 1, a.W);
    const T* xp = x + o.n * xs.n + int64_t(o.c) * xs.c;
    A best = -std::numeric_limits<A>::infinity();
    int bi = h0 * a.W + w0;
    for (int h = h0; h < h1; h += a.dh) {
      for (int w = w0; w < w1; w += a.dw) {
        const A v = static_cast<A>(xp[int64_t(h) * xs.h + int64_t(w) * xs.w]);
        if (v > best || isnan(v)) {
          best = v;
          bi = h * a.W + w;
        }
      }
    }
    const int64_t off = o.n * ys.n + int64_t(o.c) * ys.c + int64_t(o.a) * ys.h + int64_t(o.b) * ys.w;
    y[off] = static_cast<T>(best);
    idx[off] = bi;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) max_pool2d_bwd_kernel(const T* dy, Strides dys, const int32_t* idx,
                                                                  Strides is, T* dx, Strides dxs, PoolArgs a,
                                                                  int64_t total, bool cl) {
  using A = acc_t<T>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const Coord e = unflatten(i, a.C, a.H, a.W, cl);
    // windows whose span [o*s - p, o*s - p + (k-1)*d] contains the element
    const int oh0 = max(0, ceil_div_signed(e.a + a.ph - (a.kh - 1) * a.dh, a.sh));
    const int oh1 = min(a.OH - 1, (e.a + a.ph) / a.sh);
    const int ow0 = max(0, ceil_div_signed(e.b + a.pw - (a.kw - 1) * a.dw, a.sw));
    const int ow1 = min(a.OW - 1, (e.b + a.pw) / a.sw);
    const int target = e.a * a.W + e.b;
    const int64_t dbase = e.n * dys.n + int64_t(e.c) * dys.c;
    const int64_t ibase = e.n * is.n + int64_t(e.c) * is.c;
    A sum = A(0);
    for (int oh = oh0; oh <= oh1; ++oh) {
      for (int ow = ow0; ow <= ow1; ++ow) {
        if (idx[ibase + int64_t(oh) * is.h + int64_t(ow) * is.w] == target)
          sum += static_cast<A>(dy[dbase + int64_t(oh) * dys.h + int64_t(ow) * dys.w]);
      }
    }
    dx[e.n * dxs.n + int64_t(e.c) * dxs.c + int64_t(e.a) * dxs.h + int64_t(e.b) * dxs.w] = static_cast<T>(sum);
  }
}

PoolArgs pool_args(const PoolGeom& g) {
  for (int64_t v : {g.C, g.H, g.W, g.OH, g.OW, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw})
    check_int_range(v, "a max_pool2d size");
  TORCH_CHECK(g.H * g.W <= std::numeric_limits<int32_t>::max(),
              "fastconv_C::max_pool2d: H*W must fit the int32 index, got ", g.H, "x", g.W);
  return {int(g.C), int(g.H), int(g.W), int(g.OH), int(g.OW), int(g.kh), int(g.kw), int(g.sh),
          int(g.sw), int(g.ph), int(g.pw), int(g.dh), int(g.dw)};
}

bool channels_fastest(const at::Tensor& t) { return t.size(1) > 1 && t.stride(1) == 1; }

}  // namespace

std::tuple<at::Tensor, at::Tensor> max_pool2d_fwd(const at::Tensor& x, at::IntArrayRef kernel,
                                                       at::IntArrayRef stride, at::IntArrayRef padding,
                                                       at::IntArrayRef dilation, bool ceil_mode) {
  check_cuda_like(x, "x", x, "max_pool2d_fwd");
  const PoolGeom g = pool_geom(x.sizes(), kernel, stride, padding, dilation, ceil_mode);
  const PoolArgs a = pool_args(g);
  c10::cuda::CUDAGuard guard(x.device());
  const auto fmt = memory_format_of(x);
  at::Tensor y = at::empty({g.N, g.C, g.OH, g.OW}, x.options().memory_format(fmt));
  at::Tensor idx = at::empty({g.N, g.C, g.OH, g.OW}, x.options().dtype(at::kInt).memory_format(fmt));
  if (y.numel() == 0) return {y, idx};
  TORCH_INTERNAL_ASSERT(idx.strides() == y.strides());
  const bool cl = channels_fastest(y);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_max_pool2d_fwd_cuda", [&] {
    max_pool2d_fwd_kernel<scalar_t><<<grid_for(y.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), strides_of(x), y.mutable_data_ptr<scalar_t>(),
        idx.mutable_data_ptr<int32_t>(), strides_of(y), a, y.numel(), cl);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, idx};
}

at::Tensor max_pool2d_bwd(const at::Tensor& dy, const at::Tensor& idx, at::IntArrayRef input_hw,
                               at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, bool ceil_mode) {
  TORCH_CHECK(dy.is_cuda(), "fastconv_C::max_pool2d_bwd: dy must be a CUDA tensor, got ", dy.device());
  TORCH_CHECK(dy.dim() == 4, "fastconv_C::max_pool2d_bwd: dy must be 4-D, got ", dy.dim(), "-D");
  TORCH_CHECK(idx.is_cuda() && idx.device() == dy.device() && idx.scalar_type() == at::kInt &&
                  idx.sizes() == dy.sizes(),
              "fastconv_C::max_pool2d_bwd: idx must be an int32 tensor of dy's shape on dy's device");
  TORCH_CHECK(input_hw.size() == 2, "fastconv_C::max_pool2d_bwd: input_hw needs 2 values");
  const PoolGeom g = pool_geom({dy.size(0), dy.size(1), input_hw[0], input_hw[1]}, kernel, stride, padding,
                               dilation, ceil_mode);
  TORCH_CHECK(g.OH == dy.size(2) && g.OW == dy.size(3), "fastconv_C::max_pool2d_bwd: dy has ", dy.size(2), "x",
              dy.size(3), " windows, the pooling of a ", g.H, "x", g.W, " input has ", g.OH, "x", g.OW);
  const PoolArgs a = pool_args(g);
  c10::cuda::CUDAGuard guard(dy.device());
  at::Tensor dx = at::empty({g.N, g.C, g.H, g.W}, dy.options().memory_format(memory_format_of(idx)));
  if (dx.numel() == 0) return dx;
  const bool cl = channels_fastest(dx);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "fastconv_max_pool2d_bwd_cuda", [&] {
    max_pool2d_bwd_kernel<scalar_t><<<grid_for(dx.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        dy.const_data_ptr<scalar_t>(), strides_of(dy), idx.const_data_ptr<int32_t>(), strides_of(idx),
        dx.mutable_data_ptr<scalar_t>(), strides_of(dx), a, dx.numel(), cl);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

}  // namespace cuda
}  // namespace fastconv
