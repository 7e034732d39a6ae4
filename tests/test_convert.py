"""fastconv.convert on models written with torch.nn: what it fuses and (swap_unfused=True) swaps, that outputs
and every gradient equal the original's (float64), that parameters are shared and
state_dict keys unchanged, that the given model is untouched, and the fallbacks."""
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import fastconv
from fastconv import nn as fnn
from fastconv.convert import Replacement
from fastconv.train.models import ReferenceCNN


def _check_same_function(original, converted, x):
    """Outputs and the gradients of the input and of every parameter agree."""
    def run(model):
        xx = x.detach().clone().requires_grad_()
        for p in model.parameters():
            p.grad = None
        y = model(xx)
        dy = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(7))
        y.backward(dy)
        return y.detach(), xx.grad, {n: p.grad.clone() for n, p in model.named_parameters()
                                     if p.grad is not None}

    want, got = run(original), run(converted)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    assert got[2].keys() == want[2].keys(), "the same parameters must get gradients"
    for name in want[2]:
        torch.testing.assert_close(got[2][name], want[2][name], msg=name)


def _check_state_dict(original, converted):
    a, b = original.state_dict(), converted.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].data_ptr() == b[k].data_ptr(), f"{k} is copied, not shared"
    for (n1, p1), (n2, p2) in zip(original.named_parameters(), converted.named_parameters()):
        assert n1 == n2 and p1 is p2


def _types(model):
    return {name: type(m) for name, m in model.named_modules()}


def _input(*shape):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def test_sequential():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding="same"), nn.ReLU(), nn.MaxPool2d(3, stride=2),
        nn.Conv2d(8, 8, 1), nn.MaxPool2d(kernel_size=(2, 2), stride=2),
        nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4, 5), nn.ReLU(),
    ).double()
    before = _types(model)
    conv = fastconv.convert(model, swap_unfused=True)
    assert _types(model) == before, "the given model must stay untouched"
    assert isinstance(conv, fx.GraphModule)
    t = dict(conv.named_modules())
    assert type(t["0"]) is fnn.Conv2d and (t["0"].activation, t["0"].pool) == ("relu", 2)
    assert type(t["1"]) is nn.Identity and type(t["2"]) is nn.Identity
    assert (t["3"].activation, t["3"].pool, t["3"].padding) == ("relu", None, "same")
    assert type(t["5"]) is fnn.MaxPool2d and (t["5"].kernel_size, t["5"].stride) == (3, 2)
    assert (t["6"].activation, t["6"].pool) == (None, 2)
    assert type(t["8"]) is fnn.Conv2d and (t["8"].activation, t["8"].pool) == (None, None)
    assert type(t["11"]) is fnn.ReLU
    assert type(t["10"]) is nn.Linear
    _check_same_function(model, conv, _input(2, 3, 16, 16))
    _check_state_dict(model, conv)
    reps = {r.name: r for r in conv.fastconv_replacements}
    assert reps["0"].absorbed == ("1", "2") and reps["6"].absorbed == ("7",)
    assert {"0", "3", "5", "6", "8", "11"} == set(reps)
    assert all(isinstance(r, Replacement) for r in reps.values())
    assert "fastconv.nn.Conv2d" in str(reps["0"])


class Block(nn.Module):
    """conv -> F.relu -> F.max_pool2d in a custom forward."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)

    def forward(self, x):
        return F.max_pool2d(F.relu(self.conv(x)), 2)


class PoolFirst(nn.Module):
    """The classic MNIST example order: relu(max_pool2d(conv(x), 2))."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return torch.relu(F.max_pool2d(self.conv(x), kernel_size=2, stride=2))


