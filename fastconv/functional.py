"""The public fastconv functions: ``conv2d``, ``relu``, ``max_pool2d`` (docs/design.md §2, §4).

Each checks its arguments (``_args.py``: TypeError / ValueError naming the argument), applies
autocast like ``torch.nn.functional.conv2d``, then runs the op: through the eager autograd
Function (``_eager.py``) in plain eager mode, else through the registered custom op
(``ops.py``) that compilers and tracers see.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _args, _eager, ops


def _autocast(*ts):
    """Cast like F.conv2d under autocast: floating inputs (not float64) to the autocast dtype."""
    ref = ts[0]
    if not isinstance(ref, Tensor):
        return ts
    dev = ref.device.type
    if dev not in ("cpu", "cuda") or not torch.is_autocast_enabled(dev):
        return ts
    dt = torch.get_autocast_dtype(dev)
    return tuple(t.to(dt) if isinstance(t, Tensor) and t.is_floating_point() and t.dtype != torch.float64
                 else t for t in ts)


def conv2d(x: Tensor, w: Tensor, b: Optional[Tensor] = None, stride=1, padding=0, dilation=1, groups=1,
           activation: Optional[str] = None, pool: Optional[int] = None) -> Tensor:
    """Fused ``max_pool2d(act(conv2d(x, w, b, ...)), pool)``.

    Arguments follow ``torch.nn.functional.conv2d`` (padding: int, pair, 'same'
    or 'valid'); ``activation`` is None or 'relu'; ``pool`` is None or k for a
    non-overlapping k x k max-pool with stride k (floor mode). x may be
    [N, C, H, W] or unbatched [C, H, W]; the output keeps x's memory format.
    """
    x, w, b = _autocast(x, w, b)
    _args.tensor("x", x, (3, 4))
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    p = _args.conv(x, w, b, stride, padding, dilation, groups, activation, pool)
    if _eager.usable(x, w, b):
        y = _eager.conv2d(x, w, b, p)
    else:
        y, _ = ops.conv2d_fwd_p(x, w, b, p)
    return y.squeeze(0) if unbatched else y


def relu(x: Tensor) -> Tensor:
    """``max(x, 0)`` elementwise (NaN stays NaN), any shape."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _args.FLOAT_DTYPES:
        raise TypeError(f"x must be a floating-point tensor (float16, bfloat16, float32 or float64), got {x.dtype}")
    return _eager.relu(x) if _eager.usable(x) else ops.relu_fwd(x)


def max_pool2d(x: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False) -> Tensor:
    """Max-pool like ``torch.nn.functional.max_pool2d`` (general kernel/stride/padding/
    dilation/ceil_mode, overlapping windows allowed). x is [N, C, H, W] or [C, H, W]."""
    _args.tensor("x", x, (3, 4))
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    p = _args.max_pool(x, kernel_size, stride, padding, dilation, ceil_mode)
    if _eager.usable(x):
        y = _eager.max_pool2d(x, p)
    else:
        y, _ = ops.max_pool2d_fwd_p(x, p)
    return y.squeeze(0) if unbatched else y
