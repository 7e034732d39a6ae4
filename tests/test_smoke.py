"""One call of every kernel family and variant per backend, forward and backward, against the oracle.

bench/gpu_check.sh runs this file under compute-sanitizer (memcheck, racecheck), one backend at a
time (``-k cuda``, ``-k "triton or vendor"``): each case is small, so a sanitizer run stays short, and each one
still reaches a distinct kernel variant: small-C and GEMM-sized convs, depthwise, a stem conv
without pool, pool 3 with dilation, asymmetric 'same' padding, a ragged pool edge, general
max-pool (overlapping, ceil mode), relu, and one NCHW conv. The ``cpu`` copies run everywhere
(they are the dry run of the same file); the GPU backends are ``gpu``-marked.
"""
import pytest
import torch

from oracle import CONV_CASES, POOL_CASES, ConvCase, check_conv, check_pool, check_relu

SMOKE_CONV_CASES = [
    CONV_CASES[4],                                                                     # small C, ragged pool
    ConvCase(2, 16, 8, 8, 32, 3, 3, dict(padding=1, activation="relu", pool=2)),       # GEMM-sized
    CONV_CASES[8],                                                                     # depthwise
    CONV_CASES[11],                                                                    # stem, no pool
    CONV_CASES[6],                                                                     # pool 3, dilation 2
    CONV_CASES[10],                                                                    # asymmetric padding
    ConvCase(1, 4, 12, 12, 4, 3, 3, dict(padding=2, dilation=2, pool=3), bias=False),  # no relu, no bias
]
SMOKE_POOL_CASES = [POOL_CASES[2], POOL_CASES[3]]
RELU_SHAPE = (2, 8, 5, 7)

BACKENDS = [
    pytest.param("cpu", "cpu", id="cpu"),
    pytest.param("cuda", "cuda", id="cuda", marks=pytest.mark.gpu),
    pytest.param("triton", "cuda", id="triton", marks=pytest.mark.gpu),
    pytest.param("vendor", "cuda", id="vendor", marks=pytest.mark.gpu),
]


@pytest.fixture(autouse=True)
def _backend_available(request):
    """A backend this build lacks (FASTCONV_EXT=off: no cpu kernels) is skipped with its reason."""
    import fastconv.backends

    backend, device = request.node.callspec.params["backend"], request.node.callspec.params["device"]
    why = fastconv.backends.unsupported_reason(backend, "relu_fwd", torch.empty(1, device=device))
    if why:
        pytest.skip(f"{backend}: {why}")


def _dtypes(device):
    return [torch.float32] if device == "cpu" else [torch.bfloat16, torch.float32]


@pytest.fixture(autouse=True)
def _no_tf32():
    """fp32 kernels compute in fp32 here, like the oracle (tolerances assume it)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# (check, case) pairs: each conv and pool variant, channels_last in every dtype of the device
SMOKE = ([pytest.param(check_conv, c, id=f"conv2d-{c}") for c in SMOKE_CONV_CASES]
         + [pytest.param(check_pool, c, id=f"max_pool2d-{c}") for c in SMOKE_POOL_CASES])


@pytest.mark.parametrize("check, case", SMOKE)
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_kernel(backend, device, check, case):
    for dtype in _dtypes(device):
        # the vendor's conv rounds its output to the storage dtype before the pool (as eager cuDNN
        # does), so on random half-precision data a window's route may legitimately differ from the
        # float64 oracle's: small integers are exact there (tests/test_vendor.py does the same)
        integer = backend == "vendor" and dtype != torch.float32
        check(backend, case, dtype, device, layout="channels_last", **({"integer": True} if integer else {}))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_conv2d_nchw(backend, device):
    check_conv(backend, SMOKE_CONV_CASES[1], torch.float32, device, layout="contiguous")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_relu(backend, device):
    for dtype in _dtypes(device):
        check_relu(backend, RELU_SHAPE, dtype, device)