class Residual(nn.Module):
    """The conv output has two users: nothing may be fused into the conv."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        y = self.conv(x)
        return self.act(y) + y


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = Block(3, 8)
        self.body = nn.ModuleDict({"a": PoolFirst(8), "b": Residual(8)})
        self.head = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 1, 1))
        self.tail = nn.Conv2d(8, 8, 1)
        self.relu = nn.ReLU()  # called twice: fused at one site only
        self.unused = nn.Linear(2, 2)
        self.register_buffer("scale", torch.tensor(2.0, dtype=torch.float64))

    def forward(self, x):
        x = self.stem(x)
        x = self.head(self.body["b"](self.body["a"](x)))
        x = self.relu(self.tail(x))
        y = (x - 1.0).relu_()
        return self.relu(y * self.scale)


def test_nested_custom_modules_and_functional_relu():
    torch.manual_seed(0)
    model = Net().double()
    conv = fastconv.convert(model, swap_unfused=True)
    t = dict(conv.named_modules())
    assert (t["stem.conv"].activation, t["stem.conv"].pool) == ("relu", 2)
    assert (t["body.a.conv"].activation, t["body.a.conv"].pool) == ("relu", 2)
    assert (t["body.b.conv"].activation, t["body.b.conv"].pool) == (None, None)
    assert type(t["body.b.act"]) is fnn.ReLU
    assert (t["tail"].activation, t["tail"].pool) == ("relu", None)
    assert type(t["relu"]) is fnn.ReLU, "a ReLU module still called elsewhere stays (swapped)"
    _check_same_function(model, conv, _input(2, 3, 12, 12))
    _check_state_dict(model, conv)
    assert "unused.weight" in conv.state_dict() and "scale" in conv.state_dict()
    reps = {r.name: r for r in conv.fastconv_replacements}
    assert reps["stem.conv"].absorbed == ("F.relu", "F.max_pool2d")
    assert reps["body.a.conv"].absorbed == ("F.max_pool2d", "torch.relu")
    # a Sequential keeps computing its own function when called on its own
    assert [type(m) for m in conv.head] == [fnn.Conv2d, nn.Identity, fnn.MaxPool2d]
    x = _input(2, 8, 8, 8)
    torch.testing.assert_close(conv.head(x), model.head(x))


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace this
            x = -x
        return self.pool(self.relu(self.conv(x)))


class FrozenStem(Untraceable):
    def forward(self, x):
        with torch.no_grad():  # traceable, but an fx graph would drop the no_grad
            f = self.conv(x)
        return self.pool(self.relu(f + x.sum(1, keepdim=True)))


@pytest.mark.parametrize("cls", [Untraceable, FrozenStem])
def test_untraceable_model_swaps_leaves_and_says_so(caplog, cls):
    torch.manual_seed(0)
    model = cls().double()
    with caplog.at_level(logging.WARNING, logger="fastconv.convert"):
        conv = fastconv.convert(model, swap_unfused=True)
    assert f"cannot trace {cls.__name__}" in caplog.text
    assert type(conv) is cls and conv is not model
    assert type(conv.conv) is fnn.Conv2d and conv.conv.activation is None
    assert type(conv.relu) is fnn.ReLU and type(conv.pool) is fnn.MaxPool2d
    assert type(model.conv) is nn.Conv2d
    for x in (_input(2, 3, 8, 8), -_input(2, 3, 8, 8)):
        _check_same_function(model, conv, x)
    if cls is FrozenStem:
        assert conv.conv.weight.grad is None
    _check_state_dict(model, conv)
    assert [r.name for r in conv.fastconv_replacements] == ["conv", "relu", "pool"]


class MyConv(nn.Conv2d):
    """A subclass with its own __init__ only: still a conv."""

    def __init__(self, c_in, c_out):
        super().__init__(c_in, c_out, kernel_size=3, padding=1, bias=False)
        self.note = "custom"


class StandardizedConv(nn.Conv2d):
    """Overrides forward: must be left alone."""

    def forward(self, x):
        w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


def test_conv_subclasses():
    torch.manual_seed(0)
    model = nn.Sequential(MyConv(3, 4), nn.ReLU(), nn.MaxPool2d(2), StandardizedConv(4, 4, 3, padding=1),
                          nn.ReLU()).double()
    conv = fastconv.convert(model, swap_unfused=True)
    t = dict(conv.named_modules())
    assert type(t["0"]) is fnn.Conv2d and (t["0"].activation, t["0"].pool) == ("relu", 2)
    assert t["0"].bias is None
    assert type(t["3"]) is StandardizedConv and type(t["4"]) is fnn.ReLU
    _check_same_function(model, conv, _input(2, 3, 8, 8))
    _check_state_dict(model, conv)


def test_conv_called_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.same = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            a = F.relu(self.conv(x))  # different epilogues: not fused
            b = F.max_pool2d(self.conv(a), 2)
            return F.relu(self.same(F.relu(self.same(b))))  # same epilogue at both sites: fused

    torch.manual_seed(0)
    model = Twice().double()
    conv = fastconv.convert(model, swap_unfused=True)
    assert (conv.conv.activation, conv.conv.pool) == (None, None)
    assert conv.same.activation == "relu"
    _check_same_function(model, conv, _input(1, 4, 8, 8))


def test_inplace_converts_the_given_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2)).double()
    reference = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2)).double()
    reference.load_state_dict(model.state_dict())
    conv = fastconv.convert(model, inplace=True)
    assert type(model[0]) is fnn.Conv2d and model[0] is conv.get_submodule("0")
    _check_same_function(reference, conv, _input(2, 3, 9, 9))
    # fully module-based chains leave the given model computing the same function too
    torch.testing.assert_close(model(_input(2, 3, 9, 9)), reference(_input(2, 3, 9, 9)))


def test_fuse_false_swaps_one_for_one():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2)).double()
    conv = fastconv.convert(model, fuse=False, swap_unfused=True)
    assert type(conv) is nn.Sequential
    assert [type(m) for m in conv] == [fnn.Conv2d, fnn.ReLU, fnn.MaxPool2d]
    assert conv[0].activation is None
    _check_same_function(model, conv, _input(2, 3, 9, 9))
    _check_state_dict(model, conv)


def test_a_leaf_model():
    conv = fastconv.convert(nn.Conv2d(3, 4, 3), swap_unfused=True)
    assert type(conv) is fnn.Conv2d
    assert [r.name for r in conv.fastconv_replacements] == [""]


def test_torch_checkpoints_load_both_ways():
    torch.manual_seed(0)
    model = ReferenceCNN(1, 10, 8, layers="torch").double()
    conv = fastconv.convert(model)
    assert (conv.conv1.activation, conv.conv1.pool) == ("relu", 2)
    torch.manual_seed(1)
    other = ReferenceCNN(1, 10, 8, layers="torch").double()
    conv.load_state_dict(other.state_dict())  # torch checkpoint into the converted model
    x = _input(3, 1, 8, 8)
    torch.testing.assert_close(conv(x), other(x))
    third = ReferenceCNN(1, 10, 8, layers="torch").double()
    third.load_state_dict(conv.state_dict())  # and back
    torch.testing.assert_close(third(x), other(x))
    fused = ReferenceCNN(1, 10, 8, layers="fastconv").double()
    fused.load_state_dict(conv.state_dict())
    torch.testing.assert_close(fused(x), conv(x))


def test_modules_with_hooks_are_left_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    conv = fastconv.convert(model)
    assert type(conv.get_submodule("0")) is nn.Conv2d
    conv(torch.randn(1, 3, 5, 5))
    assert seen == [(1, 4, 3, 3)]


def test_rejects_a_non_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        fastconv.convert(lambda x: x)


@pytest.mark.gpu
def test_convert_on_cuda():
    torch.manual_seed(0)
    model = ReferenceCNN(3, 10, 32, layers="torch").cuda()
    conv = fastconv.convert(model)
    assert conv.conv1.weight.is_cuda and conv.conv1.weight is model.conv1.weight
    x = torch.randn(8, 3, 32, 32, device="cuda")
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        with fastconv.use_backend("auto", strict=True):  # a fastconv kernel, never a silent reference
            y = conv(x)
        assert fastconv.backends.last_selected["conv2d_fwd"] in ("triton", "cuda", "vendor")
        torch.testing.assert_close(y, model(x), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- never slower, BatchNorm, leaves


def test_by_default_what_fuses_with_nothing_stays_torch():
    """A conv or ReLU that fuses with nothing is no faster alone: it stays a torch module (an
    in-place ReLU keeps its in-place form), and fastconv_left says why. A max-pool becomes
    fastconv's, which auto times against torch's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True)).double()
    conv = fastconv.convert(model)
    assert type(conv.get_submodule("0")) is fnn.Conv2d and conv.get_submodule("0").activation == "relu"
    for name, cls in (("2", fnn.MaxPool2d), ("3", nn.Conv2d), ("4", nn.BatchNorm2d), ("5", nn.ReLU)):
        assert type(conv.get_submodule(name)) is cls, name
    assert conv.get_submodule("5").inplace
    assert [r.name for r in conv.fastconv_replacements] == ["0", "2"]
    left = dict(conv.fastconv_left)
    assert "2" not in left and "fuses with nothing" in left["3"] and "swap_unfused=True" in left["3"]
    assert "train mode" in left[""] and "BatchNorm2d" in left[""]
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(conv(x), model(x))


