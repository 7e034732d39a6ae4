"""The ``vendor`` backend (fastconv/backends/vendor.py: the vendor's convolution with fastconv's
Triton epilogue and prologue, fastconv/backends/triton/conv2d_vendor.py) against the float64
oracle in strict mode: values, every gradient, window ties, NaN, layouts, asymmetric padding.
Without a GPU the Triton kernels run in the interpreter on CPU tensors and ATen's CPU conv stands
in for cuDNN; on a GPU (``gpu`` marks) the same cases run on cuDNN."""
import pytest
import torch

from triton_cases import DEV, EXTRA_CASES, GPU_REALISTIC, TRITON_TESTS

import fastconv  # noqa: E402
from oracle import CONV_CASES, check_conv, check_conv_like_torch  # noqa: E402

pytestmark = TRITON_TESTS


@pytest.mark.parametrize("case", CONV_CASES + EXTRA_CASES[:4], ids=str)
def test_conv_matches_oracle(case):
    check_conv("vendor", case, torch.float32, DEV)


@pytest.mark.parametrize("case", CONV_CASES[:6] + EXTRA_CASES[:2], ids=str)
def test_conv_bfloat16(case):
    """bf16 on small-integer data: the vendor's conv rounds its output to bf16 before the pool (as
    eager cuDNN does), so on random data a window's max may legitimately differ from the float64
    oracle's; integers are exact, and their ties are resolved the same way."""
    check_conv("vendor", case, torch.bfloat16, DEV, integer=True)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[5], CONV_CASES[10]], ids=str)
def test_conv_layouts(case, layout):
    check_conv("vendor", case, torch.float32, DEV, layout=layout)


@pytest.mark.parametrize("case", [c for c in CONV_CASES if c.kw.get("pool")][:5], ids=str)
def test_window_ties_go_to_the_first_maximum(case):
    check_conv("vendor", case, torch.float32, DEV, integer=True)


def test_nan_and_inf_propagate_like_torch():
    """NaN and inf in x: values and every gradient equal torch's unfused ops (float32, the widest
    dtype the Triton kernels take; NaN where torch has NaN, the same infinities)."""
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    x[0, 0, 1, 1] = float("nan")
    x[0, 1, 5, 6] = float("inf")
    w = torch.rand(4, 3, 3, 3, dtype=torch.float64) + 0.1  # positive: +inf stays +inf
    b = torch.randn(4, dtype=torch.float64)
    for kw in (dict(padding=1, activation="relu", pool=2), dict(padding=1, pool=2), dict(padding=1)):
        check_conv_like_torch("vendor", x.float(), w.float(), b.float(), DEV, **kw)


def test_gradient_subsets():
    """Only the asked-for gradients: dx alone, dw alone, db alone."""
    case = CONV_CASES[0]
    for need in ((True, False, False), (False, True, False), (False, False, True)):
        x = torch.randn(case.N, case.C, case.H, case.W, device=DEV, requires_grad=need[0])
        w = torch.randn(case.K, case.C, case.R, case.S, device=DEV, requires_grad=need[1])
        b = torch.randn(case.K, device=DEV, requires_grad=need[2])
        with fastconv.use_backend("vendor", strict=True):
            fastconv.conv2d(x, w, b, **case.kw).sum().backward()
        assert [t.grad is not None for t in (x, w, b)] == list(need)


def test_it_is_one_of_autos_cuda_candidates(monkeypatch):
    """On a card the measured table does not know, auto's static rule lists vendor (and times it)."""
    from types import SimpleNamespace

    from fastconv import _args
    from fastconv.backends import autoselect

    w = torch.empty(8, 8, 3, 3)
    p = _args.conv(torch.empty(1, 8, 8, 8), w, None, 1, 1, 1, 1, "relu", 2)
    x = SimpleNamespace(shape=(1, 8, 8, 8), dtype=torch.float32, device=torch.device("cuda"))  # all it reads
    monkeypatch.setattr(autoselect, "_device_name", lambda t: "a card the table does not know")
    assert autoselect.candidates("conv2d_fwd", (x, w, None, p)) == ["triton", "cuda", "vendor"]
    assert autoselect.measured("conv2d_fwd", (x, w, None, p))


def test_a_table_entry_from_before_a_backend_existed_is_timed_again(monkeypatch, tmp_path):
    """A table entry is trusted only if its version had every CUDA backend auto may give the
    conv: a bare name (written before vendor existed) is measured on first use and leaves the
    static order, a current entry is not measured and goes first."""
    import json
    from types import SimpleNamespace

    from fastconv import _args
    from fastconv.backends import autoselect

    w = torch.empty(8, 8, 3, 3)
    p = _args.conv(torch.empty(1, 8, 8, 8), w, None, 1, 1, 1, 1, "relu", 2)
    x = SimpleNamespace(shape=(1, 8, 8, 8), dtype=torch.float32, device=torch.device("cuda"))
    key = autoselect.conv_key(x, tuple(w.shape), p)
    monkeypatch.setattr(autoselect, "_device_name", lambda t: "Test GPU")
    monkeypatch.setenv("FASTCONV_AUTOTABLE", str(tmp_path / "t.json"))
    for entry, timed in (("cuda", True), (autoselect.entry("cuda"), False),
                         ({"backend": "cuda", "backends": ["triton", "cuda"]}, True)):
        (tmp_path / "t.json").write_text(json.dumps({"Test GPU": {key: entry}}))
        autoselect._table.cache_clear()
        try:
            assert autoselect.measured("conv2d_fwd", (x, w, None, p)) is timed
            assert autoselect.candidates("conv2d_fwd", (x, w, None, p))[0] == ("triton" if timed else "cuda")
        finally:
            autoselect._table.cache_clear()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,case", [(torch.bfloat16, c) for c in GPU_REALISTIC[:6]], ids=str)
def test_gpu_realistic_layers_on_cudnn(case, dtype):
    check_conv("vendor", case, dtype, "cuda", layout="channels_last", integer=True)
