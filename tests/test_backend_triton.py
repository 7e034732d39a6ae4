"""The ``triton`` backend against the float64 oracle (tests/oracle.py), in strict mode.

Without a GPU the kernels run in the Triton interpreter (conftest.py sets
TRITON_INTERPRET=1): tiny shapes, one large tile per launch, fp32 with
``input_precision="ieee"`` and fp16. bf16 also runs here because the backend
feeds the interpreter's tl.dot fp32 tiles for bf16 (its bf16 dot is wrong);
the real bf16 tensor-core path runs in the tests marked ``gpu``, which cover
every CONV_CASES / POOL_CASES entry in every dtype and a few realistic layers
(bench/gpu_check.sh).
"""
import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton", reason="the triton backend needs the triton package")

import fastconv  # noqa: E402
from fastconv import _impl, backends, ops  # noqa: E402
from fastconv.backends import reference  # noqa: E402
from fastconv.backends.triton import _pack, _tune, configs  # noqa: E402
from fastconv.backends.triton._common import vec_args, vec_elems  # noqa: E402
from oracle import (CONV_CASES, POOL_CASES, ConvCase, PoolCase, assert_close, check_conv, check_pool,  # noqa: E402
                    check_relu)

triton_backend = backends.get("triton")
CPU_REASON = triton_backend.available()
pytestmark = pytest.mark.skipif(CPU_REASON is not None, reason=f"triton backend unavailable: {CPU_REASON}")

DEV = "cuda" if torch.cuda.is_available() else "cpu"
FAST_DTYPES = [torch.float32, torch.float16]
ALL_DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# Paths and edges beyond CONV_CASES: channel-blocked reduction with a partial block, several
# column/row tiles, stride phases without any tap, pool windows of 4x4 (KK = 16, no padding rows)
# and 3x3 (KK = 16, 7 masked rows), depthwise with a channel multiplier, grayscale input.
EXTRA_CASES = [
    ConvCase(1, 24, 7, 6, 20, 3, 3, dict(stride=2, dilation=2, padding=2, activation="relu", pool=2)),
    ConvCase(2, 32, 5, 5, 16, 3, 3, dict(padding=1, groups=2, activation="relu")),
    ConvCase(1, 3, 12, 12, 72, 3, 3, dict(padding=1, activation="relu", pool=2)),
    ConvCase(1, 1, 9, 10, 16, 3, 3, dict(padding=1, activation="relu", pool=2)),
    ConvCase(2, 6, 7, 8, 5, 1, 1, dict(stride=2)),
    ConvCase(1, 4, 9, 9, 6, 3, 3, dict(stride=3, padding=1, pool=2), bias=False),
    ConvCase(1, 3, 13, 11, 4, 2, 2, dict(stride=(2, 1), dilation=(1, 2), activation="relu", pool=4)),
    ConvCase(1, 4, 10, 11, 8, 3, 3, dict(stride=2, padding=1, groups=4, activation="relu", pool=3)),
    ConvCase(2, 3, 6, 7, 3, 5, 5, dict(padding=2, groups=3, dilation=1, activation="relu")),
    ConvCase(2, 3, 14, 14, 8, 3, 3, dict(padding=1, activation="relu", pool=2)),
]
LAYOUT_CASES = [CONV_CASES[0], CONV_CASES[5], CONV_CASES[7], CONV_CASES[8], CONV_CASES[9], EXTRA_CASES[0]]
TIE_CASES = [CONV_CASES[0], CONV_CASES[3], CONV_CASES[6], CONV_CASES[8], EXTRA_CASES[6]]


@pytest.fixture(autouse=True)
def _default_configs(monkeypatch):
    """No autotuning in the tests (on a GPU every new shape would benchmark and compile each
    candidate): the heuristic default config runs, except where a test pins or tunes. fp32 on a
    GPU runs in ieee unless a test turns TF32 on (see the GPU section)."""
    monkeypatch.setenv(_tune.ENV_TUNE, "0")
    monkeypatch.delenv(_tune.ENV_PIN, raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


# --------------------------------------------------------------------------- fused conv


@pytest.mark.parametrize("dtype", FAST_DTYPES, ids=str)
@pytest.mark.parametrize("case", CONV_CASES + EXTRA_CASES, ids=str)
def test_conv_matches_oracle(case, dtype):
    check_conv("triton", case, dtype, DEV)


@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[8], EXTRA_CASES[1], EXTRA_CASES[3]], ids=str)
def test_conv_bfloat16(case):
    check_conv("triton", case, torch.bfloat16, DEV)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("case", LAYOUT_CASES, ids=str)
