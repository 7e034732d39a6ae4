"""Whole-model benchmark: eager vs ``fastconv.convert()`` vs ``torch.compile`` on real models.

    bench/bench_models.py                                  # every model, CPU or the GPU
    bench/bench_models.py --models resnet18,reference-cnn --variants eager,convert --reps 3

Models: torchvision's vgg11, vgg11_bn, resnet18 and alexnet (the optional ``bench`` extra;
skipped with the reason when torchvision is missing), an airbench94-style network (its
BatchNorm subclass, whitening conv and conv -> pool -> BatchNorm -> GELU blocks) and
fastconv's reference CNN, each at a small batch on the CPU. Passes:

* ``train``: one training step, forward + cross-entropy + backward (``--optimizer`` adds an SGD
  step), in train mode;
* ``infer``: one forward under ``torch.no_grad()`` in eval mode (convert() folds BatchNorm there).

Per model x variant x pass: the median of ``--reps`` timed runs, the variants interleaved in
alternating order, after
``--warmup`` (compilation and auto's first-call measurement happen there), images/s, the activation memory saved for
backward (``saved_tensors_hooks``, parameters excluded, each storage counted once) and, on a GPU,
the peak memory of the step. Writes results.json and results.md (and speedup.png with
matplotlib) to ``bench/results/<device>/models/`` or ``--out``.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

if __name__ == "__main__" and __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # run as a script: import from the checkout

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import fastconv  # noqa: E402
from bench import harness, malloc, report  # noqa: E402
from bench.timing import sync  # noqa: E402

VARIANTS = ("eager", "convert", "compile")
PASSES = ("train", "infer")


# --------------------------------------------------------------------------- models


class _BatchNorm(nn.BatchNorm2d):
    """airbench's BatchNorm: a torch.nn subclass with its own __init__ and torch's forward."""

    def __init__(self, n, momentum=0.6, eps=1e-12):
        super().__init__(n, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad = False  # airbench trains only the bias


class _ConvGroup(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding="same", bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _BatchNorm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding="same", bias=False)
        self.norm2 = _BatchNorm(c_out)
        self.act = nn.GELU()

    def forward(self, x):
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


def airbench94(widths=(64, 256, 256)) -> nn.Module:
    """The airbench94 network's structure (CIFAR-10, 32x32): a 2x2 whitening conv, three
    conv -> pool -> BatchNorm -> GELU -> conv -> BatchNorm -> GELU groups, a 3x3 pool, a linear head."""
    return nn.Sequential(nn.Conv2d(3, 24, 2, padding=0, bias=True), nn.GELU(), _ConvGroup(24, widths[0]),
                         _ConvGroup(widths[0], widths[1]), _ConvGroup(widths[1], widths[2]), nn.MaxPool2d(3),
                         nn.Flatten(), nn.Linear(widths[2], 10, bias=False))


def _torchvision(name):
    def build():
        import torchvision

        return getattr(torchvision.models, name)(num_classes=10)
    return build


def _reference_cnn():
    from fastconv.train.models import ReferenceCNN

    return ReferenceCNN(3, 10, 32, layers="torch")


MODELS = {  # name: (builder, (C, H, W), batch on the CPU)
    "vgg11": (_torchvision("vgg11"), (3, 64, 64), 8),
    "vgg11_bn": (_torchvision("vgg11_bn"), (3, 64, 64), 8),
    "resnet18": (_torchvision("resnet18"), (3, 64, 64), 8),
    "alexnet": (_torchvision("alexnet"), (3, 127, 127), 8),
    "airbench94": (airbench94, (3, 32, 32), 32),
    "reference-cnn": (_reference_cnn, (3, 32, 32), 64),
}


# --------------------------------------------------------------------------- measuring


def saved_activation_bytes(fn, params) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn()`` runs: each storage once,
    the model's parameters excluded."""
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            ptr = t.untyped_storage().data_ptr()
            if ptr not in skip:
                seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def _variant(model: nn.Module, variant: str, mode: str) -> nn.Module:
    m = copy.deepcopy(model)
    m.train(mode == "train")
    if variant == "convert":
        return fastconv.convert(m)
    if variant == "compile":
        return torch.compile(m)
    return m


