"""The eager path (fastconv/_eager.py) against the custom-op path."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

import fastconv
from fastconv import _eager, _ext

BACKENDS = ["reference", pytest.param("cpu", marks=pytest.mark.skipif(
    not _ext.load(), reason="the C++ extension is not built"))]

CALLS = {
    "conv-relu-pool": lambda x, w, b: fastconv.conv2d(x, w, b, padding=1, activation="relu", pool=2),
    "conv-strided-groups": lambda x, w, b: fastconv.conv2d(x, w[:, :2], b, stride=2, groups=2, dilation=(1, 2)),
    "conv-relu": lambda x, w, b: fastconv.conv2d(x, w, b, padding=(1, 2), activation="relu"),
    "relu": lambda x, w, b: fastconv.relu(x - 0.1),
    "max_pool2d": lambda x, w, b: fastconv.max_pool2d(x, 3, 2, padding=1, ceil_mode=True),
}
GRAD_FN = {"conv-relu-pool": "FastconvConv2dBackward", "conv-strided-groups": "FastconvConv2dBackward",
           "conv-relu": "FastconvConv2dBackward",
           "relu": "FastconvReLUBackward", "max_pool2d": "FastconvMaxPool2dBackward"}
# where reference runs a relu or a conv with no pool, the eager path is ATen's own ops
ATEN_GRAD_FN = {"conv-strided-groups": "ConvolutionBackward0", "conv-relu": "ReluBackward0", "relu": "ReluBackward0",
                "max_pool2d": "MaxPool2DWithIndicesBackward0"}


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 9, 11, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(6, 4, 3, 3, generator=g)
    b = torch.randn(6, generator=g)
    return [t.requires_grad_() for t in (x, w, b)]


def _run(call, path, monkeypatch):
    monkeypatch.setenv(_eager.ENV, "1" if path == "eager" else "0")
    x, w, b = _inputs()
    y = CALLS[call](x, w, b)
    name = y.grad_fn.name()
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    y.backward(dy)
    grads = [t.grad if t.grad is not None else torch.zeros(0) for t in (x, w, b)]
    return name, y.detach(), grads


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call", list(CALLS))
def test_eager_path_equals_custom_op_path(call, backend, monkeypatch):
    with fastconv.use_backend(backend, strict=True):
        name_d, y_d, g_d = _run(call, "eager", monkeypatch)
        name_c, y_c, g_c = _run(call, "custom_op", monkeypatch)
    expected = ATEN_GRAD_FN.get(call, GRAD_FN[call]) if backend == "reference" else GRAD_FN[call]
    assert name_d == expected, "the public op did not take the eager path"
    assert name_c.startswith("GeneratedBackwardFor_fastconv_"), "FASTCONV_EAGER_PATH=0 did not force the op"
    assert torch.equal(y_d, y_c) and y_d.stride() == y_c.stride()
    for a, c in zip(g_d, g_c):
        assert torch.equal(a, c)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call, n_saved", [("conv-relu-pool", 4), ("conv-relu", 3)])
def test_saved_tensors_match_the_custom_op(call, n_saved, backend, monkeypatch):
    """The same tensors saved for backward on both paths, ATen's own ops included (reference runs
    a pool-free conv through them): x, w, y (and the uint8 index after a pool)."""
    saved = {}
    for path in ("eager", "custom_op"):
        monkeypatch.setenv(_eager.ENV, "1" if path == "eager" else "0")
        x, w, b = _inputs()
        got = saved[path] = []
        with fastconv.use_backend(backend, strict=True), torch.autograd.graph.saved_tensors_hooks(
                lambda t: got.append((tuple(t.shape), t.dtype)) or t, lambda t: t):
            CALLS[call](x, w, b)
    assert sorted(saved["eager"], key=str) == sorted(saved["custom_op"], key=str)
    assert len(saved["eager"]) == n_saved


def test_fake_tensors_and_tracing_use_the_custom_op():
    with FakeTensorMode():
        x = torch.randn(2, 4, 9, 11)
        w = torch.randn(6, 4, 3, 3)
        assert fastconv.conv2d(x, w, padding=1, activation="relu", pool=2).shape == (2, 6, 4, 5)
        assert fastconv.max_pool2d(fastconv.relu(x), 3, 2, 1).shape == (2, 4, 5, 6)

    def f(x, w):
        return fastconv.max_pool2d(fastconv.relu(fastconv.conv2d(x, w, padding=1)), 2)

    gm = make_fx(f)(torch.randn(1, 4, 8, 8), torch.randn(6, 4, 3, 3))
    targets = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    assert {"fastconv.conv2d_fwd.default", "fastconv.relu_fwd.default",
            "fastconv.max_pool2d_fwd.default"} <= targets


def test_usable_only_for_plain_eager_tensors(monkeypatch):
    x = torch.randn(1, 2, 4, 4)
    assert _eager.usable(x, torch.nn.Parameter(torch.randn(3, 2, 1, 1)), None)
    assert not _eager.usable(x.to("meta"))
    with FakeTensorMode():
        assert not _eager.usable(torch.randn(1, 2, 4, 4))
    monkeypatch.setenv(_eager.ENV, "0")
    assert not _eager.usable(x)


def test_double_backward_fails_clearly_on_both_paths(monkeypatch):
    for path in ("1", "0"):
        monkeypatch.setenv(_eager.ENV, path)
        x = torch.randn(1, 2, 6, 6, requires_grad=True)
        y = fastconv.conv2d(x, torch.randn(3, 2, 3, 3), activation="relu", pool=2)
        (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
        with pytest.raises(RuntimeError, match="fastconv.conv2d_bwd"):
            gx.sum().backward()


@pytest.mark.skipif(not _ext.load(), reason="the C++ extension is not built")
@pytest.mark.parametrize("name", ["conv-relu-pool", "max_pool2d"])
def test_a_call_autograd_does_not_record_runs_the_kernel_without_the_function(name, monkeypatch):
    """no_grad / inputs without requires_grad: the same y, no grad_fn, and no autograd Function
    (its apply is most of the eager path's cost on small calls)."""
    x, w, b = _inputs()
    with fastconv.use_backend("cpu", strict=True):
        want = CALLS[name](x.requires_grad_(), w, b)
        assert type(want.grad_fn).__name__ == GRAD_FN[name]

        def no_apply(*args):
            raise AssertionError("the autograd Function ran for a call autograd does not record")

        for fn in (_eager.FastconvConv2d, _eager.FastconvMaxPool2d):
            monkeypatch.setattr(fn, "apply", no_apply)
        with torch.no_grad():
            got = CALLS[name](x, w, b)
        got2 = CALLS[name](x.detach(), w.detach(), b.detach())
    for y in (got, got2):
        assert y.grad_fn is None and torch.equal(y, want.detach())