def test_conv_layouts(case, layout):
    check_conv("triton", case, torch.float32, DEV, layout=layout)


@pytest.mark.parametrize("dtype", FAST_DTYPES, ids=str)
@pytest.mark.parametrize("case", TIE_CASES, ids=str)
def test_conv_pool_ties_go_to_the_first_maximum(case, dtype):
    """Small-integer data: exact conv outputs with many equal maxima in a window."""
    check_conv("triton", case, dtype, DEV, integer=True, seed=3)


def test_conv_window_index_matches_reference():
    """idx is the uint8 row-major window position of the first maximum of the conv output."""
    x = torch.randint(-2, 3, (2, 3, 11, 9)).float().to(DEV)
    w = torch.randint(-1, 2, (5, 3, 3, 3)).float().to(DEV)
    for k in (2, 3):
        args = (x, w, None, [1, 1], [1, 1, 1, 1], [1, 1], 1, False, k)
        with fastconv.use_backend("triton", strict=True):
            y, idx = ops.conv2d_fwd(*args)
        y_ref, idx_ref = reference.conv2d_fwd(x.cpu().double(), w.cpu().double(), None,
                                              _impl.conv_params(*args[3:]))
        assert idx.dtype == torch.uint8 and torch.equal(idx.cpu(), idx_ref)
        assert torch.equal(y.cpu().double(), y_ref)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy matmul
def test_conv_nan_and_inf_propagate_like_reference():
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    x[0, 0, 1, 1] = float("nan")
    x[0, 1, 5, 6] = float("inf")
    w = torch.rand(4, 3, 3, 3, dtype=torch.float64) + 0.1  # positive: +inf stays +inf
    b = torch.randn(4, dtype=torch.float64)
    dy = torch.randn(1, 4, 4, 4, dtype=torch.float64)
    for relu in (None, "relu"):
        out = {}
        for name in ("triton", "reference"):
            xx, ww, bb = (t.float().to(DEV).requires_grad_() for t in (x, w, b))
            with fastconv.use_backend(name, strict=True):
                y = fastconv.conv2d(xx, ww, bb, padding=1, activation=relu, pool=2)
                y.backward(dy.float().to(DEV))
            out[name] = (y, xx.grad, ww.grad, bb.grad)
        for what, a, e in zip(("y", "dx", "dw", "db"), out["triton"], out["reference"]):
            assert_close(f"{what} relu={relu}", a, e, torch.float32, 128, DEV)


def test_conv_empty_batch_strict():
    x = torch.randn(0, 3, 8, 8, device=DEV, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=DEV, requires_grad=True)
    b = torch.randn(4, device=DEV, requires_grad=True)
    with fastconv.use_backend("triton", strict=True):
        y = fastconv.conv2d(x, w, b, padding=1, activation="relu", pool=2)
        y.sum().backward()
    assert y.shape == (0, 4, 4, 4)
    assert x.grad.shape == x.shape and not w.grad.any() and not b.grad.any()


def test_conv_gradient_subsets():
    """Only the requested gradients are computed; the others stay None."""
    case = CONV_CASES[0]
    x = torch.randn(2, 3, 8, 8, device=DEV)
    w = torch.randn(4, 3, 3, 3, device=DEV, requires_grad=True)
    b = torch.randn(4, device=DEV)
    with fastconv.use_backend("triton", strict=True):
        fastconv.conv2d(x, w, b, **case.kw).sum().backward()
    w2 = w.detach().double().cpu().requires_grad_()
    with fastconv.use_backend("reference"):
        fastconv.conv2d(x.double().cpu(), w2, b.double().cpu(), **case.kw).sum().backward()
    assert_close("dw", w.grad, w2.grad, torch.float32, 128, DEV)


# --------------------------------------------------------------------------- max_pool2d, relu


@pytest.mark.parametrize("dtype", FAST_DTYPES, ids=str)
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_pool_matches_oracle(case, dtype):
    check_pool("triton", case, dtype, DEV)
    check_pool("triton", case, dtype, DEV, integer=True, seed=1)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("case", POOL_CASES[1:4], ids=str)