def _bn_model():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), bn, nn.ReLU(inplace=True), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).double()


def test_batchnorm_folds_into_the_conv_in_eval_mode():
    model = _bn_model().eval()
    w_before = model[0].weight.detach().clone()
    conv = fastconv.convert(model)
    fused = conv.get_submodule("0")
    assert type(fused) is fnn.Conv2d and (fused.activation, fused.pool) == ("relu", 2) and fused.bias is not None
    assert all(type(conv.get_submodule(n)) is nn.Identity for n in ("1", "2", "3"))
    r = {x.name: x for x in conv.fastconv_replacements}["0"]
    assert r.absorbed[0] == "1" and len(r.absorbed) == 3
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(conv(x), model(x))
    # the given model is untouched: its conv, its BatchNorm, its weights
    assert type(model[1]) is nn.BatchNorm2d and torch.equal(model[0].weight, w_before)


def test_batchnorm_stays_in_train_mode_and_inplace():
    model = _bn_model()
    conv = fastconv.convert(model)  # train mode
    assert type(conv.get_submodule("1")) is nn.BatchNorm2d and type(conv.get_submodule("0")) is nn.Conv2d
    conv = fastconv.convert(model.eval(), inplace=True)  # would change the given model's weights
    assert type(model[1]) is nn.BatchNorm2d


