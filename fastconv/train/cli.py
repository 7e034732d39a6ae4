"""``fastconv train`` (also ``python -m fastconv.train``): the reference CNN trainer.

    fastconv train                                   # sklearn digits, fastconv layers, >= 97% val acc
    fastconv train --layers torch                    # the same model in torch.nn layers
    fastconv train --compare                         # both, side by side
    fastconv train --data mnist --data-dir ~/data/mnist --epochs 5
    fastconv train --data synthetic --image-size 64 --channels 3 --device cuda --amp bf16
    fastconv train --checkpoint-dir ckpt --max-time 60 && fastconv train --checkpoint-dir ckpt --resume
    torchrun --nproc_per_node 2 -m fastconv.train    # DDP (gloo on CPU, nccl on GPUs)

Exit status: 0 on success (a run stopped by --max-time included), 2 for a bad argument,
missing or malformed data, or a checkpoint that cannot be resumed (the message names
the flag).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from .. import backends
from . import checkpoint
from .data import NAMES as DATA_NAMES, DataError
from .loop import DEFAULT_LR, TrainConfig, train
from .models import LAYERS


def _positive_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _finite_float(s, allow_zero: bool):
    what = "a number >= 0" if allow_zero else "a positive number"
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
    if not (v >= 0 if allow_zero else v > 0) or v == float("inf"):  # NaN fails both
        raise argparse.ArgumentTypeError(f"expected {what}, got {s}")
    return v


def _positive_float(s):
    return _finite_float(s, allow_zero=False)


def _nonnegative_float(s):
    return _finite_float(s, allow_zero=True)


def _widths(s):
    try:
        v = tuple(int(p) for p in s.split(","))
    except ValueError:
        v = ()
    if len(v) != 2 or min(v) < 1:
        raise argparse.ArgumentTypeError(f"expected two positive channel counts like 32,64, got {s!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastconv train", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train the reference CNN (Conv 3x3 + ReLU + MaxPool 2, twice, then a linear "
                    "classifier) with fastconv layers or torch.nn layers.",
        epilog=__doc__.split("\n\n")[1])
    d = p.add_argument_group("data")
    d.add_argument("--data", choices=DATA_NAMES, default="digits",
                   help="digits: sklearn's bundled 8x8 digits (default); mnist: idx files; cifar10: python "
                        "pickle batches; synthetic: random class templates plus noise")
    d.add_argument("--data-dir", metavar="PATH", help="directory of the mnist / cifar10 files")
    d.add_argument("--image-size", type=_positive_int, metavar="S",
                   help="synthetic images are S x S (default 32)")
    d.add_argument("--channels", type=_positive_int, metavar="C",
                   help="synthetic images have C channels (default 3)")
    d.add_argument("--samples", type=_positive_int, metavar="N",
                   help="synthetic training images (default 8192; validation gets N/4)")
    m = p.add_argument_group("model and optimization")
    m.add_argument("--layers", choices=LAYERS, default=None, help="fastconv (default) or torch layers")
    m.add_argument("--compare", action="store_true",
                   help="train with fastconv and with torch layers (one process each) and print both")
    m.add_argument("--widths", type=_widths, default=(32, 64), metavar="W1,W2",
                   help="output channels of the two convs (default 32,64)")
    m.add_argument("--epochs", type=_positive_int, default=15, help="default 15")
    m.add_argument("--batch-size", type=_positive_int, default=32, help="per rank, default 32")
    m.add_argument("--lr", type=_positive_float, default=None,
                   help=f"peak learning rate, cosine-decayed to 0 (default {DEFAULT_LR['adam']:g} for adam, "
                        f"{DEFAULT_LR['sgd']:g} for sgd)")
    m.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="adam (default) or sgd "
                   "with momentum 0.9")
    m.add_argument("--weight-decay", type=_nonnegative_float, default=0.0, help="default 0")
    m.add_argument("--seed", type=int, default=0, help="default 0")
    m.add_argument("--steps-per-epoch", type=_positive_int, metavar="N",
                   help="at most N batches per epoch (quick runs)")
    r = p.add_argument_group("execution")
    r.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    r.add_argument("--backend", choices=backends.NAMES, default=None,
                   help="fastconv backend (default: $FASTCONV_BACKEND or auto)")
    r.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="autocast dtype")
    r.add_argument("--channels-last", action="store_true", help="NHWC model and inputs")
    r.add_argument("--compile", action="store_true", help="torch.compile the model")
    r.add_argument("--cuda-graphs", action="store_true",
                   help="run forward + backward as a CUDA graph (no host overhead per layer; one CUDA device, "
                        "no --compile, no DDP; fastconv/train/graphs.py)")
    r.add_argument("--threads", type=_positive_int, metavar="N",
                   help="CPU threads (default: 1 for images up to 16x16, where threads cost more than they "
                        "save; else PyTorch's default)")
    r.add_argument("--deterministic", action="store_true",
                   help="torch.use_deterministic_algorithms(True), no cuDNN benchmarking")
    r.add_argument("--max-time", type=_positive_float, metavar="SECONDS",
                   help="stop at the first step past this many seconds, score and save")
    c = p.add_argument_group("checkpoints and output")
    c.add_argument("--checkpoint-dir", metavar="DIR", help="write last.pt every epoch and best.pt on improvement")
    c.add_argument("--resume", nargs="?", const="auto", default=None, metavar="PATH",
                   help="continue from PATH, or (no PATH) from DIR/last.pt when it exists")
    c.add_argument("--summary", metavar="PATH", help="write the run's results as JSON")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> TrainConfig:
    """Check the arguments together; parser.error (exit 2, naming the flag) on a bad one."""
    if args.data in ("mnist", "cifar10"):
        if args.data_dir is None:
            parser.error(f"--data {args.data} needs --data-dir PATH (the directory of its files)")
        if not Path(args.data_dir).is_dir():
            parser.error(f"--data-dir {args.data_dir}: no such directory")
    elif args.data_dir is not None:
        parser.error(f"--data-dir applies to --data mnist or cifar10, not --data {args.data}")
    for flag in ("image_size", "channels", "samples"):
        if getattr(args, flag) is not None and args.data != "synthetic":
            parser.error(f"--{flag.replace('_', '-')} applies to --data synthetic only")
    if args.image_size is not None and args.image_size < 4:
        parser.error(f"--image-size must be at least 4 (two 2x2 pools), got {args.image_size}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", args.device):
        parser.error(f"--device must be auto, cpu, cuda or cuda:N, got {args.device!r}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: CUDA is not available here")
        if ":" in args.device and int(args.device.split(":")[1]) >= torch.cuda.device_count():
            parser.error(f"--device {args.device}: there are {torch.cuda.device_count()} CUDA device(s)")
    if args.backend not in (None, "auto"):
        why = backends.available().get(args.backend)
        if why:
            parser.error(f"--backend {args.backend}: not available here ({why})")
    if args.cuda_graphs:
        import torch

        if args.device == "cpu" or not torch.cuda.is_available():
            parser.error("--cuda-graphs: CUDA graphs need a CUDA device")
        if args.compile:
            parser.error("--cuda-graphs and --compile: choose one (torch.compile(mode='reduce-overhead') "
                         "graphs on its own)")
    if args.resume == "auto" and args.checkpoint_dir is None:
        parser.error("--resume without a PATH needs --checkpoint-dir DIR")
    if args.resume not in (None, "auto") and not Path(args.resume).is_file():
        parser.error(f"--resume {args.resume}: no such file")
    if args.compare:
        if args.layers is not None:
            parser.error("--compare trains both layer kinds; drop --layers")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            parser.error("--compare runs one process per layer kind; launch it without torchrun")
        if args.resume not in (None, "auto"):
            parser.error("--compare resumes each kind from DIR/<layers>/last.pt; use --resume without a PATH")
    return TrainConfig(
        data=args.data, data_dir=args.data_dir, image_size=args.image_size or 32, channels=args.channels or 3,
        samples=args.samples or 8192, layers=args.layers or "fastconv", widths=args.widths, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer, weight_decay=args.weight_decay,
        seed=args.seed, device=args.device, backend=args.backend, amp=args.amp,
        channels_last=args.channels_last, compile=args.compile, cuda_graphs=args.cuda_graphs, threads=args.threads, max_time=args.max_time,
        steps_per_epoch=args.steps_per_epoch, checkpoint_dir=args.checkpoint_dir, resume=args.resume,
        deterministic=args.deterministic, quiet=args.quiet)


def write_json(obj, path: str) -> None:
    """Atomically, like the checkpoints."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = config_from_args(args, parser)
    if args.compare:
        return _compare(argv, cfg, args.summary)
    try:
        result = train(cfg)
    except DataError as e:
        flag = f"--data {cfg.data}" + (f" --data-dir {cfg.data_dir}" if cfg.data_dir else "")
        parser.error(f"{flag}: {e}")
    except checkpoint.CheckpointError as e:
        parser.error(f"--resume: {e}")
    if int(os.environ.get("RANK", "0")) == 0:
        if args.summary:
            write_json(result.summary(cfg), args.summary)
        print(f"done: val acc {result.val_accuracy:.2%} (best {result.best_val_accuracy:.2%}), "
              f"{result.epochs_completed} epochs, {result.seconds:.1f} s, {result.images_per_second:,.0f} img/s"
              + (" [stopped early]" if result.stopped_early else ""))
    return 0