def test_pool_layouts(case, layout):
    check_pool("triton", case, torch.float32, DEV, layout=layout, integer=True)


def test_pool_bfloat16():
    check_pool("triton", POOL_CASES[2], torch.bfloat16, DEV, integer=True)


def test_pool_nan_inf_and_indices_match_torch():
    """NaN wins (the last NaN, like torch), an all -inf window keeps its first in-bounds index."""
    x = torch.randn(1, 2, 7, 7)
    x[0, 0, 1, 1] = x[0, 0, 2, 2] = float("nan")
    x[0, 1, :3, :3] = float("-inf")
    for kw in (dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2, stride=1, dilation=2)):
        with fastconv.use_backend("triton", strict=True):
            y, idx = ops.max_pool2d_fwd(x.to(DEV), *_pool_args(**kw))
        y_ref, idx_ref = F.max_pool2d(x, return_indices=True, **kw)
        assert torch.equal(idx.cpu().long(), idx_ref), kw
        assert torch.equal(y.cpu().isnan(), y_ref.isnan())
        assert torch.equal(y.cpu().nan_to_num(), y_ref.nan_to_num())


def _pool_args(kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    p = fastconv._args.max_pool(torch.empty(1, 1, 9, 9), kernel_size, stride, padding, dilation, ceil_mode)
    return p.kernel, p.stride, p.padding, p.dilation, p.ceil_mode


@settings(max_examples=12, deadline=None)
@given(H=st.integers(3, 10), W=st.integers(3, 10), k=st.integers(1, 4), s=st.integers(1, 3),
       d=st.integers(1, 2), ceil=st.booleans(), data=st.data())
def test_pool_fuzz(H, W, k, s, d, ceil, data):
    p = data.draw(st.integers(0, k // 2))
    if d * (k - 1) + 1 > min(H, W) + 2 * p:
        return
    check_pool("triton", PoolCase(1, 3, H, W, dict(kernel_size=k, stride=s, padding=p, dilation=d,
                                                   ceil_mode=ceil)), torch.float32, DEV, integer=True)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape,layout", [((7,), "contiguous"), ((3, 50), "strided"),
                                          ((2, 3, 5, 4), "channels_last"), ((2, 3, 5, 4), "contiguous")])
def test_relu_matches_oracle(shape, layout, dtype):
    check_relu("triton", shape, dtype, DEV, layout=layout)


def test_relu_nan_and_zero():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -1.0, 2.0], device=DEV, requires_grad=True)
    with fastconv.use_backend("triton", strict=True):
        y = fastconv.relu(x)
        y.sum().backward()
    assert y[0].isnan() and y[1:].tolist() == [float("inf"), 0.0, 0.0, 0.0, 2.0]
    assert x.grad.tolist()[1:] == [1.0, 0.0, 0.0, 0.0, 1.0]


# --------------------------------------------------------------------------- backend contract


def test_unsupported_reasons_are_clear(monkeypatch):
    x64 = torch.randn(1, 2, 4, 4, dtype=torch.float64, device=DEV)
    assert "float64 is not supported" in triton_backend.unsupported("relu_fwd", x64)
    with fastconv.use_backend("triton", strict=True):
        with pytest.raises(fastconv.BackendUnsupportedError, match="float64 is not supported"):
            fastconv.relu(x64)
    monkeypatch.setattr(triton_backend, "INTERPRET", False)
    reason = triton_backend.unsupported("relu_fwd", torch.randn(3))
    assert "TRITON_INTERPRET=1" in reason
    assert "64-bit offsets" in triton_backend._image_too_big((1, 2**16, 2**8, 2**8))


def test_pinned_config_parsing(monkeypatch):
    spec = "BLOCK_M=128,BLOCK_N=64,BLOCK_K=32,num_warps=4,num_stages=3"
    monkeypatch.setenv(_tune.ENV_PIN, spec)
    for kernel in ("conv_fwd", "conv_dgrad", "conv_wgrad"):
        assert _tune.pinned(kernel) == dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3)
    assert _tune.pinned("max_pool_fwd") is None  # it has no BLOCK_K
    monkeypatch.setenv(_tune.ENV_PIN, "max_pool_fwd: BLOCK_M=32; relu:num_warps=2")
    assert _tune.pinned("max_pool_fwd") == {"BLOCK_M": 32} and _tune.pinned("relu") == {"num_warps": 2}
    for bad, msg in [("BLOCK_M=96", "power of two"), ("BLOCK_Q=16", "not a tunable key"),
                     ("conv:BLOCK_M=16", "unknown kernel"), ("BLOCK_M", "KEY=positive int"),
                     ("conv_fwd:BLOCK_K=8", "must be >= 16")]:
        monkeypatch.setenv(_tune.ENV_PIN, bad)
        with pytest.raises(ValueError, match=msg):
            _tune.pinned("conv_fwd")


