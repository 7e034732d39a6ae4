"""Host overhead per call: fastconv's public ops vs the same PyTorch ops, on layers so small
that the time is the host's (Python, checks, dispatch, launches), not the kernels'.

    bench/bench_overhead.py --out DIR                # cuda if present, else cpu
    bench/bench_overhead.py --device cpu --backend cpu --out /tmp/ov
    bench/bench_overhead.py --device cpu --layout nchw --batch 8 --channels 64 --size 16 --threads 2 \
        --calls 50 --out DIR                         # the standalone ops at a real size

Providers, each timed on the same tensors:

* ``eager``      F.conv2d -> F.relu -> F.max_pool2d (the standalone ops: F.relu, F.max_pool2d)
* ``fastconv``   fastconv's public op in eager mode (the eager path of fastconv/_eager.py)
* ``custom_op``  the same call with FASTCONV_EAGER_PATH=0: through the torch.library custom op

Passes: ``fwd`` (no autograd) and ``fwdbwd`` (forward with autograd, then backward of
the sum). A timed sample runs ``--calls`` calls back to back, then synchronizes the
device; the per-call time is the best of ``--repeats`` samples (the host's cost,
with little noise from other processes). ``overhead_us`` is a provider's time minus
eager's. Writes DIR/overhead.json and DIR/overhead.md.
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
from bench import harness, report  # noqa: E402
from bench.timing import sync  # noqa: E402

PROVIDERS = ("eager", "fastconv", "custom_op")
PASSES = ("fwd", "fwdbwd")


def _calls(x, w, b):
    """op name -> (eager fn, fastconv fn), each taking (x, w, b)."""
    return {
        "conv2d+relu+pool2": (
            lambda x, w, b: F.max_pool2d(F.relu(F.conv2d(x, w, b, padding=1)), 2),
            lambda x, w, b: fastconv.conv2d(x, w, b, padding=1, activation="relu", pool=2)),
        "conv2d": (lambda x, w, b: F.conv2d(x, w, b, padding=1),
                   lambda x, w, b: fastconv.conv2d(x, w, b, padding=1)),
        "relu": (lambda x, w, b: F.relu(x), lambda x, w, b: fastconv.relu(x)),
        "max_pool2d 3x3/s2": (lambda x, w, b: F.max_pool2d(x, 3, 2, 1),
                              lambda x, w, b: fastconv.max_pool2d(x, 3, 2, 1)),
        "max_pool2d 2x2": (lambda x, w, b: F.max_pool2d(x, 2), lambda x, w, b: fastconv.max_pool2d(x, 2)),
    }


def time_call(fn, device, calls: int, repeats: int) -> float:
    """Best per-call microseconds over ``repeats`` samples of ``calls`` back-to-back calls."""
    for _ in range(max(3, calls // 10)):
        fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(device)
        best = min(best, (time.perf_counter() - t0) / calls * 1e6)
    return best


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    gen = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if args.layout == "channels_last" else torch.contiguous_format
    x = torch.randn(args.batch, args.channels, args.size, args.size, generator=gen)
    w = torch.randn(args.channels, args.channels, 3, 3, generator=gen) * 0.1
    b = torch.randn(args.channels, generator=gen)
    x = x.to(device, dtype).contiguous(memory_format=fmt)
    w, b = w.to(device, dtype), b.to(device, dtype)
    grads = [t.detach().clone().requires_grad_() for t in (x, w, b)]

    rows = []
    saved_env = os.environ.get("FASTCONV_EAGER_PATH")
    try:
        with fastconv.use_backend(args.backend, strict=True):
            for name, (eager, fc) in _calls(x, w, b).items():
                for pass_ in PASSES:
                    times = {}
                    for provider in PROVIDERS:
                        os.environ["FASTCONV_EAGER_PATH"] = "0" if provider == "custom_op" else "1"
                        f = eager if provider == "eager" else fc
                        if pass_ == "fwd":
                            def step(f=f):
                                with torch.no_grad():
                                    f(x, w, b)
                        else:
                            def step(f=f):
                                f(*grads).sum().backward()
                        times[provider] = time_call(step, device, args.calls, args.repeats)
                    for provider, us in times.items():
                        rows.append({"op": name, "pass": pass_, "provider": provider, "us_per_call": round(us, 2),
                                     "overhead_us": round(us - times["eager"], 2)})
    finally:
        if saved_env is None:
            os.environ.pop("FASTCONV_EAGER_PATH", None)
        else:
            os.environ["FASTCONV_EAGER_PATH"] = saved_env
    return {**harness.environment(device), "config": {
        "backend": args.backend, "dtype": args.dtype, "layout": args.layout, "batch": args.batch,
        "channels": args.channels, "size": args.size, "calls": args.calls, "repeats": args.repeats,
        "threads": torch.get_num_threads()}, "rows": rows}


def markdown(res: dict) -> str:
    cfg = res["config"]
    lines = [f"# fastconv host overhead per call: {res['device']}", "",
             f"{res['date']}, torch {res['versions']['torch']}, backend `{cfg['backend']}`, {cfg['dtype']}, "
             f"{cfg['layout']}, x [{cfg['batch']}, {cfg['channels']}, {cfg['size']}, {cfg['size']}], "
             f"best of {cfg['repeats']} x {cfg['calls']} calls, {cfg['threads']} threads. "
             "Cells: microseconds per call (overhead over eager).", "",
             "| op | pass | " + " | ".join(PROVIDERS) + " |", "|---|---|" + "---|" * len(PROVIDERS)]
    by = {(r["op"], r["pass"], r["provider"]): r for r in res["rows"]}
    for op in dict.fromkeys(r["op"] for r in res["rows"]):
        for pass_ in PASSES:
            cells = []
            for p in PROVIDERS:
                r = by[(op, pass_, p)]
                cells.append(f"{r['us_per_call']:.1f}" + ("" if p == "eager" else f" ({r['overhead_us']:+.1f})"))
            lines.append(f"| {op} | {pass_} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for overhead.json and overhead.md")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backend", default="auto", help="fastconv backend (strict: no silent fallback)")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--layout", choices=("channels_last", "nchw"), default="channels_last")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--size", type=int, default=8)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    args = ap.parse_args(argv)
    for name in ("batch", "channels", "calls", "repeats", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be positive, got {getattr(args, name)}")
    if args.size < 4:
        ap.error(f"--size must be at least 4 (a 3x3 conv, then a 2x2 pool), got {args.size}")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA GPU here")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        res = run(args)
    except fastconv.BackendUnsupportedError as e:  # e.g. FASTCONV_EXT=off: no fastconv kernel to time
        print(f"bench_overhead: nothing to measure: {e}")
        return 0
    report.write_json(res, args.out / "overhead.json")
    md = markdown(res)
    (args.out / "overhead.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
