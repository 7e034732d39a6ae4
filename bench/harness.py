"""Runs layers x providers x passes and returns the results (one row each).

Passes (all on the same rotated input sets, see bench/timing.py):

* ``fwd``    ``y = f(x, w, b)`` under ``torch.no_grad()`` (inference);
* ``bwd``    ``torch.autograd.grad(y, (x, w, b), dy)`` with the forward untimed;
* ``fwdbwd`` both, timed together (one training step of the layer).

``x`` gets a gradient only when the layer ``needs_dx``. Before any timing a
provider runs once (the probe): its output must match eager PyTorch's within
a dtype tolerance, and a fastconv provider must have run on the backend it is
named after (strict mode; ``auto`` on anything but ``reference``). A provider
that cannot run a layer gives a ``skipped`` row with the reason, one that
fails or computes something else an ``error`` row; neither is timed.
"""
from __future__ import annotations

import datetime
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from fastconv.info import cpu, driver_version, gpus, versions
from fastconv.backends import BackendUnsupportedError

from . import profiling
from . import providers as prov
from .model import PASSES, Layer, roofline_floor_s
from .timing import Timer, device_name, measure_peaks, rotation_sets, sync

# ||y - y_eager|| / ||y_eager|| allowed in the probe (bf16 rounds to 2^-8; TF32 multiplies at 2^-11)
REL_TOL = {torch.bfloat16: 3e-2, torch.float16: 5e-3, torch.float32: 1e-4}
REL_TOL_TF32 = 1e-2
COMPILE_RESERVE_S = 30.0  # left in the budget for one more torch.compile, or compile is skipped


@dataclass
class Config:
    device: torch.device
    dtype: torch.dtype
    channels_last: bool = True
    passes: tuple = PASSES
    providers: list = field(default_factory=list)
    compile_mode: str = prov.COMPILE_MODE
    target_ms: float = 100.0
    warmup_ms: float = 25.0
    budget_s: Optional[float] = None  # no new timing starts after this many seconds
    seed: int = 0
    kernel_times: bool = False  # profile one forward + backward of each fastconv provider
    rounds: int = 1  # the providers take turns this many times; each (provider, pass) keeps its fastest round
    malloc: str = "default"  # the C allocator's policy (bench/malloc.py), as applied
    inductor_simdlen: Optional[int] = None  # torch._inductor.config.cpp.simdlen of 'compile' (None: the CPU's)

    def as_dict(self) -> dict:
        return {
            "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
            "layout": "channels_last" if self.channels_last else "nchw", "passes": list(self.passes),
            "providers": list(self.providers), "compile_mode": self.compile_mode,
            "target_ms": self.target_ms, "warmup_ms": self.warmup_ms, "budget_s": self.budget_s,
            "kernel_times": self.kernel_times, "rounds": self.rounds,
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if self.device.type == "cuda" else None,
            "tf32": tf32_on(self.device, self.dtype),
            "threads": torch.get_num_threads(), "malloc": self.malloc, "inductor_simdlen": self.inductor_simdlen,
        }


def tf32_on(device, dtype) -> bool:
    return device.type == "cuda" and dtype == torch.float32 and bool(torch.backends.cudnn.allow_tf32)


def prepare_device(cfg: Config) -> None:
    """cuDNN picks its fastest algorithm per shape; fp32 means TF32, like cuDNN's default."""
    if cfg.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        if cfg.dtype == torch.float32:
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cuda.matmul.allow_tf32 = True


# --------------------------------------------------------------------------- inputs


