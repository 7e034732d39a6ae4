"""Bad input gets a TypeError/ValueError that names the argument and what was expected."""
import pytest
import torch

import fastconv

X = torch.randn(2, 4, 8, 8)
W = torch.randn(6, 4, 3, 3)
B = torch.randn(6)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(x=torch.randint(0, 3, (2, 4, 8, 8))), TypeError, r"x must be a floating-point tensor.*torch.int64"),
    (dict(x=[[1.0]]), TypeError, r"x must be a torch.Tensor, got list"),
    (dict(x=torch.randn(8, 8)), ValueError, r"x must be 3-D or 4-D, got a 2-D tensor"),
    (dict(w=torch.randn(6, 4, 3)), ValueError, r"w must be 4-D, got a 3-D tensor"),
    (dict(w=W.double()), TypeError, r"w has dtype torch.float64 but x has torch.float32"),
    (dict(b=B.half()), TypeError, r"b has dtype torch.float16 but x has torch.float32"),
    (dict(w=torch.randn(6, 3, 3, 3)), ValueError, r"w must have shape \[K, C/groups, R, S\] = \[6, 4, R, S\]"),
    (dict(b=torch.randn(5)), ValueError, r"b must have shape \[6\]"),
    (dict(b=torch.randn(6, 1)), ValueError, r"b must be 1-D"),
    (dict(groups=3), ValueError, r"groups=3 must divide both the input channels C=4 and the output channels K=6"),
    (dict(groups=0), ValueError, r"groups must be a positive int"),
    (dict(stride=0), ValueError, r"stride must be positive, got \(0, 0\)"),
    (dict(stride=(1, 2, 3)), TypeError, r"stride must be an int or a pair of ints"),
    (dict(dilation=(1, 0)), ValueError, r"dilation must be positive"),
    (dict(padding=-1), ValueError, r"padding must be >= 0, got \(-1, -1\)"),
    (dict(padding="full"), ValueError, r"padding must be an int, a pair of ints, 'same' or 'valid'"),
    (dict(padding="same", stride=2), ValueError, r"padding='same' needs stride 1"),
    (dict(w=torch.randn(6, 4, 11, 11)), ValueError, r"w's kernel 11x11 .* is larger than x's padded input 8x8"),
    (dict(pool=9, padding=1), ValueError, r"pool=9 is larger than the conv output 8x8"),
    (dict(pool=17), ValueError, r"pool must be in 1..16"),
    (dict(pool=2.0), TypeError, r"pool must be None or an int"),
    (dict(activation="gelu"), ValueError, r"activation must be None or 'relu', got 'gelu'"),
])
def test_conv2d_bad_input(kwargs, exc, match):
    args = dict(x=X, w=W, b=B)
    args.update({k: kwargs.pop(k) for k in ("x", "w", "b") if k in kwargs})
    with pytest.raises(exc, match=match):
        fastconv.conv2d(args["x"], args["w"], args["b"], **kwargs)


def test_conv2d_device_mismatch_names_argument():
    meta_w = torch.randn(6, 4, 3, 3, device="meta")
    with pytest.raises(ValueError, match=r"w is on meta but x is on cpu; expected the same device"):
        fastconv.conv2d(X, meta_w)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(kernel_size=0), ValueError, r"kernel_size must be positive"),
    (dict(kernel_size=2, stride=0), ValueError, r"stride must be positive"),
    (dict(kernel_size=2, padding=2), ValueError, r"padding must be at most half of kernel_size"),
    (dict(kernel_size=2, dilation=0), ValueError, r"dilation must be positive"),
    (dict(kernel_size=9), ValueError, r"kernel_size \(9, 9\) .* is larger than x's padded input 8x8"),
    (dict(kernel_size=2, ceil_mode="yes"), TypeError, r"ceil_mode must be a bool"),
    (dict(kernel_size="2"), TypeError, r"kernel_size must be an int or a pair of ints"),
])
def test_max_pool2d_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fastconv.max_pool2d(X, **kwargs)


def test_max_pool2d_integer_input():
    with pytest.raises(TypeError, match=r"x must be a floating-point tensor"):
        fastconv.max_pool2d(torch.zeros(1, 1, 4, 4, dtype=torch.int32), 2)


def test_relu_bad_input():
    with pytest.raises(TypeError, match=r"x must be a floating-point tensor"):
        fastconv.relu(torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor"):
        fastconv.relu(3.0)


@pytest.mark.parametrize("stride", [True, 1.0, (1, True), (1.0, 1)], ids=str)
def test_remembered_parameters_do_not_hide_a_wrong_type(stride):
    """The parsed scalar arguments are remembered per value (fastconv/_args.py); a value equal to
    a remembered one but of another type (True == 1, 1.0 == 1) is still checked and rejected."""
    x, w = torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3)
    fastconv.conv2d(x, w, stride=1, padding=1)  # stride 1 remembered
    fastconv.conv2d(x, w, stride=(1, 1), padding=1)
    with pytest.raises(TypeError, match="stride must be an int or a pair of ints"):
        fastconv.conv2d(x, w, stride=stride, padding=1)
    fastconv.max_pool2d(x, 2, ceil_mode=True)
    with pytest.raises(TypeError, match="ceil_mode must be a bool"):
        fastconv.max_pool2d(x, 2, ceil_mode=1)
    assert fastconv.conv2d(x, w, stride=[2, 2], padding=1).shape == (1, 4, 4, 4)  # a list: parsed each call