class _BatchNorm(nn.BatchNorm2d):
    """airbench's: a subclass with its own __init__ and torch's forward."""

    def __init__(self, n):
        super().__init__(n, momentum=0.6, eps=1e-12)


def test_subclass_with_torch_forward_is_a_leaf(caplog):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.MaxPool2d(2), _BatchNorm(8), nn.GELU(),
                          nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.MaxPool2d(2), _BatchNorm(8)).double()
    for mode in ("train", "eval"):
        getattr(model, mode)()
        with caplog.at_level(logging.WARNING, logger="fastconv.convert"):
            conv = fastconv.convert(model)
        assert "cannot trace" not in caplog.text, mode
        assert type(conv.get_submodule("0")) is fnn.Conv2d and conv.get_submodule("0").pool == 2
        assert type(conv.get_submodule("4")) is fnn.Conv2d and conv.get_submodule("4").pool == 2
        x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
        torch.testing.assert_close(conv(x), model(x))


class _DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # fx cannot trace this
            return x * 2
        return x


def test_an_untraceable_submodule_becomes_a_leaf_and_the_rest_fuses():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), _DataDependent(),
                          nn.Conv2d(8, 4, 3, padding=1), nn.ReLU()).double()
    conv = fastconv.convert(model)
    assert type(conv.get_submodule("0")) is fnn.Conv2d and (conv.get_submodule("0").pool,
                                                           conv.get_submodule("0").activation) == (2, "relu")
    assert type(conv.get_submodule("4")) is fnn.Conv2d and conv.get_submodule("4").activation == "relu"
    assert "cannot trace" in dict(conv.fastconv_left)["3"]
    for sign in (1, -1):
        x = sign * torch.rand(2, 3, 8, 8, dtype=torch.float64)
        torch.testing.assert_close(conv(x), model(x))


def test_bad_flags_name_the_argument():
    with pytest.raises(TypeError, match="swap_unfused must be a bool"):
        fastconv.convert(nn.Conv2d(3, 4, 3), swap_unfused="yes")


def test_nothing_fuses_gives_the_models_own_class():
    """conv -> BatchNorm -> relu in train mode fuses nothing: the result is the model's own class
    and forward (not a traced graph), so it cannot be slower."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True)).double()
    conv = fastconv.convert(model)
    assert type(conv) is nn.Sequential and conv is not model
    assert [type(m) for m in conv] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] and conv[0].weight is model[0].weight
