"""Training-step benchmark of the reference CNN: fastconv layers vs torch.nn eager vs torch.compile.

    bench/bench_train.py --out DIR/train.json                 # GPU: batch 512, 32x32x3, autocast bf16
    bench/bench_train.py --device cpu --batch 16 --steps 5 --precision fp32 --out /tmp/train.json

One step = forward under autocast, cross-entropy, backward, SGD (momentum 0.9)
update, on random images rotated over 4 batches. Step time is the median of
``--steps`` timed steps after ``--warmup`` untimed ones (compilation happens
there), each timed on the device's timeline with nothing ahead of it in the
queue, so host overhead (Python, dispatch) counts, as it does for a user;
``host_ms`` is how long the step's Python takes to return (near step_ms: the
step is host-bound). ``--profile`` adds the top ops and kernels of 3 profiled
steps per variant (torch.profiler). Peak
memory is the most allocated during one step beyond the model, optimizer
state and data. The fastconv model runs ``--backend`` (default ``auto``); a
variant whose fastconv ops ran on ``reference`` (a fallback, or auto finding
no native backend) is reported as skipped, never timed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__" and __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # run as a script: import from the checkout

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import fastconv  # noqa: E402
from bench import harness, profiling, providers, report  # noqa: E402
from bench.timing import summarize, sync  # noqa: E402

try:
    from fastconv.train.models import ReferenceCNN
    MODEL_MISSING = None
except ImportError as e:  # the reference CNN lands in fastconv.train separately
    ReferenceCNN = None
    MODEL_MISSING = f"fastconv.train.models.ReferenceCNN is not importable ({type(e).__name__}: {e})"

VARIANTS = ("fastconv", "torch-eager", "torch-compile")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    ap.add_argument("--device", choices=("cuda", "cpu"),
                    default=os.environ.get("FASTCONV_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available()
                                                                        else "cpu"))
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--widths", default="32,64", help="channels of the conv stages")
    ap.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                    help="bf16 = autocast bf16 with fp32 weights (default on cuda); fp32 (default on cpu)")
    ap.add_argument("--layout", choices=("channels_last", "nchw"), default=None,
                    help="default: channels_last on cuda, nchw on cpu")
    ap.add_argument("--backend", default="auto", help="fastconv backend of the fastconv model")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated from {', '.join(VARIANTS)}")
    ap.add_argument("--compile-mode", default=providers.COMPILE_MODE)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--cuda-graphs", action="store_true",
                    help="also time each variant's whole step (forward, backward, optimizer) captured in a "
                         "CUDA graph and replayed ('<variant> +graphs', fastconv/train/graphs.py); torch-compile "
                         "graphs on its own (--compile-mode reduce-overhead)")
    ap.add_argument("--profile", action="store_true",
                    help="also profile 3 steps of each variant (torch.profiler): the top ops and kernels")
    args = ap.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        ap.error(f"--variants: unknown {', '.join(bad)}; variants are {', '.join(VARIANTS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible (use --device cpu)")
    if args.cuda_graphs and args.device != "cuda":
        ap.error("--cuda-graphs: CUDA graphs need --device cuda")
    return args


def make_model(variant: str, args, device) -> torch.nn.Module:
    widths = tuple(int(w) for w in args.widths.split(","))
    layers = "fastconv" if variant == "fastconv" else "torch"
    torch.manual_seed(0)
    model = ReferenceCNN(in_channels=3, num_classes=10, image_size=args.image_size, layers=layers, widths=widths)
    model = model.to(device)
    if args.layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    return model


def time_steps(step, device, warmup: int, steps: int) -> tuple[list[float], list[float]]:
    """(step ms, host ms) per timed step. Host ms is how long step() takes to return: the
    Python, dispatch and launch work. A step whose host ms is close to its step ms is
    host-bound (the GPU waits for the launches)."""
    for i in range(warmup):
        step(i)
    sync(device)
    samples, host = [], []
    for i in range(steps):
        if device.type == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)  # nothing queued ahead: host overhead shows on the timeline
            s.record()
            t0 = time.perf_counter()
            step(i)
            host.append((time.perf_counter() - t0) * 1e3)
            e.record()
            e.synchronize()
            samples.append(s.elapsed_time(e))
        else:
            t0 = time.perf_counter()
            step(i)
            samples.append((time.perf_counter() - t0) * 1e3)
            host.append(samples[-1])
    return samples, host


def _peak_reset(device) -> int:
    """Start a peak-memory window on a CUDA device: the bytes allocated now (0 elsewhere)."""
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def _peak_mb(device, base: int) -> float | None:
    """MiB allocated at the peak since ``_peak_reset`` above its ``base`` (None off CUDA)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def run_variant(variant: str, args, device, data, graphed: bool = False) -> dict:
    amp = args.precision == "bf16"
    model = make_model(variant, args, device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    fwd = torch.compile(model, mode=args.compile_mode) if variant == "torch-compile" else model

    def body(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(fwd(x), y)
        loss.backward()
        opt.step()
        return loss

    def step(i):
        x, y = data[i % len(data)]
        opt.zero_grad(set_to_none=True)
        body(x, y)

    if graphed:
        from fastconv.train.graphs import capture_step

        replay = []

        def step(i):  # noqa: F811  (the graphed step: captured on the first call, under its backend)
            if not replay:
                replay.append(capture_step(body, *data[0], opt))
            replay[0](*data[i % len(data)])

    out = {"name": variant + (" +graphs" if graphed else ""), "status": "ok", "note": "", "cuda_graphs": graphed}
    base = _peak_reset(device)
    t0 = time.perf_counter()
    if variant == "fastconv":
        strict = args.backend != "auto"
        with fastconv.use_backend(args.backend, strict=strict), providers.record_backends() as used:
            step(0)
            sync(device)
        reason = providers.fallback_reason(args.backend, used)
        if reason:
            return {**out, "status": "skipped", "note": reason}
        out["backends"] = {op: sorted(names) for op, names in sorted(used.items())}
    else:
        step(0)
        sync(device)
    out["first_step_s"] = time.perf_counter() - t0
    # a graphed step allocates at capture (the graph's private pool then holds its activations), so
    # its replays allocate nothing: its peak is the capturing call's
    first_peak = _peak_mb(device, base)
    scope = fastconv.use_backend(args.backend, strict=args.backend != "auto") if variant == "fastconv" \
        else providers.scope("eager")
    with scope:
        samples, host = time_steps(step, device, args.warmup, args.steps)
        if args.profile:
            out["profile"] = profiling.top_ops(step, device, calls=3)
        if graphed:
            out["peak_mem_mb"] = first_peak
            out["note"] = "peak of the capturing call"
        else:
            base = _peak_reset(device)
            step(0)
            out["peak_mem_mb"] = _peak_mb(device, base)
    t = summarize(samples)
    out.update(step_ms=t.median_ms, step_ms_p20=t.p20_ms, step_ms_p80=t.p80_ms, steps=t.n,
               host_ms=summarize(host).median_ms, images_per_s=args.batch / (t.median_ms * 1e-3))
    if variant == "torch-compile":
        out["note"] = f"mode {args.compile_mode}"
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    args.layout = args.layout or ("channels_last" if device.type == "cuda" else "nchw")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    res = {**harness.environment(device), "status": "ok", "note": "", "variants": [],
           "config": {"model": "ReferenceCNN", "widths": args.widths, "batch": args.batch,
                      "image_size": args.image_size, "in_channels": 3, "num_classes": 10,
                      "precision": "autocast bf16" if args.precision == "bf16" else "fp32",
                      "layout": args.layout, "optimizer": "SGD momentum 0.9", "backend": args.backend,
                      "compile_mode": args.compile_mode, "warmup": args.warmup, "steps": args.steps,
                      "threads": torch.get_num_threads()}}
    if ReferenceCNN is None:
        res.update(status="unavailable", note=MODEL_MISSING)
        report.write_json(res, args.out)
        print(f"train step: not measured: {MODEL_MISSING}")
        return 0
    gen = torch.Generator(device=device).manual_seed(0)
    fmt = torch.channels_last if args.layout == "channels_last" else torch.contiguous_format
    data = [(torch.randn(args.batch, 3, args.image_size, args.image_size, device=device, generator=gen)
             .contiguous(memory_format=fmt),
             torch.randint(0, 10, (args.batch,), device=device, generator=gen)) for _ in range(4)]
    # with --cuda-graphs, each variant but torch-compile (which graphs on its own with
    # --compile-mode reduce-overhead) runs eager and then captured: "<variant> +graphs"
    runs = [(v, False) for v in args.variants]
    if args.cuda_graphs:
        runs += [(v, True) for v in args.variants if v != "torch-compile"]
    for variant, graphed in runs:
        try:
            v = run_variant(variant, args, device, data, graphed)
        except Exception as e:  # noqa: BLE001  (a failing variant is a result)
            v = {"name": variant + (" +graphs" if graphed else ""), "status": "error",
                 "note": f"{type(e).__name__}: {str(e).strip()[:300]}"}
        res["variants"].append(v)
        report.write_json(res, args.out)
        if v["status"] == "ok":
            mem = "" if v["peak_mem_mb"] is None else f", peak {v['peak_mem_mb']:.0f} MB"
            print(f"train {v['name']:<14} {v['step_ms']:8.2f} ms/step [{v['step_ms_p20']:.2f}, "
                  f"{v['step_ms_p80']:.2f}], host {v['host_ms']:.2f} ms  {v['images_per_s']:9.0f} images/s{mem}",
                  flush=True)
            if "profile" in v:
                print("\n".join(profiling.lines(v["profile"])), flush=True)
        else:
            print(f"train {v['name']:<14} {v['status']}: {v['note']}", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ok = {v["name"]: v for v in res["variants"] if v["status"] == "ok"}
    if "fastconv" in ok:
        for base in ("torch-eager", "torch-compile"):
            if base in ok:
                res.setdefault("summary", {})[f"fastconv_vs_{base.replace('-', '_')}"] = (
                    ok[base]["step_ms"] / ok["fastconv"]["step_ms"])
    if "fastconv +graphs" in ok and "torch-eager +graphs" in ok:
        res.setdefault("summary", {})["fastconv_vs_torch_eager_graphed"] = (
            ok["torch-eager +graphs"]["step_ms"] / ok["fastconv +graphs"]["step_ms"])
    report.write_json(res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
