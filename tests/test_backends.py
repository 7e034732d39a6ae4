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
