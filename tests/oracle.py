"""The float64 oracle and the shared checks every backend's tests use.

``check_conv`` / ``check_pool`` / ``check_relu`` run one call through the
public API on a chosen backend in strict mode (a silent fallback fails the
test), run the same call through ``reference`` in float64 on the CPU, and
compare the output and *every* gradient with tolerances that scale with the
dtype and the reduction length (docs/design.md §8).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

import fastconv
from fastconv._layout import memory_format_of

EPS = {torch.float64: 2.0**-52, torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
TF32_EPS = 2.0**-10
C_ACC = 4  # margin on the accumulation term (rounding errors of a sum add up like a random walk)


def acc_eps(dtype, device="cpu", backend=None) -> float:
    """Rounding unit of the products and sums: float64 for float64, else float32 (every backend
    accumulates half, bfloat16 and float32 in float32). TF32's only where a kernel really
    multiplies in TF32: float32 on a CUDA device with cudnn.allow_tf32 on, for the backends that
    use it (triton's tl.dot, reference's cuDNN, and so auto); the cuda backend has no TF32 path."""
    if dtype == torch.float64:
        return EPS[torch.float64]
    if (dtype == torch.float32 and torch.device(device).type == "cuda" and torch.backends.cudnn.allow_tf32
            and backend != "cuda"):
        return TF32_EPS
    return EPS[torch.float32]


def eps_of(dtype, device="cpu", backend=None) -> float:
    """Rounding unit of the stored result: the storage dtype's."""
    return EPS[dtype]