def _prepare(model: nn.Module, shape, batch: int, variant: str, pass_: str, args, device):
    """(the variant's module, one step of the pass, the input)."""
    m = _variant(model, variant, pass_).to(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *shape), generator=gen).to(device)
    target = torch.randint(0, 10, (batch,), generator=gen).to(device)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3) if args.optimizer and pass_ == "train" else None

    def step():
        if pass_ == "infer":
            with torch.no_grad():
                return m(x)
        loss = F.cross_entropy(m(x), target)
        loss.backward()
        if opt is not None:
            opt.step()
        m.zero_grad(set_to_none=True)
        return loss

    return m, step, x


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"[:300]


def run_pass(name: str, model: nn.Module, shape, batch: int, pass_: str, args, device) -> list[dict]:
    """Every variant of one model and pass, timed interleaved (A B, B A, A B, ...) so that a drift
    of the machine's speed, and the cost of running right after another variant, fall on all of
    them alike; the median of each."""
    rows, live = {}, {}
    for v in args.variants:
        rows[v] = {"model": name, "variant": v, "pass": pass_, "batch": batch, "shape": list(shape)}
        try:
            m, step, x = _prepare(model, shape, batch, v, pass_, args, device)
            for _ in range(args.warmup):
                step()
            sync(device)
            live[v] = (m, step, x, [])
        except Exception as e:  # noqa: BLE001  (a failing variant is a result, not a crash)
            rows[v].update(status="error", note=_error(e))
    for rep in range(args.reps):
        # A B, then B A, ...: whichever runs second in a round pays for the first one's freed memory
        # (measured here: 10-30% on a 700 ms VGG step), so each variant runs second half the time
        order = list(live.items()) if rep % 2 == 0 else list(reversed(live.items()))
        for v, (m, step, x, times) in order:
            if v not in live:
                continue
            try:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                    base = torch.cuda.memory_allocated(device)
                t0 = time.perf_counter()
                step()
                sync(device)
                times.append(time.perf_counter() - t0)
                if device.type == "cuda":
                    rows[v]["peak_bytes"] = max(rows[v].get("peak_bytes", 0),
                                                torch.cuda.max_memory_allocated(device) - base)
            except Exception as e:  # noqa: BLE001
                rows[v].update(status="error", note=_error(e))
                del live[v]
    for v, (m, step, x, times) in live.items():
        ms = 1e3 * statistics.median(times)
        rows[v].update(status="ok", median_ms=ms, images_per_s=batch / (ms * 1e-3))
        if pass_ == "train":
            rows[v]["saved_bytes"] = saved_activation_bytes(lambda: m(x), list(m.parameters()))
        if v == "convert":
            rows[v]["fused"] = sum(1 for r in m.fastconv_replacements if r.absorbed)
            rows[v]["left"] = len(m.fastconv_left)
    return list(rows.values())