def make_sets(layer: Layer, cfg: Config, gen: torch.Generator) -> list[tuple]:
    """(x, w, b, dy) input sets, enough of them to span 2.5x the last-level cache."""
    e = torch.empty(0, dtype=cfg.dtype).element_size()
    w_numel = math.prod(layer.w_shape())
    set_bytes = e * (math.prod(layer.x_shape()) + w_numel + layer.K * layer.bias + math.prod(layer.out_shape()))
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    dev, dt = cfg.device, cfg.dtype

    def rand(shape, scale=1.0):
        return (torch.randn(shape, device=dev, dtype=torch.float32, generator=gen) * scale).to(dt)

    fan_in = (layer.C // layer.groups) * layer.R * layer.S
    sets = []
    for _ in range(rotation_sets(set_bytes, dev)):
        x = rand(layer.x_shape()).contiguous(memory_format=fmt).requires_grad_(layer.needs_dx)
        w = rand(layer.w_shape(), fan_in ** -0.5).requires_grad_(True)
        b = rand((layer.K,), 0.1).requires_grad_(True) if layer.bias else None
        dy = rand(layer.out_shape()).contiguous(memory_format=fmt)
        sets.append((x, w, b, dy))
    return sets


def _grad_inputs(layer: Layer, s: tuple) -> tuple:
    x, w, b, _ = s
    return tuple(t for t in ((x if layer.needs_dx else None), w, b) if t is not None)


def closures(fn: Callable, pass_: str, layer: Layer, sets: list) -> tuple[Callable, Optional[Callable]]:
    """(run, pre) of one pass for Timer.measure."""
    if pass_ == "fwd":
        def run_fwd(i, _):
            x, w, b, _dy = sets[i]
            with torch.no_grad():
                fn(x, w, b)
        return run_fwd, None
    if pass_ == "bwd":
        def pre_bwd(i):
            x, w, b, _dy = sets[i]
            return fn(x, w, b)

        def run_bwd(i, y):
            torch.autograd.grad(y, _grad_inputs(layer, sets[i]), sets[i][3])
        return run_bwd, pre_bwd

    def run_fwdbwd(i, _):
        x, w, b, dy = sets[i]
        torch.autograd.grad(fn(x, w, b), _grad_inputs(layer, sets[i]), dy)
    return run_fwdbwd, None


# --------------------------------------------------------------------------- one layer


def _first_line(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}"[:limit]


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    if y.shape != ref.shape:
        return math.inf
    a, r = y.detach().double(), ref.detach().double()
    return float((a - r).norm() / r.norm().clamp_min(1e-30))


class _Skip(Exception):
    def __init__(self, status: str, note: str):
        super().__init__(note)
        self.status, self.note = status, note


def probe(provider: str, fn: Callable, layer: Layer, cfg: Config, sets: list, y_ref: torch.Tensor) -> dict:
    """Run once forward (and backward if timed): check the output and which backends ran."""
    x, w, b, dy = sets[0]
    t0 = time.perf_counter()
    try:
        with prov.record_backends() as used, prov.scope(provider):
            with torch.no_grad():
                y = fn(x, w, b)
            if any(p in cfg.passes for p in ("bwd", "fwdbwd")):
                torch.autograd.grad(fn(x, w, b), _grad_inputs(layer, sets[0]), dy)
            sync(cfg.device)
    except (BackendUnsupportedError, prov.Unavailable) as e:
        raise _Skip("skipped", _first_line(e)) from None
    except NotImplementedError as e:  # the op has no kernel registered for this device
        raise _Skip("skipped", "kernel not registered: " + _first_line(e)) from None
    except Exception as e:  # noqa: BLE001  (a failing provider is a result, not a crash)
        raise _Skip("error", _first_line(e)) from None
    seconds = time.perf_counter() - t0
    reason = prov.fallback_reason(provider, used)
    if reason:
        raise _Skip("skipped", reason)
    err = _rel_err(y, y_ref)
    tol = REL_TOL_TF32 if tf32_on(cfg.device, cfg.dtype) else REL_TOL[cfg.dtype]
    if not err <= tol:
        raise _Skip("error", f"output differs from eager: rel err {err:.3g} > {tol:g}")
    backends_used = sorted(set().union(*used.values())) if used else []
    return {"rel_err_fwd": err, "backends": backends_used, "first_call_s": seconds}


def _row(suite: str, layer: Layer, provider: str, pass_: str, status: str, note: str = "", **kw) -> dict:
    return {"suite": suite, "layer": layer.name, "provider": provider, "pass": pass_, "status": status,
            "note": note, **kw}


def _metrics(layer: Layer, pass_: str, cfg: Config, peaks: dict, median_ms: float) -> dict:
    e = torch.empty(0, dtype=cfg.dtype).element_size()
    flops = layer.flops(pass_)
    nbytes = layer.min_bytes(pass_, e, training=False)
    floor = roofline_floor_s(flops, nbytes, peaks["matmul_tflops"] * 1e12, peaks["copy_gbps"] * 1e9)
    t = median_ms * 1e-3
    return {"flops": flops, "min_bytes": nbytes, "tflops": flops / t / 1e12, "gbps": nbytes / t / 1e9,
            "floor_ms": floor * 1e3, "roofline_pct": 100.0 * floor / t}


def _kernel_times(fn, layer: Layer, sets: list, device, provider: str, log: Callable) -> Optional[dict]:
    """The top kernels of one forward + backward (profiled 3 times), or None if that fails."""
    run, _ = closures(fn, "fwdbwd", layer, sets)
    try:
        with prov.scope(provider):
            prof = profiling.top_ops(lambda i: run(i % len(sets), None), device, calls=3, top=10)
    except Exception as e:  # noqa: BLE001  (a profiler problem must not cost the timing)
        log(f"  {layer.name:<28} {provider:<9} kernel times: {_first_line(e)}")
        return None
    log(f"  {layer.name:<28} {provider:<9} kernels of one forward + backward:")
    for line in profiling.lines(prof):
        log(line)
    return {"device_total_us": prof["device_total_us"], "top_device": prof["top_device"],
            "top_cpu": prof["top_cpu"][:5]}


def run_layer(suite: str, layer: Layer, cfg: Config, peaks: dict, timer: Timer, deadline: Optional[float],
              log: Callable = print) -> list[dict]:
    gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    sets = make_sets(layer, cfg, gen)
    with torch.no_grad():
        y_ref = prov.eager_fn(layer)(*sets[0][:3])
    rows = []
    order = sorted(cfg.providers, key=lambda p: (p == "compile", p != "eager"))  # eager first, compile last
    ready = []  # (provider, fn, extra, kernels) of the providers that can run this layer
    for provider in order:
        left = None if deadline is None else deadline - time.perf_counter()
        if left is not None and (left <= 0 or (provider == "compile" and left < COMPILE_RESERVE_S)):
            rows += [_row(suite, layer, provider, p, "skipped", "time budget spent") for p in cfg.passes]
            continue
        try:
            try:
                fn = prov.build(provider, layer, *sets[0][:3], compile_mode=cfg.compile_mode)
            except prov.Unavailable as e:
                raise _Skip("skipped", str(e)) from None
            info = probe(provider, fn, layer, cfg, sets, y_ref)
        except _Skip as s:
            rows += [_row(suite, layer, provider, p, s.status, s.note) for p in cfg.passes]
            log(f"  {layer.name:<28} {provider:<9} {s.status}: {s.note}")
            continue
        extra = {"rel_err_fwd": info["rel_err_fwd"]}
        if provider in prov.FASTCONV:
            extra["backends"] = info["backends"]
        if provider == "compile":
            extra["compile_s"] = info["first_call_s"]
        kernels = None
        if cfg.kernel_times and provider in prov.FASTCONV and "fwdbwd" in cfg.passes:
            kernels = _kernel_times(fn, layer, sets, cfg.device, provider, log)
        ready.append((provider, fn, extra, kernels))
    # the providers take turns (rounds > 1), so that a slow spell of a shared machine, which
    # lasts seconds, cannot fall on one provider alone; each keeps its fastest round
    best: dict = {}  # (provider, pass) -> (Timing, peak bytes)
    failed: set = set()
    for _ in range(max(1, cfg.rounds)):
        for provider, fn, _, _ in ready:
            with prov.scope(provider):
                for pass_ in cfg.passes:
                    if (provider, pass_) in failed or (deadline is not None and time.perf_counter() > deadline):
                        continue
                    run, pre = closures(fn, pass_, layer, sets)
                    try:
                        t = timer.measure(run, pre, len(sets))
                        mem = timer.peak_memory(run, pre)
                    except Exception as e:  # noqa: BLE001
                        failed.add((provider, pass_))
                        rows.append(_row(suite, layer, provider, pass_, "error", _first_line(e)))
                        log(f"  {layer.name:<28} {provider:<9} {pass_:<6} error: {_first_line(e)}")
                        continue
                    seen = best.get((provider, pass_))
                    if seen is None or t.median_ms < seen[0].median_ms:
                        best[(provider, pass_)] = (t, mem)
    for provider, fn, extra, kernels in ready:
        for pass_ in cfg.passes:
            if (provider, pass_) in failed:
                continue
            if (provider, pass_) not in best:
                rows.append(_row(suite, layer, provider, pass_, "skipped", "time budget spent"))
                continue
            t, mem = best[(provider, pass_)]
            m = _metrics(layer, pass_, cfg, peaks, t.median_ms)
            kw = {**extra, "kernels": kernels} if pass_ == "fwdbwd" and kernels is not None else extra
            rows.append(_row(suite, layer, provider, pass_, "ok", median_ms=t.median_ms, p20_ms=t.p20_ms,
                             p80_ms=t.p80_ms, n=t.n, **m,
                             peak_mem_mb=None if mem is None else mem / 2**20, **kw))
            log(f"  {layer.name:<28} {provider:<9} {pass_:<6} {t.median_ms:9.4f} ms "
                f"[{t.p20_ms:.4f}, {t.p80_ms:.4f}]  {m['tflops']:7.2f} TFLOP/s  {m['gbps']:8.1f} GB/s  "
                f"{m['roofline_pct']:5.1f}% of roofline")
    del ready, sets, y_ref
    if cfg.device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------- the run


def environment(device: torch.device) -> dict:
    """Machine, versions and date of a run, from fastconv's own report (``fastconv/info.py``);
    no extension build is triggered here."""
    env = {
        "device": device_name(device),
        "device_type": device.type,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "versions": {**versions(), "driver": driver_version() if device.type == "cuda" else None},
        "cpu": cpu(),
        "extension": extension_state(),
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        gpu = next(g for g in gpus() if g["index"] == index)
        env["gpu"] = {k: gpu[k] for k in ("sms", "memory_gib", "capability", "l2_mb")}
    return env


def extension_state() -> Optional[dict]:
    """The extension's build state if something loaded it already (never builds it)."""
    from fastconv import _ext

    return dict(_ext._status) if _ext._tried else None


def run(layers: list[tuple[str, Layer]], cfg: Config, on_progress: Optional[Callable] = None,
        log: Callable = print) -> dict:
    """Measure the peaks, then every layer; ``on_progress(results)`` after each layer
    (results['complete'] is False until the last one)."""
    prov.check_names(cfg.providers)
    prepare_device(cfg)
    start = time.perf_counter()
    deadline = None if cfg.budget_s is None else start + cfg.budget_s
    results = {"schema": 1, **environment(cfg.device), "config": cfg.as_dict(), "complete": False,
               "argv": sys.argv[1:], "layers": [], "rows": [], "summary": summary([])}
    log(f"device: {results['device']}  torch {torch.__version__}  dtype {results['config']['dtype']}  "
        f"layout {results['config']['layout']}")
    results["peaks"] = measure_peaks(cfg.device, cfg.dtype)
    pk = results["peaks"]
    log(f"peaks: {pk['matmul_tflops']:.1f} TFLOP/s ({pk['matmul_dtype']} matmul), {pk['copy_gbps']:.0f} GB/s copy")
    timer = Timer(cfg.device, target_ms=cfg.target_ms, warmup_ms=cfg.warmup_ms)
    for suite, layer in layers:
        log(f"{suite}: {layer.name}  ({layer.describe()})")
        results["layers"].append({"suite": suite, **layer.as_dict(), "shape": layer.describe()})
        results["rows"] += run_layer(suite, layer, cfg, results["peaks"], timer, deadline, log)
        add_speedups(results["rows"])
        results["summary"] = summary(results["rows"])
        results["extension"] = extension_state()
        results["elapsed_s"] = time.perf_counter() - start
        if on_progress:
            on_progress(results)
    results["elapsed_s"] = time.perf_counter() - start
    results["complete"] = True
    return results


# --------------------------------------------------------------------------- speedups


HEADLINE_ORDER = ("auto", "triton", "cuda", "vendor", "cpu", "reference")


def _times(rows: list[dict]) -> dict:
    """{(suite, layer, provider, pass): median_ms} of the rows that ran."""
    return {(r["suite"], r["layer"], r["provider"], r["pass"]): r["median_ms"] for r in rows if r["status"] == "ok"}


def add_speedups(rows: list[dict]) -> None:
    """speedup_vs_eager / speedup_vs_compile = baseline time / this time (> 1: faster)."""
    t = _times(rows)
    for r in rows:
        if r["status"] != "ok":
            continue
        for base in prov.BASELINES:
            tb = t.get((r["suite"], r["layer"], base, r["pass"]))
            r[f"speedup_vs_{base}"] = tb / r["median_ms"] if tb else None


def _geomean(xs: list[float]) -> Optional[float]:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def provider_summary(rows: list[dict], provider: str) -> dict:
    t = _times(rows)
    layers = sorted({(r["suite"], r["layer"]) for r in rows})
    out = {}
    for base in prov.BASELINES:
        for pass_ in PASSES:
            ratios = [t[(s, la, base, pass_)] / t[(s, la, provider, pass_)] for s, la in layers
                      if (s, la, base, pass_) in t and (s, la, provider, pass_) in t]
            out[f"geomean_{pass_}_vs_{base}"] = _geomean(ratios)
            out[f"min_{pass_}_vs_{base}"] = min(ratios) if ratios else None
            out[f"layers_{pass_}_vs_{base}"] = len(ratios)
    return out


def summary(rows: list[dict]) -> dict:
    """Speedups of the headline fastconv provider (the first of auto, triton, cuda, cpu,
    reference that ran any layer) and of every provider, over the layers both ran."""
    ran = {r["provider"] for r in rows if r["status"] == "ok"}
    by_provider = {p: provider_summary(rows, p) for p in prov.FASTCONV if p in ran}
    headline = next((p for p in HEADLINE_ORDER if p in ran), None)
    keys = ("geomean_fwd_vs_eager", "geomean_bwd_vs_eager", "geomean_fwdbwd_vs_eager", "min_fwd_vs_eager",
            "min_fwdbwd_vs_eager", "geomean_fwd_vs_compile", "geomean_fwdbwd_vs_compile",
            "layers_fwd_vs_eager", "layers_fwdbwd_vs_eager")
    head = by_provider.get(headline, {})
    status: dict[str, int] = {}
    for r in rows:
        status[r["status"]] = status.get(r["status"], 0) + 1
    return {"provider": headline, **{k: head.get(k) for k in keys}, "rows": status, "by_provider": by_provider}


def default_out_dir(device: torch.device) -> str:
    """bench/results/<device slug>/, and on a CPU <ISA of the C++ kernels>/ below it: one folder
    per CPU model and per ISA variant measured on it (FASTCONV_CPU_ISA=avx2 on an AVX-512 host)."""
    slug = "".join(c if c.isalnum() else "-" for c in device_name(device).lower().replace("cpu: ", "cpu-"))
    while "--" in slug:
        slug = slug.replace("--", "-")
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", slug.strip("-"))
    if device.type == "cpu":
        from fastconv.info import cpu_isa

        out = os.path.join(out, cpu_isa())
    return out
