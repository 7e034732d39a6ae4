// ReLU on CPU, any shape.
//
//   relu_fwd: y  = max(x, 0), NaN stays NaN (like torch.relu)
//   relu_bwd: dx = y <= 0 ? 0 : dy           (like aten threshold_backward(dy, y, 0))
//
// Inputs arrive contiguous in one memory format (fastconv/_impl.py makes dy and
// y agree), so both kernels are flat loops over the storage and the outputs
// keep that format.
#include "common.h"
#include "cpu_kernel.h"
#include "../ops.h"

namespace fastconv {
namespace cpu {

at::Tensor relu_fwd(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.device().is_cpu(), "fastconv cpu relu_fwd: x must be a CPU tensor");
  const at::Tensor x = x_in.contiguous(memory_format_of(x_in));
  at::Tensor y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_relu_fwd", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kMinTaskWork, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const scalar_t xi = xp[i];
        yp[i] = static_cast<acc_t<scalar_t>>(xi) < 0 ? scalar_t(0) : xi;
      }
    });
  });
  return y;
}

at::Tensor relu_bwd(const at::Tensor& dy_in, const at::Tensor& y_in) {
  TORCH_CHECK(dy_in.device().is_cpu() && y_in.device().is_cpu(), "fastconv cpu relu_bwd: CPU tensors expected");
  TORCH_CHECK(dy_in.sizes() == y_in.sizes(), "fastconv cpu relu_bwd: dy ", dy_in.sizes(), " and y ",
              y_in.sizes(), " must have the same shape");
  TORCH_CHECK(dy_in.scalar_type() == y_in.scalar_type(), "fastconv cpu relu_bwd: dy and y dtypes differ");
  const at::MemoryFormat fmt = memory_format_of(y_in);
  const at::Tensor y = y_in.contiguous(fmt);
  const at::Tensor dy = dy_in.contiguous(fmt);
  at::Tensor dx = at::empty_like(y);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "fastconv_relu_bwd", [&] {
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const scalar_t* gp = dy.const_data_ptr<scalar_t>();
    scalar_t* dp = dx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, y.numel(), kMinTaskWork, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const acc_t<scalar_t> v = yp[i];
        const scalar_t g = gp[i];  // read whatever y is: a select, not a branch (and vectorized)
        dp[i] = v <= 0 ? scalar_t(0) : g;
      }
    });
  });
  return dx;
}

}  // namespace cpu
}  // namespace fastconv
