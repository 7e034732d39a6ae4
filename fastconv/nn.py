"""Drop-in layers: ``torch.nn`` modules whose forward runs the fastconv ops.

    Conv2d(..., activation=None, pool=None)   y = pool_k(act(conv2d(x, weight) + bias))
    Conv2dReLU(...)                            Conv2d(..., activation="relu")
    Conv2dReLUMaxPool2d(..., pool=2)           Conv2d(..., activation="relu", pool=2)
    ReLU(inplace=False)                        fastconv.relu
    MaxPool2d(kernel_size, stride, ...)        fastconv.max_pool2d (overlapping windows too)

Each class subclasses its ``torch.nn`` counterpart, so the constructor
arguments, the parameters (``weight`` [K, C/groups, R, S], ``bias`` [K]),
``reset_parameters``, ``state_dict`` keys and ``isinstance`` checks are
PyTorch's: a ``torch.nn.Conv2d`` checkpoint loads into a fastconv layer and
back. Only ``forward`` differs. ``activation`` and ``pool`` are keyword-only so
that every positional argument keeps ``torch.nn.Conv2d``'s meaning
(``padding_mode``, ``device``, ``dtype`` follow ``bias`` there).

``pool=k`` is a non-overlapping k x k max-pool with stride k in floor mode,
exactly ``nn.MaxPool2d(k)`` after the activation; a fused layer therefore
returns a [N, K, P // k, Q // k] tensor where a plain conv returns [N, K, P, Q].
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn
from torch.nn import functional as F

from . import _args
from .functional import conv2d, max_pool2d, relu

__all__ = ["Conv2d", "Conv2dReLU", "Conv2dReLUMaxPool2d", "ReLU", "MaxPool2d"]


def _activation(v) -> Optional[str]:
    return "relu" if _args.activation(v) else None


def _pool(v) -> Optional[int]:
    k = _args.pool(v)
    return k if k > 1 else None


class Conv2d(nn.Conv2d):
    """``torch.nn.Conv2d`` with a fused activation and max-pool epilogue.

    activation: None or "relu".  pool: None or k (k x k window, stride k, floor mode, k <= 16).
    Every other argument is ``torch.nn.Conv2d``'s, including ``padding='same'`` and the
    non-zero ``padding_mode`` values (those pad explicitly, then run an unpadded conv).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None, *,
                 activation: Optional[str] = None, pool: Optional[int] = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self.activation = _activation(activation)
        self.pool = _pool(pool)

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return conv2d(input, weight, bias, self.stride, padding, self.dilation, self.groups,
                      self.activation, self.pool)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.activation is not None:
            s += f", activation={self.activation!r}"
        if self.pool is not None:
            s += f", pool={self.pool}"
        return s

    @classmethod
    def from_torch(cls, conv: nn.Conv2d, activation: Optional[str] = None,
                   pool: Optional[int] = None) -> "Conv2d":
        """A fastconv ``Conv2d`` computing ``pool(act(conv(x)))`` with ``conv``'s own Parameters.

        The weight and bias are shared, not copied: training either module trains both.
        ``conv`` may be any ``nn.Conv2d`` (subclasses included) or a fastconv ``Conv2d``,
        whose epilogue is then extended: its activation is kept, and a pool may be added
        only where it has none.
        """
        activation, pool = _activation(activation), _pool(pool)
        if isinstance(conv, Conv2d):
            if conv.pool is not None and (pool is not None or activation is not None):
                raise ValueError(f"conv already ends in a {conv.pool}x{conv.pool} max-pool; "
                                 "nothing can be fused after it")
            activation = activation or conv.activation
        return _sharing(Conv2d, conv, activation=activation, pool=pool)


def _sharing(cls, conv: nn.Conv2d, **epilogue) -> Conv2d:
    """A ``cls`` built like ``conv`` (on the meta device: no allocation, no init) that holds
    ``conv``'s weight and bias Parameters."""
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
    params = conv._parameters  # the registered Parameters themselves, not parametrized views
    if (not isinstance(params.get("weight"), nn.Parameter)
            or isinstance(params["weight"], nn.parameter.UninitializedParameter)
            or (conv.bias is not None and not isinstance(params.get("bias"), nn.Parameter))):
        raise ValueError("conv's weight and bias must be initialized nn.Parameters "
                         "(lazy and parametrized convs are not supported)")
    new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
              conv.groups, conv.bias is not None, conv.padding_mode, "meta", conv.weight.dtype, **epilogue)
    new.weight = conv.weight
    new.bias = conv.bias
    new.train(conv.training)
    return new


class Conv2dReLU(Conv2d):
    """``relu(conv2d(x) + bias)`` in one kernel; arguments as ``torch.nn.Conv2d``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype, activation="relu")

    @classmethod
    def from_torch(cls, conv: nn.Conv2d) -> "Conv2dReLU":
        """``relu(conv(x))`` with ``conv``'s own (shared) Parameters."""
        return _sharing(cls, conv)


class Conv2dReLUMaxPool2d(Conv2d):
    """``max_pool2d(relu(conv2d(x) + bias), pool)`` in one kernel (pool x pool windows, stride pool)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None, *,
                 pool: int = 2):
        if _pool(pool) is None:
            raise ValueError(f"pool must be at least 2 for Conv2dReLUMaxPool2d, got {pool!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype, activation="relu", pool=pool)

    @classmethod
    def from_torch(cls, conv: nn.Conv2d, pool: int = 2) -> "Conv2dReLUMaxPool2d":
        """``max_pool2d(relu(conv(x)), pool)`` with ``conv``'s own (shared) Parameters."""
        return _sharing(cls, conv, pool=pool)


class ReLU(nn.ReLU):
    """``torch.nn.ReLU`` running ``fastconv.relu``.

    ``inplace=True`` writes the result into the input (as ``torch.nn.ReLU`` does), by a
    copy of the out-of-place result: same values and autograd, no memory saved.
    """

    def forward(self, input: Tensor) -> Tensor:
        y = relu(input)
        return input.copy_(y) if self.inplace else y

    @classmethod
    def from_torch(cls, module: nn.ReLU) -> "ReLU":
        if not isinstance(module, nn.ReLU):
            raise TypeError(f"module must be a torch.nn.ReLU, got {type(module).__name__}")
        new = cls(inplace=module.inplace)
        new.train(module.training)
        return new


class MaxPool2d(nn.MaxPool2d):
    """``torch.nn.MaxPool2d`` running ``fastconv.max_pool2d``: any kernel, stride, padding,
    dilation and ceil_mode (overlapping windows such as 3x3 / stride 2 included).
    ``return_indices`` is not supported (the op keeps its indices for backward only)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices: bool = False,
                 ceil_mode: bool = False) -> None:
        if return_indices:
            raise ValueError("return_indices=True is not supported by fastconv.nn.MaxPool2d; "
                             "use torch.nn.MaxPool2d")
        super().__init__(kernel_size, stride, padding, dilation, return_indices, ceil_mode)

    def forward(self, input: Tensor) -> Tensor:
        return max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)

    @classmethod
    def from_torch(cls, module: nn.MaxPool2d) -> "MaxPool2d":
        if not isinstance(module, nn.MaxPool2d):
            raise TypeError(f"module must be a torch.nn.MaxPool2d, got {type(module).__name__}")
        new = cls(module.kernel_size, module.stride, module.padding, module.dilation, module.return_indices,
                  module.ceil_mode)
        new.train(module.training)
        return new