def test_pinned_small_tiles_still_match_oracle(monkeypatch):
    """Small pinned tiles: several row/column tiles and reduction steps per launch."""
    monkeypatch.setenv(_tune.ENV_PIN, "BLOCK_M=32,BLOCK_N=16,BLOCK_K=16,num_warps=4,num_stages=1;"
                                      "depthwise_fwd:BLOCK_M=16,BLOCK_N=4;max_pool_bwd:BLOCK_M=16,BLOCK_N=2")
    check_conv("triton", ConvCase(1, 20, 6, 7, 24, 3, 3, dict(padding=1, activation="relu", pool=3)),
               torch.float32, DEV)
    check_conv("triton", ConvCase(2, 32, 7, 6, 16, 3, 3, dict(padding=1, stride=2, pool=2)),  # wgrad ONE_TAP
               torch.float32, DEV)
    check_conv("triton", CONV_CASES[8], torch.float32, DEV)
    check_pool("triton", POOL_CASES[2], torch.float32, DEV)


@pytest.mark.parametrize("case, fused", [
    (CONV_CASES[0], True),                 # C*R*S = 27: one column tile, bias fused
    (EXTRA_CASES[2], True),                # two row tiles (K = 72)
    (ConvCase(2, 16, 8, 8, 8, 3, 3, dict(padding=1, activation="relu", pool=2)), False),  # 144 columns
], ids=str)
def test_wgrad_split_k_and_fused_bias_match_oracle(case, fused, monkeypatch):
    """wgrad split over three reduction chunks (fp32 atomics, then one cast: on the CPU only
    when forced), with the bias gradient fused into it or from its own reduction."""
    from fastconv.backends.triton import conv2d_wgrad as conv_wgrad

    monkeypatch.setattr(conv_wgrad, "split_count", lambda *a: 3)
    monkeypatch.setenv(_tune.ENV_PIN, "conv_wgrad:BLOCK_K=16")
    launches = []
    kernel = conv_wgrad._conv_wgrad_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kw):
                launches.append((grid[1], kw["ATOMIC"], kw["HAS_DB"]))
                return kernel[grid](*args, **kw)
            return launch

    monkeypatch.setattr(conv_wgrad, "_conv_wgrad_kernel", Spy())
    check_conv("triton", case, torch.float32, DEV)
    assert launches and all(split == 3 and atomic for split, atomic, _ in launches), launches
    assert all(has_db == fused for _, _, has_db in launches), launches


def test_tuning_cache_on_disk(monkeypatch, tmp_path):
    path = tmp_path / "tune.json"
    monkeypatch.setenv(_tune.ENV_CACHE, str(path))
    monkeypatch.delenv(_tune.ENV_PIN, raising=False)
    monkeypatch.setattr(_tune, "_disk", None)
    monkeypatch.setattr(_tune, "_memory", {})
    cands = [dict(BLOCK_M=64, num_warps=4), dict(BLOCK_M=128, num_warps=4)]
    dev = torch.device("cpu")
    assert _tune.choose("relu", ("k",), cands, lambda c: None, dev) == cands[0]  # nothing cached, no tuning
    _tune._save(_tune._full_key("relu", ("k",), dev), cands[1])
    monkeypatch.setattr(_tune, "_disk", None)
    assert json.loads(path.read_text())[_tune._full_key("relu", ("k",), dev)] == cands[1]
    assert _tune.choose("relu", ("k",), cands, lambda c: None, dev) == cands[1]  # read back from disk
    stale = [dict(BLOCK_M=256, num_warps=8), cands[0]]
    assert _tune.choose("relu", ("k",), stale, lambda c: None, dev) == stale[0]  # cached one is no candidate


