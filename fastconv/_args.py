"""User-argument checks, written once and shared by every backend.

Every public op validates here before anything runs, so a bad call fails the
same way on every backend: ``TypeError`` for a wrong type or dtype,
``ValueError`` for a wrong value or shape, each naming the argument and what
was expected.
"""
from __future__ import annotations

import numbers

import torch

from ._params import MAX_POOL, ConvParams, PoolParams

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _is_int(v) -> bool:
    if type(v) is int:  # the common case first: the ABC check below costs a microsecond
        return True
    return isinstance(v, (numbers.Integral, torch.SymInt)) and not isinstance(v, bool)


def pair(name: str, v, *, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each >= minimum."""
    if type(v) is int and v >= minimum:  # fast path of the common call
        return v, v
    if type(v) is tuple and len(v) == 2 and type(v[0]) is int and type(v[1]) is int and min(v) >= minimum:
        return v
    if _is_int(v):
        v = (v, v)
    elif isinstance(v, (tuple, list, torch.Size)) and len(v) == 1 and _is_int(v[0]):
        v = (v[0], v[0])
    if not (isinstance(v, (tuple, list, torch.Size)) and len(v) == 2 and all(_is_int(e) for e in v)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    if any(e < minimum for e in v):
        what = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {what}, got {tuple(v)}")
    return int(v[0]), int(v[1])


def tensor(name: str, t, ndims: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), got {t.dtype}"
        )
    if t.dim() not in ndims:
        want = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{name} must be {want}, got a {t.dim()}-D tensor of shape {tuple(t.shape)}")
    return t


def same_device_dtype(ref_name: str, ref: torch.Tensor, name: str, t: torch.Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; expected the same device")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; expected the same dtype")


def activation(v) -> bool:
    """None / 'none' -> False, 'relu' -> True."""
    if v is None:
        return False
    if isinstance(v, str) and v.lower() in ("none", "identity"):
        return False
    if isinstance(v, str) and v.lower() == "relu":
        return True
    raise ValueError(f"activation must be None or 'relu', got {v!r}")


def pool(v) -> int:
    if v is None:
        return 1
    if isinstance(v, (tuple, list)) and len(v) == 2 and v[0] == v[1]:
        v = v[0]
    if not _is_int(v):
        raise TypeError(f"pool must be None or an int (the k of a k x k, stride-k max-pool), got {v!r}")
    if not 1 <= v <= MAX_POOL:
        raise ValueError(f"pool must be in 1..{MAX_POOL} (k x k window, stride k), got {v}")
    return int(v)


def conv_padding(v, R: int, S: int, stride, dilation) -> tuple[int, int, int, int]:
    if isinstance(v, str):
        if v == "valid":
            return (0, 0, 0, 0)
        if v == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1, got stride={stride}")
            th, tw = dilation[0] * (R - 1), dilation[1] * (S - 1)
            return (th // 2, tw // 2, th - th // 2, tw - tw // 2)
        raise ValueError(f"padding must be an int, a pair of ints, 'same' or 'valid', got {v!r}")
    ph, pw = pair("padding", v, minimum=0)
    return (ph, pw, ph, pw)


_PLAIN = (int, str, type(None))
_memo: dict = {}  # the parsed parameters of calls seen before (plain ints, strings, int tuples)


def _plain(*values) -> bool:
    """Whether every value is an int, a str, None or a tuple of ints, by exact type: values whose
    equality cannot hide a different type (True == 1, 1.0 == 1) and so may key a memo."""
    for v in values:
        t = type(v)
        if t not in _PLAIN and not (t is tuple and all(type(e) is int for e in v)):
            return False
    return True


def _remember(key, value) -> None:
    if len(_memo) > 1024:
        _memo.clear()
    _memo[key] = value


def _conv_params(stride, padding, dilation, groups, act, pool_k, R, S) -> ConvParams:
    if not _is_int(groups) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    st = pair("stride", stride, minimum=1)
    dil = pair("dilation", dilation, minimum=1)
    pad = conv_padding(padding, R, S, st, dil)
    return ConvParams(st, pad, dil, int(groups), activation(act), pool(pool_k))


def conv(x, w, b, stride, padding, dilation, groups, act, pool_k) -> ConvParams:
    """Check a conv2d call (x already 4-D) and return its ConvParams (the scalar arguments'
    parsing is remembered per distinct plain value: ~2.5 of its ~4 us a call)."""
    tensor("x", x, (4,))
    tensor("w", w, (4,))
    same_device_dtype("x", x, "w", w)
    if b is not None:
        tensor("b", b, (1,))
        same_device_dtype("x", x, "b", b)
    N, C, H, W = x.shape
    K, CG, R, S = w.shape
    plain = _plain(stride, padding, dilation, groups, act, pool_k)
    key = ("conv", stride, padding, dilation, groups, act, pool_k, R, S)
    p = _memo.get(key) if plain else None
    if p is None:
        p = _conv_params(stride, padding, dilation, groups, act, pool_k, R, S)
        if plain:
            _remember(key, p)
    if C % p.groups != 0 or K % p.groups != 0:
        raise ValueError(
            f"groups={groups} must divide both the input channels C={C} and the output channels K={K}"
        )
    if CG * p.groups != C:
        raise ValueError(
            f"w must have shape [K, C/groups, R, S] = [{K}, {C // groups}, R, S] for x with C={C} and "
            f"groups={groups}, got {tuple(w.shape)}"
        )
    if b is not None and b.shape[0] != K:
        raise ValueError(f"b must have shape [{K}] (one per output channel), got {tuple(b.shape)}")
    P, Q = p.conv_hw(H, W, R, S)
    if P < 1 or Q < 1:
        raise ValueError(
            f"w's kernel {R}x{S} (dilation {p.dilation}) is larger than x's padded input "
            f"{H + p.padding[0] + p.padding[2]}x{W + p.padding[1] + p.padding[3]}"
        )
    if p.pool > 1 and (P < p.pool or Q < p.pool):
        raise ValueError(f"pool={p.pool} is larger than the conv output {P}x{Q}")
    return p


def _pool_params(kernel_size, stride, padding, dilation, ceil_mode) -> PoolParams:
    k = pair("kernel_size", kernel_size, minimum=1)
    s = k if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) else pair(
        "stride", stride, minimum=1)
    pad = pair("padding", padding, minimum=0)
    dil = pair("dilation", dilation, minimum=1)
    if pad[0] * 2 > k[0] or pad[1] * 2 > k[1]:
        raise ValueError(f"padding must be at most half of kernel_size {k}, got {pad}")
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"ceil_mode must be a bool, got {ceil_mode!r}")
    return PoolParams(k, s, pad, dil, ceil_mode)


def max_pool(x, kernel_size, stride, padding, dilation, ceil_mode) -> PoolParams:
    tensor("x", x, (4,))
    plain = type(ceil_mode) is bool and _plain(kernel_size, stride, padding, dilation)
    key = ("max_pool", kernel_size, stride, padding, dilation, ceil_mode)
    p = _memo.get(key) if plain else None
    if p is None:
        p = _pool_params(kernel_size, stride, padding, dilation, ceil_mode)
        if plain:
            _remember(key, p)
    OH, OW = p.out_hw(x.shape[2], x.shape[3])
    if OH < 1 or OW < 1:
        raise ValueError(
            f"kernel_size {p.kernel} (dilation {p.dilation}) is larger than x's padded input "
            f"{x.shape[2] + 2 * p.padding[0]}x{x.shape[3] + 2 * p.padding[1]}"
        )
    return p
