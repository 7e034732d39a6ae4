// fastconv_C::relu_fwd / relu_bwd on CUDA, elementwise over any shape:
//
//   y  = x > 0 || isnan(x) ? x : 0          (torch.relu: NaN stays NaN)
//   dx = y > 0 || isnan(y) ? dy : 0         (threshold_backward(dy, y, 0): dy where !(y <= 0))
//
// The tensors are dense and share one memory layout, so the kernels walk raw
// memory: 16-byte vectors when every pointer is aligned, then a scalar tail.

#include "../common.h"
#include "common.cuh"
#include "../ops.h"

namespace fastconv {
namespace cuda {
namespace {

template <typename T>
struct ReluFwd {
  __device__ __forceinline__ T operator()(T x) const {
    const auto v = static_cast<acc_t<T>>(x);
    return (v > 0 || isnan(v)) ? x : T(0);
  }
};

template <typename T>
struct ReluBwd {  // (dy, y) -> dx
  __device__ __forceinline__ T operator()(T dy, T y) const {
    const auto v = static_cast<acc_t<T>>(y);
    return (v > 0 || isnan(v)) ? dy : T(0);
  }
};

// out[i] = f(a[i]) or f(a[i], b[i]) for i < n; b == nullptr for the unary form.
template <typename T, typename F, bool kBinary>
__global__ void __launch_bounds__(kThreads) elementwise_kernel(const T* a, const T* b, T* out, int64_t n,
                                                               bool vec, F f) {
  constexpr int V = 16 / int(sizeof(T));
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t nvec = vec ? n / V : 0;
  for (int64_t i = first; i < nvec; i += step) {
    const Vec<T, V> va = reinterpret_cast<const Vec<T, V>*>(a)[i];
    Vec<T, V> vo;
    if constexpr (kBinary) {
      const Vec<T, V> vb = reinterpret_cast<const Vec<T, V>*>(b)[i];
#pragma unroll
      for (int j = 0; j < V; ++j) vo.v[j] = f(va.v[j], vb.v[j]);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) vo.v[j] = f(va.v[j]);
    }
    reinterpret_cast<Vec<T, V>*>(out)[i] = vo;
  }
  for (int64_t i = nvec * V + first; i < n; i += step) {
    if constexpr (kBinary) {
      out[i] = f(a[i], b[i]);
    } else {
      out[i] = f(a[i]);
    }
  }
}

// t laid out densely in the memory format its output keeps (common.h's rule,
// the one the fake kernels use).
at::Tensor dense(const at::Tensor& t) { return t.contiguous(memory_format_of(t)); }

}  // namespace

at::Tensor relu_fwd(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.is_cuda(), "fastconv_C::relu_fwd: x must be a CUDA tensor, got ", x_in.device());
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = dense(x_in);
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  TORCH_INTERNAL_ASSERT(y.strides() == x.strides());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_relu_fwd_cuda", [&] {
    using T = scalar_t;
    const bool vec = is_aligned(x.const_data_ptr(), 16) && is_aligned(y.const_data_ptr(), 16);
    elementwise_kernel<T, ReluFwd<T>, false>
        <<<grid_for(x.numel() / (vec ? 16 / int64_t(sizeof(T)) : 1)), kThreads, 0,
           at::cuda::getCurrentCUDAStream()>>>(x.const_data_ptr<T>(), nullptr, y.mutable_data_ptr<T>(), x.numel(),
                                               vec, ReluFwd<T>{});
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

at::Tensor relu_bwd(const at::Tensor& dy_in, const at::Tensor& y_in) {
  check_cuda_like(dy_in, "dy", y_in, "relu_bwd");
  TORCH_CHECK(y_in.is_cuda(), "fastconv_C::relu_bwd: y must be a CUDA tensor, got ", y_in.device());
  TORCH_CHECK(dy_in.sizes() == y_in.sizes(), "fastconv_C::relu_bwd: dy must have y's shape ", y_in.sizes(),
              ", got ", dy_in.sizes());
  c10::cuda::CUDAGuard guard(y_in.device());
  const at::Tensor y = dense(y_in);
  const at::Tensor dy = dy_in.contiguous(memory_format_of(y));
  at::Tensor dx = at::empty_like(y);
  if (y.numel() == 0) return dx;
  TORCH_INTERNAL_ASSERT(dx.strides() == y.strides());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "fastconv_relu_bwd_cuda", [&] {
    using T = scalar_t;
    const bool vec = is_aligned(dy.const_data_ptr(), 16) && is_aligned(y.const_data_ptr(), 16) &&
                     is_aligned(dx.const_data_ptr(), 16);
    elementwise_kernel<T, ReluBwd<T>, true>
        <<<grid_for(y.numel() / (vec ? 16 / int64_t(sizeof(T)) : 1)), kThreads, 0,
           at::cuda::getCurrentCUDAStream()>>>(dy.const_data_ptr<T>(), y.const_data_ptr<T>(),
                                               dx.mutable_data_ptr<T>(), y.numel(), vec, ReluBwd<T>{});
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

}  // namespace cuda
}  // namespace fastconv