def test_config_lists_keep_the_rules():
    """GPU candidate lists (built here without a GPU): dot tiles >= 16, powers of two, shared
    memory in budget, num_warps 8 only for 1x1 filters, BLOCK_M holds the pool window rows."""
    real = configs.INTERPRET
    cached = [configs.conv_fwd_configs, configs.conv_dgrad_configs, configs.conv_wgrad_configs]
    try:
        configs.INTERPRET = False
        for f in cached:
            f.cache_clear()
        for one_by_one in (False, True):
            lists = [configs.conv_fwd_configs(10**6, 64, 64, 16, 2, one_by_one),
                     configs.conv_fwd_configs(3000, 4, 27, 4, 4, one_by_one),
                     configs.conv_dgrad_configs(10**5, 128, 256, 2, one_by_one),
                     configs.conv_wgrad_configs(512, 4608, 10**6, 2, one_by_one)]
            for cfgs in lists:
                assert cfgs
                for c in cfgs:
                    assert min(c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"]) >= 16
                    assert all(c[k] & (c[k] - 1) == 0 for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
                    assert c["num_stages"] * (c["BLOCK_M"] + c["BLOCK_N"]) * c["BLOCK_K"] * 4 <= 2 * configs.SMEM_BUDGET
                    assert c["num_warps"] == 4 or one_by_one
        assert all(c["BLOCK_M"] >= 16 for c in configs.conv_fwd_configs(100, 8, 8, 16, 2, False))
        assert max(c["BLOCK_N"] for c in configs.conv_fwd_configs(10**6, 4, 27, 4, 2, False)) == 16
    finally:
        configs.INTERPRET = real
        for f in cached:
            f.cache_clear()


def test_weight_packing_is_cached_per_version():
    w = torch.randn(4, 3, 3, 3, device=DEV)
    p1 = _pack.packed_weight(w)
    assert p1.shape == (4, 3, 3, 3) and p1.is_contiguous()
    assert torch.equal(p1, w.permute(0, 2, 3, 1))
    assert _pack.packed_weight(w) is p1
    with torch.no_grad():
        w.add_(1.0)
    p2 = _pack.packed_weight(w)
    assert p2 is not p1 and torch.equal(p2, w.permute(0, 2, 3, 1))
    key = id(w)
    assert key in _pack._cache
    del w, p1, p2
    gc.collect()
    assert key not in _pack._cache  # the entry goes with its weight
    wcl = torch.randn(4, 3, 3, 3, device=DEV).contiguous(memory_format=torch.channels_last)
    assert _pack.packed_weight(wcl).data_ptr() == wcl.data_ptr()  # already [K, R, S, C]: a view


def test_weight_update_between_calls_is_seen():
    x = torch.randn(1, 3, 6, 6, device=DEV)
    w = torch.randn(4, 3, 3, 3, device=DEV)
    with fastconv.use_backend("triton", strict=True):
        fastconv.conv2d(x, w, padding=1)
        with torch.no_grad():
            w.mul_(-2.0)
        y = fastconv.conv2d(x, w, padding=1)
    assert_close("y", y, F.conv2d(x.cpu().double(), w.cpu().double(), padding=1), torch.float32, 27, DEV)


def test_opcheck_with_triton_kernels():
    """The op contract (fake kernels vs real outputs, autograd registration) holds for this backend."""
    x = torch.randn(2, 3, 9, 9, device=DEV).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(4, 3, 3, 3, device=DEV, requires_grad=True)
    b = torch.randn(4, device=DEV, requires_grad=True)
    with fastconv.use_backend("triton", strict=True):
        torch.library.opcheck(ops.conv2d_fwd, (x, w, b, [2, 1], [0, 1, 1, 0], [1, 1], 1, True, 3))
        torch.library.opcheck(ops.max_pool2d_fwd, (x, [3, 3], [2, 2], [1, 1], [1, 1], True))


def test_compile_fullgraph_runs_triton_kernels():
    torch._dynamo.reset()
    x = torch.randn(2, 3, 8, 8, device=DEV, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=DEV, requires_grad=True)

    def f(x, w):
        y = fastconv.conv2d(x, w, None, padding=1, activation="relu", pool=2)
        return fastconv.max_pool2d(fastconv.relu(y), 2)

    with fastconv.use_backend("triton", strict=True):
        out = torch.compile(f, fullgraph=True)(x, w)
        out.sum().backward()
    x2, w2 = (t.detach().cpu().double().requires_grad_() for t in (x, w))
    with fastconv.use_backend("reference"):
        ref = f(x2, w2)
        ref.sum().backward()
    assert_close("y", out, ref, torch.float32, 27, DEV)
    assert_close("dx", x.grad, x2.grad, torch.float32, 36, DEV)
    assert_close("dw", w.grad, w2.grad, torch.float32, 128, DEV)


def test_vec_elems_is_the_proven_channel_alignment():
    nhwc = torch.channels_last
    assert vec_elems(torch.empty(2, 24, 5, 7, dtype=torch.bfloat16, memory_format=nhwc), 24) == 8
    assert vec_elems(torch.empty(2, 24, 5, 7, memory_format=nhwc), 24) == 4  # 16 bytes of fp32
    assert vec_elems(torch.empty(2, 24, 5, 7, dtype=torch.float16, memory_format=nhwc), 12) == 4  # a group
    assert vec_elems(torch.empty(2, 24, 5, 7, dtype=torch.float16), 24) == 1  # NCHW: channels strided
    assert vec_elems(torch.empty(2, 3, 5, 7, dtype=torch.float16, memory_format=nhwc), 3) == 1
    sliced = torch.empty(2, 36, 5, 7, dtype=torch.float16, memory_format=nhwc)[:, :24]
    assert vec_elems(sliced, 24) == 4  # strides of 36 channels


def test_aligned_channel_vectors_match_oracle(monkeypatch):
    """VEC > 1 (channels_last, 24 channels) reaches all three GEMM kernels and stays exact."""
    import importlib

    conv_fwd, conv_dgrad, conv_wgrad = (importlib.import_module(f"fastconv.backends.triton.{m}")
                                         for m in ("conv2d_fwd", "conv2d_dgrad", "conv2d_wgrad"))

    seen = []

    def spy(t, c):
        out = vec_args(t, c)
        seen.append(out[0])
        return out

    for mod in (conv_fwd, conv_dgrad, conv_wgrad):
        monkeypatch.setattr(mod, "vec_args", spy)
    check_conv("triton", EXTRA_CASES[0], torch.float16, DEV, layout="channels_last")
    assert seen == [8, 8, 8]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU runs the kernels themselves (the gpu tests)")
def test_kernels_compile_for_hopper():
    """Every kernel variant the launchers pick for the bench layer kinds (bf16, default configs)
    compiles for sm_90 with this Triton and its ptxas: what the interpreter cannot check."""
    from fastconv.backends.triton import _compile_check

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-m", "fastconv.backends.triton._compile_check", "--dtype", "bf16"],
                         capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1],
                         timeout=900)
    if out.returncode == _compile_check.EXIT_UNSUPPORTED:
        pytest.skip(out.stderr.strip().splitlines()[-1])
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert " 0 failed (sm_90)" in out.stdout
    # Every operand tile loads 16-byte vectors through the cp.async pipeline: the three GEMM
    # kernels of 24 channels (8-element aligned, not 16: before the VEC hint the forward loaded
    # one element at a time) and the backward of a 64-channel 3x3 layer (before, wgrad's
    # `% Cg` hid the x tile's alignment: scalar, unpipelined loads at 255 registers).
    lines = out.stdout.splitlines()
    want = [ln for ln in lines if "_conv_" in ln and ("(C=24" in ln or (
        "(3x3 relu pool2" in ln and ("_conv_dgrad" in ln or "_conv_wgrad" in ln)))]
    assert len(want) == 5, out.stdout[-4000:]
    for ln in want:
        assert "vector loads 100%" in ln and "pipelined 1" in ln and "stack    0" in ln, ln


