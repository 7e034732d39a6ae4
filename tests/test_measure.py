"""auto's measured choice (fastconv/backends/measure.py): it times the candidates and PyTorch on
the first call of a shape, keeps the fastest (a tie goes to PyTorch), caches it per machine on
disk, and stays with the static rule when measuring is off."""
import json
import time

import pytest
import torch

import fastconv
from fastconv import backends
from fastconv.backends import measure

pytestmark = pytest.mark.skipif(backends.get("cpu").available() is not None,
                                reason="the cpu backend is not built")


@pytest.fixture
def measuring(monkeypatch, tmp_path):
    monkeypatch.setenv(measure.ENV, "1")
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(measure, "_memory", {})
    monkeypatch.setattr(measure, "_disk", None)
    timed = []

    def fake_times(times):
        def _times(fns, device):
            timed.extend(fns)
            return {name: times[name] for name in fns}
        monkeypatch.setattr(measure, "_times", _times)

    return tmp_path / "autoselect.json", timed, fake_times


def _conv(x=None):
    x = torch.randn(2, 3, 8, 8) if x is None else x
    with fastconv.use_backend("auto", strict=True):
        return fastconv.conv2d(x, torch.randn(4, 3, 3, 3), padding=1, activation="relu", pool=2)


@pytest.mark.parametrize("times, want", [
    ({"cpu": 1.0, "reference": 2.0}, "cpu"),
    ({"cpu": 2.0, "reference": 1.0}, "reference"),
    ({"cpu": 0.99, "reference": 1.0}, "reference"),  # within the margin: PyTorch
], ids=["cpu-faster", "pytorch-faster", "tie"])
def test_the_fastest_wins_and_a_tie_goes_to_pytorch(measuring, times, want):
    path, timed, fake = measuring
    fake(times)
    _conv()
    assert backends.last_selected["conv2d_fwd"] == want
    assert sorted(timed) == ["cpu", "reference"]
    table = json.loads(path.read_text())
    (key, name), = table.items()
    assert name == want
    ident = measure.device_identity(torch.device("cpu"))
    assert key.startswith(ident + "||conv2d_fwd|") and "(2, 3, 8, 8):float32" in key
    from fastconv.info import cpu_isa, cpu_model

    assert cpu_model() in ident and cpu_isa() in ident and f"{torch.get_num_threads()} threads" in ident
    assert torch.__version__ in ident


def test_measured_once_then_cached_in_memory_and_on_disk(measuring, monkeypatch):
    path, timed, fake = measuring
    fake({"cpu": 1.0, "reference": 2.0})
    _conv()
    _conv()
    assert len(timed) == 2  # one measurement of each, on the first call only
    monkeypatch.setattr(measure, "_memory", {})
    monkeypatch.setattr(measure, "_disk", None)
    _conv()  # a new process: read back from disk, nothing timed
    assert len(timed) == 2 and backends.last_selected["conv2d_fwd"] == "cpu"
    _conv(torch.randn(2, 3, 10, 10))  # another shape is measured
    assert len(timed) == 4
    assert measure.cached() == {k.split("||", 1)[1]: v for k, v in json.loads(path.read_text()).items()}


def test_backward_and_the_other_ops_are_measured_too(measuring):
    path, timed, fake = measuring
    fake({"cpu": 2.0, "reference": 1.0})
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with fastconv.use_backend("auto", strict=True):
        y = fastconv.conv2d(x, torch.randn(4, 3, 3, 3), padding=1, activation="relu", pool=2)
        y.sum().backward()
        fastconv.relu(x)
        fastconv.max_pool2d(x, 2)
    assert {backends.last_selected[op] for op in ("conv2d_fwd", "conv2d_bwd", "relu_fwd", "max_pool2d_fwd")} \
        == {"reference"}
    ops = {k.split("||", 1)[1].split("|", 1)[0] for k in json.loads(path.read_text())}
    assert ops == {"conv2d_fwd", "conv2d_bwd", "max_pool2d_fwd"}  # a CPU relu is ATen's, never timed


def test_the_timer_takes_turns_and_keeps_each_fastest_call():
    calls = []

    def fn(name, slow):
        def run():
            calls.append(name)
            if slow.pop(0) if slow else False:
                time.sleep(0.05)
        return run

    # a's first timed call is slow (a noise spike): its fastest one still counts
    t = measure._times({"a": fn("a", [False, True]), "b": fn("b", [])}, torch.device("cpu"))
    assert calls == ["a", "b"] + ["a", "b"] * measure.REPS
    assert t["a"] < 0.02 and t["b"] < 0.02


def test_the_real_timer_picks_a_candidate(measuring):
    path, _, _ = measuring
    y = _conv()
    assert backends.last_selected["conv2d_fwd"] in ("cpu", "reference") and y.shape == (2, 4, 4, 4)
    assert list(json.loads(path.read_text()).values()) == [backends.last_selected["conv2d_fwd"]]


def test_measuring_off_keeps_the_static_rule(measuring, monkeypatch):
    _, timed, fake = measuring
    fake({"cpu": 2.0, "reference": 1.0})
    monkeypatch.setenv(measure.ENV, "0")
    _conv()
    assert timed == [] and backends.last_selected["conv2d_fwd"] == "cpu"
    monkeypatch.setenv(measure.ENV, "yes")
    with pytest.raises(ValueError, match="FASTCONV_AUTO_MEASURE must be 0 or 1"):
        _conv()


def test_info_lists_the_cached_choices(measuring):
    _, _, fake = measuring
    fake({"cpu": 1.0, "reference": 2.0})
    _conv()
    from fastconv.info import format_info

    d = fastconv.info()
    assert list(d["auto_choices"].values()) == ["cpu"]
    assert "auto       1 measured choice" in format_info(d)
