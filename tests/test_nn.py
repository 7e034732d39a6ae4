"""fastconv.nn layers against their torch.nn counterparts: construction and initialization,
state_dict both ways, outputs and every gradient (float64, on whichever backend serves),
from_torch, argument errors, memory format, autocast and torch.compile."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastconv
from fastconv import nn as fnn

CONV_KW = [
    dict(),
    dict(padding=1),
    dict(padding="same", bias=False),
    dict(stride=2, padding=(1, 0)),
    dict(dilation=2, padding=2),
    dict(groups=2, padding=1),
    dict(padding=1, padding_mode="reflect"),
    dict(padding="same", padding_mode="circular", kernel_size=(2, 3)),
]
EPILOGUES = [(None, None), ("relu", None), (None, 2), ("relu", 2), ("relu", 3)]


def _torch_chain(conv, x, activation, pool):
    y = conv(x)
    if activation == "relu":
        y = F.relu(y)
    if pool:
        y = F.max_pool2d(y, pool)
    return y


def _pair(seed, kw, activation=None, pool=None):
    """(torch conv, fastconv conv) built from the same seed: the same initial weights."""
    kw = dict(kw)
    k = kw.pop("kernel_size", 3)
    torch.manual_seed(seed)
    ref = nn.Conv2d(4, 6, k, dtype=torch.float64, **kw)
    torch.manual_seed(seed)
    fast = fnn.Conv2d(4, 6, k, dtype=torch.float64, activation=activation, pool=pool, **kw)
    return ref, fast


def _grads(module, x, dy):
    x = x.detach().clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    y = module(x)
    y.backward(dy)
    return y.detach(), x.grad, {n: p.grad for n, p in module.named_parameters()}


@pytest.mark.parametrize("kw", CONV_KW, ids=str)
@pytest.mark.parametrize("activation,pool", EPILOGUES, ids=str)
def test_conv2d_matches_torch_values_and_grads(kw, activation, pool):
    ref, fast = _pair(0, kw, activation, pool)
    for (n1, p1), (n2, p2) in zip(ref.state_dict().items(), fast.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), "same seed must give the same initial parameters"
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 11, 10, dtype=torch.float64, generator=gen)
    y_ref = _torch_chain(ref, x, activation, pool)
    dy = torch.randn(y_ref.shape, dtype=torch.float64, generator=gen)

    class Chain(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = ref

        def forward(self, x):
            return _torch_chain(self.conv, x, activation, pool)

    want = _grads(Chain(), x, dy)
    got = _grads(fast, x, dy)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    for name, g in got[2].items():
        torch.testing.assert_close(g, want[2]["conv." + name], msg=name)


def test_state_dict_loads_both_ways():
    torch.manual_seed(0)
    ref = nn.Conv2d(3, 8, 3, padding=1)
    fast = fnn.Conv2dReLUMaxPool2d(3, 8, 3, padding=1)
    assert list(ref.state_dict()) == list(fast.state_dict()) == ["weight", "bias"]
    fast.load_state_dict(ref.state_dict())
    assert torch.equal(fast.weight, ref.weight) and torch.equal(fast.bias, ref.bias)
    fast2 = fnn.Conv2dReLU(3, 8, 3, padding=1)
    ref2 = nn.Conv2d(3, 8, 3, padding=1)
    ref2.load_state_dict(fast2.state_dict())
    assert torch.equal(ref2.weight, fast2.weight) and torch.equal(ref2.bias, fast2.bias)
    no_bias = fnn.Conv2d(3, 8, 3, bias=False)
    with pytest.raises(RuntimeError, match="bias"):
        no_bias.load_state_dict(ref.state_dict())


def test_reset_parameters_is_torchs():
    torch.manual_seed(3)
    ref = nn.Conv2d(5, 7, 3)
    torch.manual_seed(3)
    fast = fnn.Conv2d(5, 7, 3, activation="relu")
    torch.manual_seed(4)
    ref.reset_parameters()
    torch.manual_seed(4)
    fast.reset_parameters()
    assert torch.equal(ref.weight, fast.weight) and torch.equal(ref.bias, fast.bias)


def test_fixed_epilogue_classes():
    a = fnn.Conv2dReLU(3, 4, 3)
    b = fnn.Conv2dReLUMaxPool2d(3, 4, 3, padding=1)
    c = fnn.Conv2dReLUMaxPool2d(3, 4, 3, pool=4)
    assert (a.activation, a.pool) == ("relu", None)
    assert (b.activation, b.pool) == ("relu", 2)
    assert c.pool == 4
    assert isinstance(b, nn.Conv2d) and isinstance(b, fnn.Conv2d)
    assert b(torch.randn(1, 3, 9, 9)).shape == (1, 4, 4, 4)


def test_extra_repr():
    r = repr(fnn.Conv2d(3, 4, 3, padding=1, activation="relu", pool=2))
    assert r == "Conv2d(3, 4, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), activation='relu', pool=2)"
    assert repr(fnn.Conv2d(3, 4, 1)) == repr(nn.Conv2d(3, 4, 1))


@pytest.mark.parametrize("kwargs,match", [
    (dict(activation="gelu"), "activation"),
    (dict(pool=0), "pool"),
    (dict(pool=17), "pool"),
    (dict(pool=2.0), "pool"),
])
def test_bad_epilogue_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fnn.Conv2d(3, 4, 3, **kwargs)


def test_conv2d_relu_maxpool_needs_a_pool():
    with pytest.raises(ValueError, match="pool"):
        fnn.Conv2dReLUMaxPool2d(3, 4, 3, pool=1)


def test_bad_input_names_the_argument():
    layer = fnn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match="x must be"):
        layer(torch.randn(3))
    with pytest.raises(ValueError, match="w must have shape"):
        layer(torch.randn(1, 5, 8, 8))


def test_from_torch_shares_parameters():
    ref = nn.Conv2d(3, 4, 3, padding=1, bias=True).eval()
    fast = fnn.Conv2d.from_torch(ref, activation="relu", pool=2)
    assert type(fast) is fnn.Conv2d
    assert fast.weight is ref.weight and fast.bias is ref.bias
    assert not fast.training
    assert (fast.activation, fast.pool, fast.padding, fast.stride) == ("relu", 2, (1, 1), (1, 1))
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fast(x), F.max_pool2d(F.relu(ref(x)), 2))
    fast(x).sum().backward()
    fast_grad, ref.weight.grad = ref.weight.grad, None  # the same Parameter received it
    F.max_pool2d(F.relu(ref(x)), 2).sum().backward()
    torch.testing.assert_close(fast_grad, ref.weight.grad)
    no_bias = fnn.Conv2dReLU.from_torch(nn.Conv2d(3, 4, 3, bias=False))
    assert type(no_bias) is fnn.Conv2dReLU and no_bias.bias is None
    pooled = fnn.Conv2dReLUMaxPool2d.from_torch(ref, pool=3)
    assert (pooled.activation, pooled.pool) == ("relu", 3)


def test_from_torch_extends_a_fastconv_conv():
    relu = fnn.Conv2dReLU(3, 4, 3)
    both = fnn.Conv2d.from_torch(relu, pool=2)
    assert (both.activation, both.pool) == ("relu", 2) and both.weight is relu.weight
    with pytest.raises(ValueError, match="max-pool"):
        fnn.Conv2d.from_torch(both, pool=2)


def test_from_torch_rejects_what_it_cannot_share():
    with pytest.raises(TypeError, match="conv must be a torch.nn.Conv2d"):
        fnn.Conv2d.from_torch(nn.Linear(3, 4))
    with pytest.raises(ValueError, match="lazy"):
        fnn.Conv2d.from_torch(nn.LazyConv2d(4, 3))


@pytest.mark.parametrize("inplace", [False, True])
def test_relu_matches_torch(inplace):
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    x[0, 0, 0, :2] = 0.0
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    pre_a, pre_b = a * 1.0, b * 1.0  # non-leaf inputs, as in-place ReLU needs
    ya = fnn.ReLU(inplace=inplace)(pre_a)
    yb = nn.ReLU(inplace=inplace)(pre_b)
    torch.testing.assert_close(ya, yb)
    if inplace:
        assert ya.data_ptr() == pre_a.data_ptr() and torch.equal(pre_a, yb)
    dy = torch.randn_like(x)
    ya.backward(dy)
    yb.backward(dy)
    torch.testing.assert_close(a.grad, b.grad)
    assert repr(fnn.ReLU(inplace=True)) == "ReLU(inplace=True)"
    assert fnn.ReLU.from_torch(nn.ReLU(inplace=True)).inplace


@pytest.mark.parametrize("kw", [
    dict(kernel_size=2), dict(kernel_size=3, stride=2), dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, ceil_mode=True), dict(kernel_size=(2, 3), stride=1, dilation=(2, 1)),
], ids=str)
def test_maxpool_matches_torch(kw):
    x = torch.randn(2, 3, 9, 10, dtype=torch.float64)
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    fast, ref = fnn.MaxPool2d(**kw), nn.MaxPool2d(**kw)
    assert repr(fast) == repr(ref)
    ya, yb = fast(a), ref(b)
    torch.testing.assert_close(ya, yb)
    dy = torch.randn_like(yb)
    ya.backward(dy)
    yb.backward(dy)
    torch.testing.assert_close(a.grad, b.grad)
    torch.testing.assert_close(fnn.MaxPool2d.from_torch(ref)(x), yb.detach())


def test_maxpool_return_indices_is_refused():
    with pytest.raises(ValueError, match="return_indices"):
        fnn.MaxPool2d(2, return_indices=True)
    with pytest.raises(ValueError, match="return_indices"):
        fnn.MaxPool2d.from_torch(nn.MaxPool2d(2, return_indices=True))


def test_channels_last_in_channels_last_out():
    layer = fnn.Conv2dReLUMaxPool2d(3, 8, 3, padding=1)
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    y = layer(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, F.max_pool2d(F.relu(F.conv2d(x, layer.weight, layer.bias, padding=1)), 2))


def test_autocast_bf16_like_torch():
    layer = fnn.Conv2dReLU(3, 4, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(torch.randn(1, 3, 6, 6))
    assert y.dtype == torch.bfloat16


def test_compile_fullgraph_no_graph_break():
    torch.manual_seed(0)
    model = nn.Sequential(fnn.Conv2dReLUMaxPool2d(3, 4, 3, padding=1), fnn.MaxPool2d(3, 2, padding=1),
                          fnn.Conv2d(4, 4, 1), fnn.ReLU())
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    eager = model(x)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    torch.testing.assert_close(y, eager)
    y.sum().backward()
    compiled_grad, x.grad = x.grad, None
    eager.sum().backward()
    torch.testing.assert_close(compiled_grad, x.grad)


def test_public_exports():
    assert fastconv.nn is fnn
    assert set(fnn.__all__) == {"Conv2d", "Conv2dReLU", "Conv2dReLUMaxPool2d", "ReLU", "MaxPool2d"}


@pytest.mark.gpu
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_layers_on_cuda_match_torch(layout):
    torch.manual_seed(0)
    fast = fnn.Conv2dReLUMaxPool2d(16, 32, 3, padding=1).cuda()
    ref = nn.Conv2d(16, 32, 3, padding=1).cuda()
    ref.load_state_dict(fast.state_dict())
    pool = fnn.MaxPool2d(3, 2, padding=1)
    x = torch.randn(4, 16, 20, 20, device="cuda").contiguous(memory_format=layout)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        with fastconv.use_backend("auto", strict=True):  # a fastconv kernel, never a silent reference
            ya = pool(fast(a))
        assert fastconv.backends.last_selected["conv2d_fwd"] in ("triton", "cuda", "vendor")
        yb = F.max_pool2d(F.max_pool2d(F.relu(ref(b)), 2), 3, 2, 1)
        torch.testing.assert_close(ya, yb, rtol=1e-4, atol=1e-4)
        assert ya.is_contiguous(memory_format=layout)
        dy = torch.randn_like(yb)
        with fastconv.use_backend("auto", strict=True):
            ya.backward(dy)
        assert fastconv.backends.last_selected["conv2d_bwd"] in ("triton", "cuda", "vendor")
        yb.backward(dy)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(fast.bias.grad, ref.bias.grad, rtol=1e-3, atol=1e-3)
