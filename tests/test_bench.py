"""The benchmark harness (bench/): FLOP/byte model, suites, skip/fallback rules,
results.json + summary, the auto-table writer, the training-step harness and
the GPU check script, on the CPU with tiny shapes (the GPU paths: marked gpu)."""
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import fastconv  # noqa: E402
from bench import autotable, bench_layers, bench_overhead, bench_train, harness, providers, report  # noqa: E402
from bench.model import Layer, roofline_floor_s  # noqa: E402
from bench.suites import SUITES, layers_of, parse_layer  # noqa: E402
from fastconv.backends import autoselect  # noqa: E402

SUMMARY_FIELDS = ("geomean_fwd_vs_eager", "geomean_fwdbwd_vs_eager", "min_fwd_vs_eager", "geomean_fwd_vs_compile")


@pytest.fixture
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: OpenMP spin-waits dominate tiny ops
    yield
    torch.set_num_threads(saved)


def _cfg(**kw):
    base = dict(device=torch.device("cpu"), dtype=torch.float32, channels_last=False,
                providers=["eager", "reference"], target_ms=2.0, warmup_ms=1.0)
    base.update(kw)
    return harness.Config(**base)


_PEAKS = {"matmul_tflops": 0.1, "copy_gbps": 10.0}


# --------------------------------------------------------------------------- model


def test_flops_and_bytes_by_hand():
    la = Layer("t", N=2, C=3, H=8, W=8, K=4)  # 3x3 p1, relu, pool 2, bias
    F_ = 2 * 2 * 4 * 8 * 8 * 3 * 3 * 3
    assert (la.flops("fwd"), la.flops("bwd"), la.flops("fwdbwd")) == (F_, 2 * F_, 3 * F_)
    x, w, b, y = 2 * 3 * 64, 4 * 27, 4, 2 * 4 * 16
    assert la.min_bytes("fwd", 4) == 4 * (x + w + b + y)
    assert la.min_bytes("fwd", 4, training=True) == 4 * (x + w + b + y) + y
    bwd = 4 * (y + x + w + y + x + w + b) + y  # dy, x, w, y (relu), dx, dw, db; idx
    assert la.min_bytes("bwd", 4) == bwd
    assert la.min_bytes("fwdbwd", 4) == 4 * (x + w + b + y) + y + bwd


def test_flops_and_bytes_without_dx_relu_bias_pool():
    la = Layer("s", N=1, C=4, H=9, W=9, K=8, R=3, S=3, groups=2, padding=0, bias=False, relu=False, pool=1,
               needs_dx=False)
    F_ = 2 * 1 * 8 * 7 * 7 * 2 * 3 * 3
    assert (la.flops("fwd"), la.flops("bwd")) == (F_, F_)
    x, w, y = 4 * 81, 8 * 2 * 9, 8 * 49
    assert la.min_bytes("fwd", 2, training=True) == 2 * (x + w + y)  # no pooling: no idx
    assert la.min_bytes("bwd", 2) == 2 * (y + x + w + w)


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_output_shapes_match_torch(suite):
    for la in SUITES[suite]:
        small = Layer(**{**la.as_dict(), "N": 1})
        y = providers.eager_fn(small)(torch.zeros(small.x_shape()), torch.zeros(small.w_shape()),
                                      torch.zeros(small.K) if small.bias else None)
        assert tuple(y.shape) == small.out_shape(), la.name


def test_roofline_floor():
    assert roofline_floor_s(2e12, 1e9, 1e12, 1e12) == 2.0
    assert roofline_floor_s(1e9, 3e12, 1e12, 1e12) == 3.0


def test_bad_layers_are_rejected():
    with pytest.raises(ValueError, match="groups"):
        Layer("g", 1, 3, 8, 8, 4, groups=2)
    with pytest.raises(ValueError, match="pool"):
        Layer("p", 1, 3, 2, 2, 4, padding=0, R=1, S=1, pool=4)


# --------------------------------------------------------------------------- suites


