"""Test set-up: Triton kernels run in the interpreter when no GPU is present.

TRITON_INTERPRET must be set before triton is first imported, so it is set
here, at collection time. GPU-only tests carry ``@pytest.mark.gpu`` and are
skipped (with the reason) where CUDA is absent; bench/gpu_check.sh runs them.
``auto`` does not measure here (FASTCONV_AUTO_MEASURE=0, fastconv/backends/measure.py).
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# auto keeps its static rule in the tests (reproducible: no timing decides which kernel a test
# checks); tests/test_measure.py turns measuring on where it is the subject
os.environ.setdefault("FASTCONV_AUTO_MEASURE", "0")

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (runs in bench/gpu_check.sh)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _default_backend():
    """Each test starts from the default backend policy and strictness."""
    from fastconv import backends

    saved = dict(backends._state)
    yield
    backends._state.update(saved)


@pytest.fixture
def triton_default_configs(monkeypatch):
    """No autotuning in the triton tests (on a GPU every new shape would benchmark and compile
    each candidate): the heuristic default config runs, except where a test pins or tunes. fp32
    on a GPU runs in ieee unless a test turns TF32 on."""
    from fastconv.backends.triton import _tune

    monkeypatch.setenv(_tune.ENV_TUNE, "0")
    monkeypatch.delenv(_tune.ENV_PIN, raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
