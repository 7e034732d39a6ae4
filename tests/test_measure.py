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


def _cores(smallc, aten, reference):
    """Fake times of a CPU conv's candidates: the cpu backend's two cores, and PyTorch."""
    return {"cpu:smallc": smallc, "cpu:aten": aten, "reference": reference}


@pytest.mark.parametrize("times, want", [
    (_cores(1.0, 1.5, 2.0), "cpu:smallc"),
    (_cores(2.0, 1.0, 2.0), "cpu:aten"),
    (_cores(2.0, 2.0, 1.0), "reference"),
    (_cores(0.99, 1.2, 1.0), "reference"),  # within the margin: PyTorch
], ids=["smallc-faster", "aten-core-faster", "pytorch-faster", "tie"])
def test_the_fastest_wins_and_a_tie_goes_to_pytorch(measuring, times, want):
    path, timed, fake = measuring
    fake(times)
    _conv()
    assert backends.last_selected["conv2d_fwd"] == want.split(":")[0]
    assert sorted(timed) == ["cpu:aten", "cpu:smallc", "reference"]  # both cores and PyTorch
    table = json.loads(path.read_text())
    (key, name), = table.items()
    assert name == want
    ident = measure.device_identity(torch.device("cpu"))
    assert key.startswith(ident + "||conv2d_fwd|") and "(2, 3, 8, 8):float32" in key
    from fastconv.info import cpu_id, cpu_isa

    assert cpu_id() in ident and cpu_isa() in ident and f"{torch.get_num_threads()} threads" in ident
    assert f"aten {torch.backends.cpu.get_cpu_capability().lower()}" in ident
    assert torch.__version__ in ident


def test_the_identity_names_onednns_isa(monkeypatch):
    """A oneDNN held below the CPU's ISA (ONEDNN_MAX_CPU_ISA) changes which candidate is fastest:
    its choices are kept apart from the unrestricted ones."""
    plain = measure.device_identity(torch.device("cpu"))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    measure._identity.cache_clear()
    try:
        held = measure.device_identity(torch.device("cpu"))
    finally:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
        measure._identity.cache_clear()
    assert "onednn <= avx2" in held and "onednn" not in plain and held != plain


@pytest.mark.parametrize("core", ["smallc", "aten"])
def test_the_chosen_core_is_the_one_that_runs(measuring, monkeypatch, core):
    """auto's cpu:<core> computes what FASTCONV_CPU_CONV=<core> computes, bit for bit; the two
    cores' backward rounds differently on this input, so dx tells them apart."""
    path, _, fake = measuring
    fake(_cores(1.0, 2.0, 3.0) if core == "smallc" else _cores(2.0, 1.0, 3.0))
    gen = torch.Generator().manual_seed(0)
    x0, w = torch.randn(2, 16, 12, 12, generator=gen), torch.randn(8, 16, 3, 3, generator=gen)

    def run(backend):
        x = x0.clone().requires_grad_()
        with fastconv.use_backend(backend, strict=True):
            y = fastconv.conv2d(x, w, padding=1, activation="relu", pool=2)
            y.backward(torch.ones_like(y))
        return y.detach(), x.grad

    y, dx = run("auto")
    assert sorted(json.loads(path.read_text()).values()) == [f"cpu:{core}"] * 2  # forward and backward
    forced = {}
    for c in ("smallc", "aten"):
        monkeypatch.setenv("FASTCONV_CPU_CONV", c)
        forced[c] = run("cpu")
    monkeypatch.delenv("FASTCONV_CPU_CONV")
    assert not torch.equal(forced["smallc"][1], forced["aten"][1])
    assert torch.equal(y, forced[core][0]) and torch.equal(dx, forced[core][1])
    assert torch.equal(run("auto")[1], forced[core][1])  # the cached choice, on a later call
    assert torch.ops.fastconv_C.cpu_conv_core(0) == 0  # the core is the call's alone, reset after it
    with pytest.raises(RuntimeError, match="core must be 0 .*, got 3"):
        torch.ops.fastconv_C.cpu_conv_core(3)


def test_a_forced_core_is_not_measured(measuring, monkeypatch):
    _, timed, fake = measuring
    fake({"cpu": 1.0, "reference": 2.0})
    monkeypatch.setenv("FASTCONV_CPU_CONV", "aten")
    _conv()
    assert sorted(timed) == ["cpu", "reference"]


def test_measured_once_then_cached_in_memory_and_on_disk(measuring, monkeypatch):
    path, timed, fake = measuring
    fake(_cores(1.0, 1.5, 2.0))
    _conv()
    _conv()
    assert len(timed) == 3  # one measurement of each, on the first call only
    monkeypatch.setattr(measure, "_memory", {})
    monkeypatch.setattr(measure, "_disk", None)
    _conv()  # a new process: read back from disk, nothing timed
    assert len(timed) == 3 and backends.last_selected["conv2d_fwd"] == "cpu"
    _conv(torch.randn(2, 3, 10, 10))  # another shape is measured
    assert len(timed) == 6
    assert measure.cached() == {k.split("||", 1)[1]: v for k, v in json.loads(path.read_text()).items()}


def test_backward_and_the_other_ops_are_measured_too(measuring):
    path, timed, fake = measuring
    fake({"cpu": 2.0, **_cores(2.0, 2.0, 1.0)})
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
    assert [v.split(":")[0] for v in json.loads(path.read_text()).values()] == [backends.last_selected["conv2d_fwd"]]


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
    fake(_cores(1.0, 1.5, 2.0))
    _conv()
    from fastconv.info import format_info

    d = fastconv.info()
    assert list(d["auto_choices"].values()) == ["cpu:smallc"]
    assert "auto       1 measured choice" in format_info(d)


def test_a_measured_call_skips_listing_the_candidates_next_time(measuring, monkeypatch):
    """The second call of a measured shape takes its choice from memory without asking the
    candidate rule again; a knob that changes the candidates (FASTCONV_CPU_CONV) lists them anew."""
    from fastconv.backends import autoselect

    _, timed, fake = measuring
    fake({**_cores(2.0, 1.0, 2.0), "cpu": 1.0})
    x = torch.randn(2, 3, 8, 8)
    _conv(x)
    listed = []
    rule = autoselect.candidates

    def spy(op, args):
        listed.append(op)
        return rule(op, args)

    _conv(x)  # the memo is keyed on the rule in force: the real one, still
    assert backends.last_selected["conv2d_fwd"] == "cpu"
    monkeypatch.setattr(autoselect, "candidates", spy)  # another rule: listed again, once
    _conv(x)
    _conv(x)
    assert listed == ["conv2d_fwd"]
    monkeypatch.setenv("FASTCONV_CPU_CONV", "smallc")
    _conv(x)
    assert listed == ["conv2d_fwd", "conv2d_fwd"]
    # measured once per candidate set (both cores; then the forced one): the rest were memo hits
    assert timed == ["cpu:smallc", "cpu:aten", "reference", "cpu", "reference"]