def test_parse_layer():
    la = parse_layer("N=2,C=3,H=16,K=8,R=7,stride=2,padding=3,pool=1,post_pool=3/2/1,needs_dx=0,name=stem")
    assert (la.N, la.C, la.H, la.W, la.K, la.R, la.S, la.stride, la.padding) == (2, 3, 16, 16, 8, 7, 7, 2, 3)
    assert la.post_pool == (3, 2, 1) and not la.needs_dx and la.name == "stem"
    with pytest.raises(ValueError, match="unknown key"):
        parse_layer("N=1,C=3,H=8,K=4,kernel=3")
    with pytest.raises(ValueError, match="K missing"):
        parse_layer("N=1,C=3,H=8")
    with pytest.raises(ValueError, match="unknown suite"):
        layers_of(["nope"], [])


def test_kernel_times_split_a_fused_layer(tmp_path, one_thread):
    rc = bench_layers.main(["--device", "cpu", "--layer", "N=2,C=3,H=8,K=4,name=tiny", "--providers",
                            "reference,eager", "--passes", "fwdbwd", "--target-ms", "2", "--warmup-ms", "1",
                            "--kernel-times", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["config"]["kernel_times"] is True
    rows = {r["provider"]: r for r in res["rows"]}
    assert "kernels" not in rows["eager"]  # only fastconv providers are profiled
    names = [k["name"] for k in rows["reference"]["kernels"]["top_cpu"]]
    assert any(n.startswith("aten::") for n in names), names


def test_issue_suites():
    cpu = SUITES["cpu"]
    assert [(la.N, la.C, la.H, la.K, la.R, la.pool, la.padding) for la in cpu] == [
        (64, 3, 32, 32, 3, 2, 1), (64, 32, 16, 64, 3, 2, 1), (64, 64, 8, 128, 3, 2, 1),
        (64, 1, 28, 16, 5, 2, 2), (64, 16, 30, 32, 3, 2, 0), (16, 64, 56, 64, 3, 2, 1)]
    assert [(la.N, la.C, la.H, la.K) for la in SUITES["cnn"]] == [(256, 3, 32, 32), (256, 32, 16, 64)]
    assert all(la.N == 64 and la.relu and la.pool == 2 for la in SUITES["vgg"])
    assert all(la.N == 1024 and not la.bias and not la.relu and la.pool == 2 for la in SUITES["airbench"])
    assert all(la.groups == la.C == la.K and la.relu and la.pool == 2 for la in SUITES["depthwise"])


# --------------------------------------------------------------------------- harness


def test_cli_on_a_tiny_layer_writes_results(tmp_path, one_thread):
    """The CI smoke test: one tiny layer on the CPU, every pass, results.json with its summary."""
    rc = bench_layers.main(["--device", "cpu", "--layer", "N=2,C=3,H=8,K=4,name=tiny", "--providers",
                            "reference,eager,cuda", "--target-ms", "2", "--warmup-ms", "1", "--out",
                            str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["complete"] and res["device_type"] == "cpu" and res["versions"]["torch"] == torch.__version__
    assert res["config"]["malloc"] == "default" and res["config"]["inductor_simdlen"] is None
    assert res["peaks"]["matmul_tflops"] > 0 and res["peaks"]["copy_gbps"] > 0
    for f in SUMMARY_FIELDS:
        assert f in res["summary"]
    assert res["summary"]["provider"] == "reference"
    rows = {(r["provider"], r["pass"]): r for r in res["rows"]}
    assert len(rows) == 9
    la = Layer("tiny", 2, 3, 8, 8, 4)
    for p in ("eager", "reference"):
        for pass_ in ("fwd", "bwd", "fwdbwd"):
            r = rows[(p, pass_)]
            assert r["status"] == "ok", r
            assert 0 < r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
            assert r["flops"] == la.flops(pass_)
            assert r["roofline_pct"] == pytest.approx(100 * r["floor_ms"] / r["median_ms"])
    for pass_ in ("fwd", "bwd", "fwdbwd"):  # the cuda backend cannot take CPU tensors: skipped, not timed
        r = rows[("cuda", pass_)]
        assert r["status"] == "skipped" and "cuda" in r["note"].lower() and "median_ms" not in r
    ratio = rows[("eager", "fwd")]["median_ms"] / rows[("reference", "fwd")]["median_ms"]
    assert res["summary"]["geomean_fwd_vs_eager"] == pytest.approx(ratio)
    assert res["summary"]["min_fwd_vs_eager"] == pytest.approx(ratio)
    assert res["summary"]["geomean_fwd_vs_compile"] is None  # compile was not asked for
    assert "| tiny |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "speedup.png").stat().st_size > 1000


_STEADY_PROBE = '''
import ctypes, sys, torch
sys.path.insert(0, sys.argv[1])
from bench import malloc
print(malloc.apply(sys.argv[2]))


class MallInfo2(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
t = torch.ones(20 << 18)  # 20 MiB
del t
print(libc.mallinfo2().fordblks >> 20)  # MiB free in the heap, kept for the next tensor
'''


def test_malloc_steady_keeps_freed_memory():
    """--malloc steady: a freed 20 MiB tensor stays in the heap (glibc's default maps it and
    returns it to the OS, so the next one faults its pages in again); an unknown policy is an
    error naming the choices."""
    if not sys.platform.startswith("linux"):
        pytest.skip("mallopt is glibc's (Linux)")
    from bench import malloc

    def free_mib(policy):
        out = subprocess.run([sys.executable, "-c", _STEADY_PROBE, str(ROOT), policy], capture_output=True,
                             text=True, check=True).stdout.splitlines()
        assert out[0].startswith(policy)
        return int(out[1])

    assert free_mib("steady") >= 20
    assert free_mib("default") < 20
    with pytest.raises(ValueError, match="default, steady"):
        malloc.apply("fast")


class _HostEvent:
    """torch.cuda.Event stand-in on the host clock: exercises the CUDA timer's bookkeeping."""

    def __init__(self, enable_timing=False):
        self.t = None

    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return (end.t - self.t) * 1e3


def test_cuda_timer_bookkeeping(monkeypatch):
    from bench import timing

    monkeypatch.setattr(torch.cuda, "Event", _HostEvent)
    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: None)
    seen = []
    timer = timing.Timer(torch.device("cpu"), target_ms=3.0, warmup_ms=0.5, min_iters=10, max_iters=40,
                         max_lead_ms=1.0)

    def run(i, state):
        assert state == ("pre", i)
        seen.append(i)
        time.sleep(2e-4)

    t = timer._measure_cuda(run, lambda i: ("pre", i), n_sets=3)
    assert 10 <= t.n <= 40 and t.n == len(seen) - 5  # 5 estimate iterations first
    assert seen == [k % 3 for k in range(len(seen))]  # every set in turn
    assert 0.2 <= t.min_ms <= t.p20_ms <= t.median_ms <= t.p80_ms


def test_unavailable_backend_is_skipped_with_reason(one_thread):
    la = SUITES["tiny"][0]
    rows = harness.run_layer("tiny", la, _cfg(providers=["eager", "cuda"]), _PEAKS,
                             harness.Timer(torch.device("cpu"), 2.0, 1.0), None, log=lambda s: None)
    cuda = [r for r in rows if r["provider"] == "cuda"]
    assert len(cuda) == 3 and all(r["status"] == "skipped" and "CUDA" in r["note"] for r in cuda)


def test_auto_falling_back_is_not_timed_but_choosing_reference_is(monkeypatch, one_thread):
    monkeypatch.setattr(autoselect, "candidates", lambda op, args: [])  # no native backend anywhere
    la = SUITES["tiny"][0]
    run = lambda: harness.run_layer("tiny", la, _cfg(providers=["eager", "auto"]), _PEAKS,  # noqa: E731
                                    harness.Timer(torch.device("cpu"), 2.0, 1.0), None, log=lambda s: None)
    auto = [r for r in run() if r["provider"] == "auto"]
    assert all(r["status"] == "skipped" and "'auto' found no kernel" in r["note"] for r in auto)
    assert all("median_ms" not in r for r in auto)
    # the measured table (or auto's own timing) naming reference is auto's answer: timed
    monkeypatch.setattr(autoselect, "candidates", lambda op, args: ["reference"])
    auto = [r for r in run() if r["provider"] == "auto"]
    assert all(r["status"] == "ok" and r["median_ms"] > 0 and r["backends"] == ["reference"] for r in auto)


def test_wrong_output_is_an_error_not_timed(monkeypatch, one_thread):
    ref = fastconv.backends.get("reference")
    real = ref.conv2d_fwd
    monkeypatch.setattr(ref, "conv2d_fwd", lambda x, w, b, p: tuple(
        t * 1.5 if t.is_floating_point() else t for t in real(x, w, b, p)))
    rows = harness.run_layer("tiny", SUITES["tiny"][0], _cfg(), _PEAKS,
                             harness.Timer(torch.device("cpu"), 2.0, 1.0), None, log=lambda s: None)
    bad = [r for r in rows if r["provider"] == "reference"]
    assert all(r["status"] == "error" and "differs from eager" in r["note"] for r in bad)


def test_fallback_reason():
    assert providers.fallback_reason("triton", {"conv2d_fwd": {"triton"}, "conv2d_bwd": {"triton"}}) is None
    assert "reference" in providers.fallback_reason("triton", {"conv2d_fwd": {"triton"},
                                                               "max_pool2d_fwd": {"reference"}})
    assert providers.fallback_reason("auto", {"conv2d_fwd": {"cuda"}, "conv2d_bwd": {"triton"}}) is None
    assert providers.fallback_reason("eager", {}) is None
    assert providers.fallback_reason("cuda", {}) == "no fastconv op was dispatched"


def test_time_budget_skips_instead_of_timing(one_thread):
    rows = harness.run_layer("tiny", SUITES["tiny"][0], _cfg(), _PEAKS,
                             harness.Timer(torch.device("cpu"), 2.0, 1.0), deadline=0.0, log=lambda s: None)
    assert rows and all(r["status"] == "skipped" and r["note"] == "time budget spent" for r in rows)


def test_summary_geomean_and_min():
    def row(p, pass_, ms, layer):
        return {"suite": "s", "layer": layer, "provider": p, "pass": pass_, "status": "ok", "median_ms": ms}
    rows = [row("eager", "fwd", 2.0, "a"), row("cuda", "fwd", 1.0, "a"),
            row("eager", "fwd", 1.0, "b"), row("cuda", "fwd", 2.0, "b"),
            row("compile", "fwd", 4.0, "a"), row("triton", "fwd", 8.0, "a")]
    s = harness.summary(rows)
    assert s["provider"] == "triton"  # headline order: auto, triton, cuda, cpu, reference
    assert s["by_provider"]["cuda"]["geomean_fwd_vs_eager"] == pytest.approx(1.0)
    assert s["by_provider"]["cuda"]["min_fwd_vs_eager"] == pytest.approx(0.5)
    assert s["by_provider"]["cuda"]["geomean_fwd_vs_compile"] == pytest.approx(4.0)
    assert s["geomean_fwd_vs_eager"] == pytest.approx(0.25) and s["geomean_fwd_vs_compile"] == pytest.approx(0.5)
    harness.add_speedups(rows)
    assert rows[1]["speedup_vs_eager"] == pytest.approx(2.0) and rows[1]["speedup_vs_compile"] == pytest.approx(4.0)
    assert rows[3]["speedup_vs_eager"] == pytest.approx(0.5) and rows[3]["speedup_vs_compile"] is None


def test_report_table_and_markdown(tmp_path):
    rows = [{"suite": "cnn", "layer": "l1", "provider": p, "pass": "fwd", "status": "ok", "median_ms": ms,
             "floor_ms": 0.1, "roofline_pct": 10.0, "speedup_vs_eager": 1.0 / ms, "peak_mem_mb": 8 * ms}
            for p, ms in (("eager", 1.0), ("cuda", 0.5))]
    rows.append({"suite": "cnn", "layer": "l1", "provider": "triton", "pass": "fwd", "status": "skipped",
                 "note": "no triton"})
    res = {"device": "GPU X", "device_type": "cuda", "date": "d", "complete": True,
           "versions": {k: "v" for k in ("fastconv", "torch", "triton", "cuda", "cudnn", "python", "driver")},
           "config": {"dtype": "bfloat16", "layout": "channels_last", "passes": ["fwd"], "compile_mode": "m",
                      "cudnn_benchmark": True, "tf32": False},
           "peaks": {"matmul_tflops": 700.0, "matmul_dtype": "bfloat16", "copy_gbps": 3000.0},
           "layers": [], "rows": rows, "summary": harness.summary(rows)}
    md = report.markdown(res, {"status": "unavailable", "note": "no model", "config": {}})
    assert "eager (cuDNN)" in md and "0.500 (x2.00, 10%)" in md and "no triton" in md and "no model" in md
    assert "| cnn | l1 | 8.0 |  | 4.0 |" in md  # peak memory: eager, triton (skipped), cuda
    text = report.table(res)
    assert "x2.00" in text and "skipped" in text
    report.write_all(res, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"results.json", "results.md", "speedup.png"}


# --------------------------------------------------------------------------- auto table


def _fake_cuda_results():
    layers = [("cnn", la) for la in SUITES["cnn"]]
    rows = []
    for suite, la in layers:
        for backend, ms in (("triton", 1.0), ("cuda", 2.0 if la.C > 3 else 0.5)):
            for pass_ in ("fwd", "fwdbwd"):
                rows.append({"suite": suite, "layer": la.name, "provider": backend, "pass": pass_, "status": "ok",
                             "median_ms": ms})
    return {"device": "NVIDIA Test GPU", "device_type": "cuda", "config": {"dtype": "bfloat16"},
            "layers": [{"suite": s, **la.as_dict(), "shape": la.describe()} for s, la in layers], "rows": rows}


def test_autotable_keys_are_autoselect_keys(tmp_path, monkeypatch):
    res = _fake_cuda_results()
    best = autotable.best_backends(res)
    small, big = SUITES["cnn"]
    x_small = torch.empty(2, small.C, 8, 8, dtype=torch.bfloat16)  # conv_key ignores N, H, W
    x_big = torch.empty(2, big.C, 8, 8, dtype=torch.bfloat16)
    assert best == {autoselect.conv_key(x_small, small.w_shape(), small.conv_params()): "cuda",
                    autoselect.conv_key(x_big, big.w_shape(), big.conv_params()): "triton"}
    path = tmp_path / "autotable.json"
    path.write_text(json.dumps({"Other GPU": {"k": "cuda"}}))
    autotable.write_table(res, path)
    table = json.loads(path.read_text())
    mine = {k: {"backend": b, "backends": list(autoselect.CUDA_BACKENDS)} for k, b in best.items()}
    assert table["Other GPU"] == {"k": "cuda"} and table["NVIDIA Test GPU"] == mine
    monkeypatch.setenv("FASTCONV_AUTOTABLE", str(path))
    autoselect._table.cache_clear()
    try:
        assert autoselect._table()["NVIDIA Test GPU"] == mine
    finally:
        autoselect._table.cache_clear()


def test_autotable_ignores_cpu_runs(tmp_path):
    res = {**_fake_cuda_results(), "device_type": "cpu"}
    assert autotable.best_backends(res) == {}


# --------------------------------------------------------------------------- training step


class _StandIn(torch.nn.Module):
    """A two-conv test double with ReferenceCNN's constructor (the real model is fastconv.train's)."""

    def __init__(self, in_channels, num_classes, image_size, layers, widths):
        super().__init__()
        self.fused = layers == "fastconv"
        c = (in_channels,) + tuple(widths)
        self.w = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(c[i + 1], c[i], 3, 3) * 0.1)
                                         for i in range(len(widths))])
        self.head = torch.nn.Linear(c[-1] * (image_size // 2 ** len(widths)) ** 2, num_classes)

    def forward(self, x):
        for w in self.w:
            x = (fastconv.conv2d(x, w, None, padding=1, activation="relu", pool=2) if self.fused
                 else F.max_pool2d(F.relu(F.conv2d(x, w, None, padding=1)), 2))
        return self.head(x.flatten(1))


def test_train_step_harness(tmp_path, monkeypatch, one_thread):
    monkeypatch.setattr(bench_train, "ReferenceCNN", _StandIn)
    out = tmp_path / "train.json"
    bench_train.main(["--device", "cpu", "--batch", "4", "--image-size", "8", "--widths", "4,8", "--warmup", "1",
                      "--steps", "3", "--backend", "reference", "--variants", "fastconv,torch-eager", "--profile",
                      "--out", str(out)])
    res = json.loads(out.read_text())
    v = {x["name"]: x for x in res["variants"]}
    assert v["fastconv"]["status"] == "ok" and v["torch-eager"]["status"] == "ok"
    assert v["fastconv"]["backends"]["conv2d_fwd"] == ["reference"] and "conv2d_bwd" in v["fastconv"]["backends"]
    assert v["fastconv"]["step_ms"] > 0 and v["fastconv"]["steps"] == 3
    assert 0 < v["fastconv"]["host_ms"] <= v["fastconv"]["step_ms_p80"]  # on the CPU the host is the step
    prof = v["fastconv"]["profile"]
    assert prof["calls"] == 3 and prof["top_cpu"] and all(r["self_cpu_us"] >= 0 for r in prof["top_cpu"])
    assert any(r["name"].startswith("aten::") for r in prof["top_cpu"])
    assert res["summary"]["fastconv_vs_torch_eager"] == pytest.approx(
        v["torch-eager"]["step_ms"] / v["fastconv"]["step_ms"])


def test_train_without_reference_cnn_reports_unavailable(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_train, "ReferenceCNN", None)
    monkeypatch.setattr(bench_train, "MODEL_MISSING", "not here")
    out = tmp_path / "train.json"
    assert bench_train.main(["--device", "cpu", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["status"] == "unavailable" and res["note"] == "not here" and res["variants"] == []


# --------------------------------------------------------------------------- host overhead


def test_overhead_benchmark_writes_every_row(tmp_path, one_thread):
    assert bench_overhead.main(["--device", "cpu", "--backend", "reference", "--calls", "3", "--repeats", "1",
                                "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "overhead.json").read_text())
    assert res["device_type"] == "cpu" and res["config"]["backend"] == "reference"
    keys = {(r["op"], r["pass"], r["provider"]) for r in res["rows"]}
    assert len(keys) == len(res["rows"]) == 5 * len(bench_overhead.PASSES) * len(bench_overhead.PROVIDERS)
    for r in res["rows"]:
        assert r["us_per_call"] > 0
        if r["provider"] == "eager":
            assert r["overhead_us"] == 0
    md = (tmp_path / "overhead.md").read_text()
    assert md.count("| conv2d+relu+pool2 |") == 2 and "custom_op" in md
    assert os.environ.get("FASTCONV_EAGER_PATH") is None  # the run restores the environment


def test_overhead_benchmark_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        bench_overhead.main(["--device", "cpu", "--calls", "0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        bench_overhead.main(["--device", "cpu", "--size", "2", "--out", str(tmp_path)])


# --------------------------------------------------------------------------- the GPU check script


def test_gpu_check_script_parses():
    script = ROOT / "bench" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    out = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "OUTDIR" in out.stdout
    assert subprocess.run(["bash", str(script)], capture_output=True).returncode == 2


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    """The whole script on the CPU: every phase runs and OUTDIR holds exactly its 8 files."""
    env = {**os.environ, "PYTHON": sys.executable, "FASTCONV_EXT": "off"}
    out = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path / "o"), "--dry-run"],
                         capture_output=True, text=True, env=env, timeout=600)
    files = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert files == sorted(["summary.txt", "tests.log", "sanitizer.log", "results.json", "results.md",
                            "speedup.png", "train.json", "autotable.json"]), out.stdout[-3000:]
    assert out.returncode == 0, out.stdout[-3000:]
    assert "all phases ok" in out.stdout
    assert out.stdout.strip().splitlines()[-1].startswith("gpu_check:")


# --------------------------------------------------------------------------- on a GPU


@pytest.mark.gpu
def test_harness_on_cuda():
    """CUDA timers (events, head start), peak memory and the peaks, on a small layer."""
    cfg = harness.Config(device=torch.device("cuda"), dtype=torch.bfloat16, channels_last=True,
                         providers=["eager", "reference", "auto"], target_ms=5.0, warmup_ms=2.0)
    res = harness.run([("custom", parse_layer("N=8,C=16,H=16,K=32"))], cfg, log=lambda s: None)
    assert res["peaks"]["bf16_matmul_tflops"] > 10 and res["peaks"]["copy_gbps"] > 100
    rows = {(r["provider"], r["pass"]): r for r in res["rows"]}
    for p in ("eager", "reference"):
        for pass_ in ("fwd", "bwd", "fwdbwd"):
            r = rows[(p, pass_)]
            assert r["status"] == "ok", r
            assert 0 < r["p20_ms"] <= r["median_ms"] <= r["p80_ms"] < 100
            assert r["peak_mem_mb"] is not None and r["peak_mem_mb"] >= 0
            assert math.isfinite(r["roofline_pct"])
    assert all(rows[("auto", p)]["status"] in ("ok", "skipped") for p in ("fwd", "bwd", "fwdbwd"))


def test_bench_models_on_the_reference_cnn(tmp_path, one_thread):
    """bench/bench_models.py: every variant and pass timed, the saved activations counted (the
    fused model saves less), what convert fused, and the result files."""
    from bench import bench_models

    out = tmp_path / "m"
    rc = bench_models.main(["--models", "reference-cnn,airbench94", "--reps", "1", "--warmup", "1", "--threads", "1",
                            "--device", "cpu", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    rows = {(r["model"], r["variant"], r["pass"]): r for r in res["rows"]}
    assert len(rows) == 8 and all(r["status"] == "ok" and r["median_ms"] > 0 for r in rows.values())
    eager, conv = rows[("reference-cnn", "eager", "train")], rows[("reference-cnn", "convert", "train")]
    assert 0 < conv["saved_bytes"] < eager["saved_bytes"] and conv["fused"] == 2
    assert rows[("airbench94", "convert", "infer")]["fused"] > rows[("airbench94", "convert", "train")]["fused"]
    assert "| reference-cnn | train |" in (out / "results.md").read_text()
    assert res["cpu"]["model"] and res["cpu"]["isa"]  # the machine is recorded


def test_bench_train_cuda_graphs_needs_a_gpu(capsys):
    with pytest.raises(SystemExit):
        bench_train.parse_args(["--out", "x.json", "--device", "cpu", "--cuda-graphs"])
    assert "--cuda-graphs: CUDA graphs need --device cuda" in capsys.readouterr().err


@pytest.mark.gpu
def test_bench_train_cuda_graphs(tmp_path):
    """The graphed step of both fastconv and torch eager runs and is timed."""
    out = tmp_path / "train.json"
    assert bench_train.main(["--out", str(out), "--batch", "64", "--warmup", "2", "--steps", "5",
                             "--variants", "fastconv,torch-eager", "--cuda-graphs"]) == 0
    res = json.loads(out.read_text())
    names = [v["name"] for v in res["variants"]]
    assert names == ["fastconv", "torch-eager", "fastconv +graphs", "torch-eager +graphs"]
    for v in res["variants"]:
        assert v["status"] == "ok" and v["cuda_graphs"] == v["name"].endswith("+graphs") and v["step_ms"] > 0, v