def markdown(res: dict) -> str:
    lines = [f"# fastconv model benchmark: {res['device']}", "",
             f"{res['date']}, torch {res['versions']['torch']}, {res['config']['threads']} threads"
             + (f", malloc {res['config']['malloc']}" if res["config"].get("malloc", "default") != "default" else "")
             + ", median of "
             f"{res['config']['reps']} after {res['config']['warmup']} warm-up runs. Cells: ms (speedup vs eager); "
             "train rows add the activations saved for backward.", "",
             "| model | pass | " + " | ".join(res["config"]["variants"]) + " |",
             "|---|---|" + "---|" * len(res["config"]["variants"])]
    by = {(r["model"], r["pass"], r["variant"]): r for r in res["rows"]}
    for name in dict.fromkeys(r["model"] for r in res["rows"]):
        for pass_ in res["config"]["passes"]:
            eager = by.get((name, pass_, "eager"), {})
            cells = []
            for v in res["config"]["variants"]:
                r = by.get((name, pass_, v))
                if r is None or r["status"] != "ok":
                    cells.append("–" if r is None else r["status"] + ": " + r.get("note", "")[:60])
                    continue
                cell = f"{r['median_ms']:.1f}"
                if v != "eager" and eager.get("status") == "ok":
                    cell += f" (x{eager['median_ms'] / r['median_ms']:.2f})"
                if "saved_bytes" in r:
                    cell += f", {r['saved_bytes'] / 2**20:.1f} MiB saved"
                if "fused" in r:
                    cell += f", {r['fused']} fused"
                cells.append(cell)
            lines.append(f"| {name} | {pass_} | " + " | ".join(cells) + " |")
    lines += ["", "A convert() row with 0 fused runs the model's own code (nothing fuses there: in train mode a "
              "BatchNorm sits between every conv and its relu) but for its max-pools, which are fastconv's "
              "(auto times them against torch's), so its ratio is mostly the noise of the machine."]
    skipped = res.get("skipped", {})
    if skipped:
        lines += [""] + [f"- {n} skipped: {why}" for n, why in skipped.items()]
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        return
    by = {(r["model"], r["pass"], r["variant"]): r for r in res["rows"] if r["status"] == "ok"}
    labels, vals = [], []
    for (name, pass_, v), r in by.items():
        e = by.get((name, pass_, "eager"))
        if v == "convert" and e:
            labels.append(f"{name} {pass_}")
            vals.append(e["median_ms"] / r["median_ms"])
    if not vals:
        return
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(vals) + 1))
    ax.barh(labels, vals)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("convert() speedup over eager")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--variants", default="eager,convert", help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--passes", default=",".join(PASSES), help=f"comma-separated, of {', '.join(PASSES)}")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, help="batch for every model (default: each model's own)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--optimizer", action="store_true", help="add an SGD step to the training step")
    ap.add_argument("--malloc", choices=malloc.POLICIES, default="default",
                    help="the C allocator's policy: glibc's default, or 'steady' (freed memory is kept; bench/malloc.py)")
    ap.add_argument("--out", type=Path, help="folder for results.json / results.md (default bench/results/<device>/models)")
    args = ap.parse_args(argv)
    for name, allowed in (("models", MODELS), ("variants", VARIANTS), ("passes", PASSES)):
        vals = [v for v in getattr(args, name).split(",") if v]
        bad = [v for v in vals if v not in allowed]
        if bad or not vals:
            ap.error(f"--{name}: unknown {', '.join(bad) or '(empty)'}; choose from {', '.join(allowed)}")
        setattr(args, name, vals)
    for name in ("reps", "warmup", "threads") + (("batch",) if args.batch is not None else ()):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            ap.error(f"--{name} must be positive, got {getattr(args, name)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA GPU here")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        malloc_policy = malloc.apply(args.malloc)
    except RuntimeError as e:
        print(f"--malloc: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows, skipped = [], {}
    for name in args.models:
        build, shape, batch = MODELS[name]
        try:
            torch.manual_seed(0)
            model = build()
        except ImportError as e:
            skipped[name] = f"{type(e).__name__}: {e} (pip install '.[bench]')"
            print(f"{name}: skipped ({skipped[name]})", flush=True)
            continue
        for pass_ in args.passes:
            for r in run_pass(name, model, shape, args.batch or batch, pass_, args, device):
                rows.append(r)
                print(f"{name:<14} {pass_:<6} {r['variant']:<8} " + (
                    f"{r['median_ms']:9.2f} ms" if r["status"] == "ok" else r["status"] + ": " + r.get("note", "")),
                    flush=True)
    res = {**harness.environment(device), "config": {
        "models": args.models, "variants": args.variants, "passes": args.passes, "reps": args.reps,
        "warmup": args.warmup, "threads": torch.get_num_threads(), "optimizer": args.optimizer,
        "malloc": malloc_policy},
        "rows": rows, "skipped": skipped}
    out = args.out or Path(harness.default_out_dir(device)) / "models"
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(res, out / "results.json")
    md = markdown(res)
    (out / "results.md").write_text(md)
    plot(res, out / "speedup.png")
    print(md)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