# --------------------------------------------------------------------------- GPU only
# Random data at realistic sizes would make the comparison flaky: among ~10^5 pooling windows
# some hold two values closer than the fp32 accumulation error (or a conv output that close to
# 0 under relu), and the oracle then routes the gradient elsewhere. Realistic layers therefore
# use small-integer data (exact in every dtype, TF32 included: ties are exact and resolved the
# same way); random data runs on the small cases, with fp32 in ieee (see _default_configs).

GPU_REALISTIC = [
    ConvCase(4, 64, 56, 56, 64, 3, 3, dict(padding=1, activation="relu", pool=2)),
    ConvCase(2, 3, 64, 64, 64, 3, 3, dict(padding=1, activation="relu", pool=2)),
    ConvCase(4, 1, 28, 28, 32, 3, 3, dict(padding=1, activation="relu", pool=2)),
    ConvCase(2, 3, 112, 112, 64, 7, 7, dict(stride=2, padding=3, activation="relu")),
    ConvCase(4, 256, 14, 14, 128, 1, 1, dict(activation="relu")),
    ConvCase(4, 128, 28, 28, 256, 3, 3, dict(stride=2, padding=1, activation="relu")),
    ConvCase(4, 128, 28, 28, 128, 3, 3, dict(padding=1, groups=8, activation="relu", pool=2)),
    ConvCase(4, 96, 28, 28, 96, 3, 3, dict(padding=1, groups=96, activation="relu")),
    ConvCase(4, 64, 29, 31, 128, 3, 3, dict(padding=2, dilation=2, pool=3), bias=False),
    ConvCase(16, 256, 8, 8, 256, 3, 3, dict(padding=1, pool=2), bias=False),
    ConvCase(8, 24, 32, 32, 64, 3, 3, dict(padding=1, pool=2), bias=False),  # C=24: 8-element vectors
]