def tolerance(expected: torch.Tensor, dtype, L: int, eps_acc: float) -> torch.Tensor:
    """4 eps_out |e| + C_ACC eps_acc sqrt(L) rms(e), elementwise: the output's own rounding plus
    the rounding of an L-term reduction accumulated at eps_acc."""
    rms = expected.pow(2).mean().sqrt().item()
    return 4 * EPS[dtype] * expected.abs() + C_ACC * eps_acc * math.sqrt(max(L, 1)) * rms + 1e-300


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, dtype, L: int, device="cpu",
                 eps_acc: float | None = None, backend: str | None = None):
    """|a - e| <= tolerance(e) elementwise (eps_acc: acc_eps(dtype, device, backend) unless given);
    NaN must match NaN, infinities must be equal. L = 0 asks for exact equality (max-pool values
    and routes do no arithmetic)."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    nan_a, nan_e = a.isnan(), e.isnan()
    assert torch.equal(nan_a, nan_e), f"{name}: NaN positions differ ({int(nan_a.sum())} vs {int(nan_e.sum())})"
    fin = ~nan_e
    a, e = a[fin], e[fin]
    if e.numel() == 0:
        return
    inf = e.isinf()
    assert torch.equal(a[inf], e[inf]), f"{name}: inf values differ"
    a, e = a[~inf], e[~inf]
    if e.numel() == 0:
        return
    err = (a - e).abs()
    if L == 0:
        e_r = e.to(dtype).double()  # the exact result, stored in dtype
        bad = a != e_r
        assert not bad.any(), f"{name}: {int(bad.sum())}/{e.numel()} elements differ from the exact result"
        return
    ea = eps_acc if eps_acc is not None else acc_eps(dtype, device, backend)
    tol = tolerance(e, dtype, L, ea)
    bad = err > tol
    assert not bad.any(), (
        f"{name}: {int(bad.sum())}/{e.numel()} elements off (max err {err.max().item():.3g}, "
        f"tol at worst {tol[bad][0].item():.3g}, dtype {dtype}, eps_acc {ea:.3g}, L={L})")


def unambiguous_dy(dy: torch.Tensor, c: torch.Tensor, pool: int, relu: bool, margin: torch.Tensor | float):
    """dy with 0 at the pooled cells whose gradient route the rounding of a correct kernel may
    change: a window whose two largest conv outputs c are closer than ``margin``, or (with relu)
    a cell whose max is within ``margin`` of 0. Random data at realistic sizes has a few such
    cells; the kernel and the oracle may then both be right and still disagree on where dy goes.
    c is the float64 conv output with its bias, [N, K, P, Q], before relu and pooling."""
    N, K, PO, QO = dy.shape
    if pool > 1:
        win = c[:, :, :PO * pool, :QO * pool].reshape(N, K, PO, pool, QO, pool).permute(0, 1, 2, 4, 3, 5)
        top = win.reshape(N, K, PO, QO, pool * pool).topk(2, dim=-1).values
        best, gap = top[..., 0], top[..., 0] - top[..., 1]
        amb = gap <= margin
    else:
        best, amb = c, torch.zeros_like(c, dtype=torch.bool)
    if relu:
        amb = amb | (best.abs() <= margin)
    return dy.masked_fill(amb, 0.0), int(amb.sum())


def make_input(shape, dtype, device, layout="contiguous", gen=None, integer=False):
    """A leaf tensor in the given layout: 'contiguous', 'channels_last' or 'strided'."""
    if integer:  # small integers: exact in every dtype, to force ties
        t = torch.randint(-2, 3, shape, generator=gen).to(torch.float64)
    else:
        t = torch.randn(shape, generator=gen, dtype=torch.float64)
    if layout == "strided":
        big = torch.zeros(shape[:-1] + (2 * shape[-1],), dtype=torch.float64)
        big[..., ::2] = t
        t = big.to(device=device, dtype=dtype)[..., ::2]
    else:
        t = t.to(device=device, dtype=dtype)
        if layout == "channels_last":
            t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(True)


@dataclass
class ConvCase:
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    kw: dict = field(default_factory=dict)  # stride, padding, dilation, groups, activation, pool
    bias: bool = True

    def __str__(self):
        extra = ",".join(f"{k}={v}" for k, v in self.kw.items())
        return f"{self.N}x{self.C}x{self.H}x{self.W}-K{self.K}-{self.R}x{self.S}-b{int(self.bias)}-{extra}"


def _grad_lengths(case: ConvCase, y_shape):
    g = case.kw.get("groups", 1)
    N, K, PO, QO = y_shape
    pool = case.kw.get("pool") or 1
    return {
        "y": case.C // g * case.R * case.S,
        "dx": case.K // g * case.R * case.S,
        "dw": N * PO * QO * pool * pool,
        "db": N * PO * QO,
    }


def check_conv(backend: str, case: ConvCase, dtype=torch.float32, device="cpu", layout="contiguous",
               seed=0, integer=False, grads=True, guard_routes=False):
    """One fused conv call on ``backend`` (strict) against the float64 oracle: y, dx, dw, db.
    guard_routes: random data at realistic sizes; dy is 0 at the cells whose route a correct
    fp32 accumulator may legitimately choose differently (``unambiguous_dy``)."""
    gen = torch.Generator().manual_seed(seed)
    x = make_input((case.N, case.C, case.H, case.W), dtype, device, layout, gen, integer)
    g = case.kw.get("groups", 1)
    w = make_input((case.K, case.C // g, case.R, case.S), dtype, device, "contiguous", gen, integer)
    b = make_input((case.K,), dtype, device, "contiguous", gen, integer) if case.bias else None
    with fastconv.use_backend(backend, strict=True):
        y = fastconv.conv2d(x, w, b, **case.kw)
    assert y.dtype == dtype and y.device == x.device
    # with one channel or a 1x1 plane both formats are the same layout
    assert memory_format_of(y) == memory_format_of(x) or y.shape[1] == 1 or y.shape[2] * y.shape[3] == 1, \
        "output must keep x's memory format"
    x64, w64 = x.detach().cpu().double().requires_grad_(), w.detach().cpu().double().requires_grad_()
    b64 = b.detach().cpu().double().requires_grad_() if b is not None else None
    with fastconv.use_backend("reference"):
        y64 = fastconv.conv2d(x64, w64, b64, **case.kw)
    L = _grad_lengths(case, tuple(y64.shape))
    eps_acc = acc_eps(dtype, device, backend)
    assert_close("y", y, y64, dtype, L["y"], device, eps_acc)
    if not grads:
        return
    dy = torch.randn(y64.shape, generator=gen, dtype=torch.float64)
    if integer:
        dy = dy.round()
    if guard_routes:
        with fastconv.use_backend("reference"):
            kw = {k: v for k, v in case.kw.items() if k not in ("activation", "pool")}
            c64 = fastconv.conv2d(x64.detach(), w64.detach(), b64.detach() if b64 is not None else None, **kw)
        margin = 2 * C_ACC * eps_acc * math.sqrt(L["y"]) * c64.pow(2).mean().sqrt().item()
        dy, _ = unambiguous_dy(dy, c64, case.kw.get("pool") or 1, case.kw.get("activation") == "relu", margin)
    with fastconv.use_backend(backend, strict=True):
        y.backward(dy.to(device=device, dtype=dtype).contiguous(memory_format=memory_format_of(y)))
    with fastconv.use_backend("reference"):  # the oracle's backward too (outside it, auto would pick)
        y64.backward(dy.to(dtype).double())
    assert_close("dx", x.grad, x64.grad, dtype, L["dx"], device, eps_acc)
    assert memory_format_of(x.grad) == memory_format_of(x.detach().contiguous(
        memory_format=memory_format_of(x))) or case.C == 1, "dx must keep x's memory format"
    assert_close("dw", w.grad, w64.grad, dtype, L["dw"], device, eps_acc)
    if b is not None:
        assert_close("db", b.grad, b64.grad, dtype, L["db"], device, eps_acc)


@dataclass
class PoolCase:
    N: int
    C: int
    H: int
    W: int
    kw: dict  # kernel_size, stride, padding, dilation, ceil_mode

    def __str__(self):
        return f"{self.N}x{self.C}x{self.H}x{self.W}-" + ",".join(f"{k}={v}" for k, v in self.kw.items())


def unfused(x, w, b, activation=None, pool=None, **kw):
    """torch's conv2d -> relu -> max_pool2d: what the fused op must equal, NaN and inf included."""
    y = torch.nn.functional.conv2d(x, w, b, **kw)
    if activation == "relu":
        y = torch.relu(y)
    return torch.nn.functional.max_pool2d(y, pool) if pool else y