def _without(argv: list[str], flag: str, takes_value: bool) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = takes_value
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def _compare(argv: list[str], cfg: TrainConfig, summary: str | None) -> int:
    """One child process per layer kind, so that each one's peak memory is its own."""
    base = _without(_without(_without(argv, "--compare", False), "--summary", True), "--checkpoint-dir", True)
    # the children import this fastconv, installed or not
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for layers in LAYERS:
            child = base + ["--layers", layers, "--summary", str(Path(tmp) / f"{layers}.json")]
            if cfg.checkpoint_dir:
                child += ["--checkpoint-dir", str(Path(cfg.checkpoint_dir) / layers)]
            print(f"--- {layers} layers", flush=True)
            rc = subprocess.call([sys.executable, "-m", "fastconv.train", *child], env=env)
            if rc != 0:
                print(f"fastconv train --compare: the {layers} run failed (exit status {rc})", file=sys.stderr)
                return rc
            results[layers] = json.loads((Path(tmp) / f"{layers}.json").read_text())
    print(format_comparison(results))
    if summary:
        write_json(results, summary)
    return 0


def format_comparison(results: dict) -> str:
    rows = [
        ("val accuracy", lambda r: f"{r['val_accuracy']:.2%}"),
        ("images/s", lambda r: f"{r['images_per_second']:,.0f}"),
        ("peak memory", lambda r: f"{r['peak_memory_bytes'] / 2**20:,.1f} MiB"),
        ("seconds", lambda r: f"{r['seconds']:.1f}"),
        ("epochs", lambda r: str(r["epochs_completed"])),
        ("backend", lambda r: r["backend"]),
    ]
    names = list(results)
    kind = next(iter(results.values()))["peak_memory_kind"]
    lines = [f"{'':<14}" + "".join(f"{n:>16}" for n in names)]
    for label, f in rows:
        lines.append(f"{label:<14}" + "".join(f"{f(results[n]):>16}" for n in names))
    lines.append(f"(peak memory: {'CUDA max allocated' if kind == 'cuda_max_allocated' else 'process peak RSS'})")
    return "\n".join(lines)
