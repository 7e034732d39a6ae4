"""Backend choice: names, env var, context manager, fallback warning, strict mode."""
import subprocess
import sys
import warnings

import pytest
import torch

import fastconv
from fastconv import _params, backends
from fastconv.backends import measure


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown fastconv backend 'cudnn'; expected one of auto, reference"):
        fastconv.set_backend("cudnn")
    with pytest.raises(ValueError, match=r"unknown fastconv backend"):
        with fastconv.use_backend("fast"):
            pass


def test_use_backend_restores_previous_choice():
    fastconv.set_backend("reference")
    with fastconv.use_backend("cpu", strict=True):
        assert fastconv.current_backend() == "cpu" and backends.strict()
    assert fastconv.current_backend() == "reference" and not backends.strict()


def test_env_var_picks_backend_and_rejects_unknown():
    code = "import fastconv; print(fastconv.current_backend())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "FASTCONV_BACKEND": "reference"})
    assert out.stdout.strip() == "reference", out.stderr
    bad = subprocess.run([sys.executable, "-c", "import fastconv, torch; fastconv.relu(torch.ones(2))"],
                         capture_output=True, text=True,
                         env={**__import__("os").environ, "FASTCONV_BACKEND": "nope"})
    assert bad.returncode != 0 and "FASTCONV_BACKEND: unknown fastconv backend 'nope'" in bad.stderr


def test_fallback_warns_once_and_strict_raises():
    """The cuda backend cannot take CPU tensors: a warning and the reference result, or an error."""
    x = torch.randn(1, 2, 4, 4)
    backends._warned.clear()
    with fastconv.use_backend("cuda"):
        with pytest.warns(RuntimeWarning, match=r"backend 'cuda' cannot run max_pool2d_fwd .*falling back"):
            y = fastconv.max_pool2d(x, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            y2 = fastconv.max_pool2d(x, 2)  # the second call does not warn again
    torch.testing.assert_close(y, torch.nn.functional.max_pool2d(x, 2))
    torch.testing.assert_close(y2, y)
    with fastconv.use_backend("cuda", strict=True):
        with pytest.raises(fastconv.BackendUnsupportedError, match=r"strict mode forbids falling back"):
            fastconv.max_pool2d(x, 2)


def test_strict_env_var():
    code = ("import fastconv, torch\n"
            "with fastconv.use_backend('cuda'):\n"
            "    fastconv.relu(torch.ones(3))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "FASTCONV_STRICT": "1"})
    assert out.returncode != 0 and "BackendUnsupportedError" in out.stderr


def test_auto_on_cpu_uses_cpu_backend_when_built(monkeypatch):
    monkeypatch.setenv(measure.ENV, "0")
    x = torch.randn(1, 2, 4, 4)
    p = _params.PoolParams((2, 2), (2, 2), (0, 0), (1, 1), False)
    chosen = backends.select("max_pool2d_fwd", x, p)
    expected = "cpu" if backends.unsupported_reason("cpu", "max_pool2d_fwd", x, p) is None else "reference"
    assert chosen.NAME == expected
    assert backends.select("relu_fwd", x).NAME == "reference"  # ATen's relu is the machine's bandwidth


def test_available_reports_every_backend():
    av = backends.available()
    assert set(av) == {"reference", "cpu", "cuda", "triton", "vendor"}
    assert av["vendor"] == av["triton"]  # it runs where the triton kernels run
    assert av["reference"] is None
    if not torch.cuda.is_available():
        assert av["cuda"] == "no CUDA device is visible"


def test_strict_auto_that_would_fall_back_is_an_error(monkeypatch):
    """auto in strict mode: no fastconv kernel for the call is an error naming each candidate's
    reason; reference chosen by the measured table is a choice, and runs."""
    from fastconv.backends import autoselect

    x, w = torch.randn(1, 2, 6, 6), torch.randn(3, 2, 3, 3)
    monkeypatch.setattr(autoselect, "candidates", lambda op, args: ["cuda"])  # cannot take CPU tensors
    with fastconv.use_backend("auto", strict=True):
        with pytest.raises(fastconv.BackendUnsupportedError, match=r"'auto' found no kernel for conv2d_fwd \(cuda: "):
            fastconv.conv2d(x, w)
    with fastconv.use_backend("auto"), warnings.catch_warnings():
        warnings.simplefilter("error")  # auto's fallback is silent outside strict mode
        fastconv.conv2d(x, w)
    assert backends.last_selected["conv2d_fwd"] == "reference"
    monkeypatch.setattr(autoselect, "candidates", lambda op, args: ["reference"])
    with fastconv.use_backend("auto", strict=True):
        fastconv.conv2d(x, w)
    assert backends.last_selected["conv2d_fwd"] == "reference"


def test_last_selected_names_the_backend_that_ran():
    x = torch.randn(1, 2, 6, 6)
    with fastconv.use_backend("reference", strict=True):
        fastconv.relu(x)
    assert backends.last_selected["relu_fwd"] == "reference"
    if backends.get("cpu").available() is None:
        with fastconv.use_backend("cpu", strict=True):
            fastconv.max_pool2d(x, 2)
        assert backends.last_selected["max_pool2d_fwd"] == "cpu"


@pytest.mark.parametrize("k, P, Q", [(2, 6, 6), (2, 7, 9), (3, 8, 7)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_reference_unpool_routes_each_gradient_to_its_window_position(k, P, Q, layout):
    """dC[n, c, k*i + di, k*j + dj] = dy[n, c, i, j] where idx = di*k + dj, 0 elsewhere (the
    ragged edge past the last window too), in dy's memory format."""
    from fastconv.backends.reference import unpool

    gen = torch.Generator().manual_seed(k * 100 + P * 10 + Q)
    PO, QO = P // k, Q // k
    dy = torch.randn(2, 3, PO, QO, generator=gen, dtype=torch.float64)
    idx = torch.randint(0, k * k, (2, 3, PO, QO), generator=gen).to(torch.uint8)
    if layout == "channels_last":
        dy, idx = (t.contiguous(memory_format=torch.channels_last) for t in (dy, idx))
    want = torch.zeros(2, 3, P, Q, dtype=torch.float64)
    for n, c, i, j in torch.cartesian_prod(*(torch.arange(s) for s in (2, 3, PO, QO))).tolist():
        di, dj = divmod(int(idx[n, c, i, j]), k)
        want[n, c, k * i + di, k * j + dj] = dy[n, c, i, j]
    got = unpool(dy, idx, k, P, Q)
    assert torch.equal(got, want)
    assert got.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else
                             torch.contiguous_format)