def check_conv_like_torch(backend: str, x, w, b, device="cpu", **kw):
    """Values and every gradient of one float64 call equal torch's unfused ops elementwise: NaN
    where torch has NaN, the same infinities, the rest within rounding. For inputs holding NaN or
    inf, whose propagation (the relu mask, the window index) must follow torch exactly."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    ref_leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    dev = [t.to(device).detach().requires_grad_() if t is not None else None for t in leaves]
    with fastconv.use_backend(backend, strict=True):
        y = fastconv.conv2d(*dev, **kw)
    ref = unfused(*ref_leaves, **kw)
    torch.testing.assert_close(y.cpu(), ref, equal_nan=True, msg=lambda m: f"y: {m}")
    dy = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3), dtype=ref.dtype)
    with fastconv.use_backend(backend, strict=True):
        y.backward(dy.to(device).contiguous(memory_format=memory_format_of(y)))
    ref.backward(dy)
    for name, a, e in zip(("dx", "dw", "db"), dev, ref_leaves):
        if e is not None:
            torch.testing.assert_close(a.grad.cpu(), e.grad, equal_nan=True, msg=lambda m, n=name: f"{n}: {m}")


def check_pool(backend: str, case: PoolCase, dtype=torch.float32, device="cpu", layout="contiguous",
               seed=0, integer=False):
    """Values exactly equal to torch's max_pool2d; gradients routed to the same elements."""
    gen = torch.Generator().manual_seed(seed)
    x = make_input((case.N, case.C, case.H, case.W), dtype, device, layout, gen, integer)
    with fastconv.use_backend(backend, strict=True):
        y = fastconv.max_pool2d(x, **case.kw)
    x64 = x.detach().cpu().double().requires_grad_()
    y64 = torch.nn.functional.max_pool2d(x64, **case.kw)
    assert_close("y", y, y64, dtype, 0, device)  # max-pool does no arithmetic: exactly torch's values
    assert memory_format_of(y) == memory_format_of(x.detach().contiguous(memory_format=memory_format_of(x))) \
        or case.C == 1
    dy = torch.randn(y64.shape, generator=gen, dtype=torch.float64).to(dtype)
    with fastconv.use_backend(backend, strict=True):
        y.backward(dy.to(device))
    y64.backward(dy.double())
    k = case.kw.get("kernel_size")
    k = k if isinstance(k, int) else max(k)
    s = case.kw.get("stride") or k
    s = s if isinstance(s, int) else min(s)
    overlap = (-(-k // s)) ** 2  # windows that can share an input element
    assert_close("dx", x.grad, x64.grad, dtype, overlap, device)


def check_relu(backend: str, shape, dtype=torch.float32, device="cpu", layout="contiguous", seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = make_input(shape, dtype, device, layout, gen)
    with fastconv.use_backend(backend, strict=True):
        y = fastconv.relu(x)
    x64 = x.detach().cpu().double().requires_grad_()
    y64 = torch.relu(x64)
    assert_close("y", y, y64, dtype, 1, device)
    dy = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    with fastconv.use_backend(backend, strict=True):
        y.backward(dy.to(device))
    y64.backward(dy.double())
    assert_close("dx", x.grad, x64.grad, dtype, 1, device)


def check_current_stream(backend: str):
    """A GPU backend's fused conv, forward and backward, runs on the current stream. On a side
    stream: a long sleep, then x is overwritten, then the conv. A kernel launched on another
    stream runs during the sleep and reads the old x; one on the current stream reads the new."""
    case = ConvCase(2, 8, 16, 16, 8, 3, 3, dict(padding=1, activation="relu", pool=2))
    gen = torch.Generator(device="cuda").manual_seed(0)
    shape_x, shape_w = (case.N, case.C, case.H, case.W), (case.K, case.C, case.R, case.S)
    x_old, x_new = (torch.randn(shape_x, device="cuda", generator=gen) for _ in range(2))
    w = torch.randn(shape_w, device="cuda", generator=gen)
    with fastconv.use_backend(backend, strict=True):
        xr, wr = x_new.clone().requires_grad_(), w.clone().requires_grad_()
        ref = fastconv.conv2d(xr, wr, **case.kw)
        ref.backward(torch.ones_like(ref))
        torch.cuda.synchronize()
        x, ws = x_old.clone(), w.clone().requires_grad_()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            torch.cuda._sleep(500_000_000)  # a few hundred ms of GPU clock cycles
            x.copy_(x_new)
            x.requires_grad_()
            y = fastconv.conv2d(x, ws, **case.kw)
            y.backward(torch.ones_like(y))
        torch.cuda.synchronize()
    for name, a, e in (("y", y, ref), ("dx", x.grad, xr.grad), ("dw", ws.grad, wr.grad)):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n} off the current stream: {m}")


# Shape cases every backend is held to (tiny: the Triton interpreter runs them too).
CONV_CASES = [
    ConvCase(2, 3, 8, 8, 4, 3, 3, dict(padding=1, activation="relu", pool=2)),
    ConvCase(2, 3, 8, 8, 4, 3, 3, dict(padding=1)),
    ConvCase(2, 3, 8, 8, 4, 3, 3, dict(padding=1, activation="relu")),
    ConvCase(2, 3, 8, 8, 4, 3, 3, dict(padding=1, pool=2), bias=False),
    ConvCase(1, 5, 9, 7, 6, 3, 3, dict(padding=1, activation="relu", pool=2)),           # odd, ragged pool
    ConvCase(2, 4, 11, 10, 8, 3, 3, dict(padding=(2, 1), stride=2, activation="relu", pool=2)),
    ConvCase(1, 4, 12, 12, 4, 3, 3, dict(padding=2, dilation=2, activation="relu", pool=3)),
    ConvCase(2, 8, 7, 9, 6, 3, 3, dict(padding=1, groups=2, activation="relu", pool=2)),
    ConvCase(2, 6, 8, 8, 6, 3, 3, dict(padding=1, groups=6, activation="relu", pool=2)),  # depthwise
    ConvCase(1, 4, 8, 8, 8, 1, 1, dict(activation="relu", pool=2)),                       # 1x1
    ConvCase(1, 3, 9, 9, 4, 4, 4, dict(padding="same", activation="relu", pool=2)),        # asymmetric
    ConvCase(1, 2, 10, 10, 4, 7, 7, dict(stride=2, padding=3, activation="relu")),         # stem-like
    ConvCase(1, 16, 6, 6, 8, 3, 3, dict(padding="valid", activation="relu", pool=2)),
]

POOL_CASES = [
    PoolCase(2, 3, 8, 8, dict(kernel_size=2)),
    PoolCase(2, 3, 9, 7, dict(kernel_size=3, stride=2)),
    PoolCase(1, 4, 9, 9, dict(kernel_size=3, stride=2, padding=1)),
    PoolCase(1, 2, 10, 9, dict(kernel_size=3, stride=2, ceil_mode=True)),
    PoolCase(1, 2, 11, 11, dict(kernel_size=(3, 2), stride=(2, 1), dilation=(2, 1))),
    PoolCase(1, 3, 7, 8, dict(kernel_size=2, stride=1, padding=1, ceil_mode=True)),
]