# The GPU matrix is sized for the compile time of a cold Triton cache (~170 kernel variants):
# every CONV_CASES entry in every dtype (channels_last, the fast path), NCHW inputs on two,
# the realistic layers in bf16 and two of them through TF32.


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_gpu_conv_cases(case, dtype):
    check_conv("triton", case, dtype, "cuda", layout="channels_last")


@pytest.mark.gpu
@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[8]], ids=str)
def test_gpu_conv_nchw_input(case):
    check_conv("triton", case, torch.bfloat16, "cuda", layout="contiguous")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,case", [(torch.bfloat16, c) for c in GPU_REALISTIC]
                         + [(torch.float32, GPU_REALISTIC[0]), (torch.float32, GPU_REALISTIC[4])], ids=str)
def test_gpu_realistic_layers(case, dtype, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # fp32 runs the TF32 path
    check_conv("triton", case, dtype, "cuda", layout="channels_last", integer=True)


@pytest.mark.gpu
def test_gpu_tf32_random_data_without_argmax(monkeypatch):
    """TF32 on random data where no window max or relu sign depends on the last bits."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    check_conv("triton", ConvCase(4, 64, 28, 28, 96, 3, 3, dict(padding=1)), torch.float32, "cuda",
               layout="channels_last")


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("case", POOL_CASES + [PoolCase(8, 64, 56, 56, dict(kernel_size=3, stride=2, padding=1))],
                         ids=str)
def test_gpu_pool_cases(case, dtype, layout):
    check_pool("triton", case, dtype, "cuda", layout=layout)
    check_pool("triton", case, dtype, "cuda", layout=layout, integer=True, seed=2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_gpu_relu(dtype):
    check_relu("triton", (8, 64, 33, 17), dtype, "cuda", layout="channels_last")
    check_relu("triton", (3, 1000003), dtype, "cuda")


def _candidates(kernel, case):
    """The configs the launcher offers the tuner for this layer (bf16, channels_last)."""
    offered = {}
    real = _tune.choose

    def spy(name, key, cfgs, run, device):
        offered.setdefault(name, cfgs)
        return real(name, key, cfgs, run, device)

    with mock.patch.object(_tune, "choose", spy):
        check_conv("triton", case, torch.bfloat16, "cuda", layout="channels_last", integer=True)
    return offered[kernel]


@pytest.mark.gpu
@pytest.mark.parametrize("kernel,case", [
    ("conv_fwd", GPU_REALISTIC[0]), ("conv_dgrad", GPU_REALISTIC[0]), ("conv_wgrad", GPU_REALISTIC[0]),
    ("conv_fwd", GPU_REALISTIC[1]), ("conv_fwd", GPU_REALISTIC[4]),
], ids=str)
def test_gpu_every_candidate_config_is_correct(kernel, case, monkeypatch):
    """Every tuning candidate (incl. num_warps=8 where the lists allow it: 1x1 only) computes the
    right answer on this Triton -- a miscompiling config would be picked silently by the tuner.
    Cases: 3x3 with relu + pool (channel blocks), RGB first layer (flattened taps), 1x1."""
    cands = _candidates(kernel, case)
    assert cands
    for cfg in cands:
        monkeypatch.setenv(_tune.ENV_PIN, f"{kernel}:" + ",".join(f"{k}={v}" for k, v in cfg.items()))
        check_conv("triton", case, torch.bfloat16, "cuda", layout="channels_last", integer=True)


@pytest.mark.gpu
def test_gpu_tuning_picks_a_candidate_and_caches_it(monkeypatch, tmp_path):
    path = tmp_path / "tune.json"
    monkeypatch.setenv(_tune.ENV_TUNE, "1")
    monkeypatch.setenv(_tune.ENV_CACHE, str(path))
    monkeypatch.setattr(_tune, "_disk", None)
    monkeypatch.setattr(_tune, "_memory", {})
    check_conv("triton", GPU_REALISTIC[0], torch.bfloat16, "cuda", layout="channels_last", integer=True)
    table = json.loads(path.read_text())
    assert {k.split("|")[0] for k in table} >= {"conv_fwd", "conv_dgrad", "conv_wgrad"}
    assert all(torch.cuda.get_device_name() in k for k in table)


@pytest.mark.gpu
def test_gpu_no_host_sync_after_warmup():
    case = GPU_REALISTIC[0]
    x = torch.randn(4, 64, 56, 56, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(64, 64, 3, 3, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    b = torch.randn(64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    with fastconv.use_backend("triton", strict=True):
        for sync_mode in ("default", "error"):
            torch.cuda.set_sync_debug_mode(sync_mode)
            try:
                y = fastconv.conv2d(x, w, b, **case.kw)
                z = fastconv.max_pool2d(fastconv.relu(y), 3, 2, 1)
                z.backward(torch.ones_like(z))
            finally:
                torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
def test_gpu_cuda_graph_replay_sees_new_inputs_and_weights():
    torch.manual_seed(0)

    def ints(*shape, lo=-2, hi=3):  # exact data: the comparison cannot flake on near-ties
        return torch.randint(lo, hi, shape, device="cuda").float()

    x = ints(2, 16, 20, 20).requires_grad_()
    w = ints(32, 16, 3, 3, lo=-1, hi=2).requires_grad_()  # NCHW weight: its packing is captured too
    b = ints(32).requires_grad_()

    def step():
        y = fastconv.conv2d(x, w, b, padding=1, activation="relu", pool=2)
        y.backward(torch.ones_like(y))
        return y

    with fastconv.use_backend("triton", strict=True):
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                x.grad = w.grad = b.grad = None
                step()
        torch.cuda.current_stream().wait_stream(s)
        x.grad = w.grad = b.grad = None
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = step()
        with torch.no_grad():
            x.copy_(ints(2, 16, 20, 20))
            w.mul_(-1.0)
        g.replay()
        torch.cuda.synchronize()
    xr, wr, br = (t.detach().cpu().double().requires_grad_() for t in (x, w, b))
    with fastconv.use_backend("reference"):
        yr = fastconv.conv2d(xr, wr, br, padding=1, activation="relu", pool=2)
        yr.backward(torch.ones_like(yr))
    assert_close("y", y, yr, torch.float32, 144, "cuda")
    assert_close("dx", x.grad, xr.grad, torch.float32, 288, "cuda")
    assert_close("dw", w.grad, wr.grad, torch.float32, 800, "cuda")


@pytest.mark.gpu
def test_gpu_compile_fullgraph_matches_eager_bf16_channels_last():
    """Compiled (one opaque op per layer) and eager runs launch the same kernels."""
    torch._dynamo.reset()
    x = torch.randn(8, 32, 32, 32, device="cuda", dtype=torch.bfloat16).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(64, 32, 3, 3, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def f(x, w):
        return fastconv.max_pool2d(fastconv.conv2d(x, w, None, padding=1, activation="relu"), 3, 2, 1)

    with fastconv.use_backend("triton", strict=True):
        out = torch.compile(f, fullgraph=True)(x, w)
        out.float().sum().backward()
        x2, w2 = (t.detach().clone().requires_grad_() for t in (x, w))
        ref = f(x2, w2)
        ref.float().sum().backward()
    assert torch.equal(out, ref)
    assert torch.equal(x.grad, x2.grad)  # dgrad has no atomics: bit-identical
    assert_close("dw", w.grad, w2.grad, torch.bfloat16, 8192, "cuda")  # split-K atomics: order differs
