"""The training loop of ``fastconv train``: :func:`train` runs one :class:`TrainConfig`.

Per epoch: each rank walks its DistributedSampler shard (seeded by seed + epoch, so the
order is a function of the epoch alone) in batches, with Adam or SGD (momentum 0.9)
under a per-step cosine learning-rate decay from ``lr`` to 0; then the validation set
is scored, rank 0 logs loss, accuracy and images/s and writes ``last.pt`` (and
``best.pt`` when the validation accuracy improves).

Stopping: ``max_time`` (seconds since :func:`train` began) or SIGINT / SIGTERM stop
the run at the next step boundary, on every rank at the same step; the model is then
scored and a checkpoint saved with the position inside the epoch. Resuming restores
model, optimizer, grad scaler, RNG states, best accuracy, epoch, step and the epoch's
running sums, and continues with the next batch of the same epoch: an interrupted and
resumed run takes the same steps as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import math
import random
import resource
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DistributedSampler

import fastconv

from . import checkpoint, data as datasets, distributed
from .distributed import World
from .models import ReferenceCNN

DEFAULT_LR = {"adam": 3e-3, "sgd": 0.05}
CHECKPOINT_FORMAT = 1


@dataclass
class TrainConfig:
    """Every knob of a run (the command line maps onto these one to one)."""

    data: str = "digits"                 # digits | mnist | cifar10 | synthetic
    data_dir: Optional[str] = None       # mnist / cifar10 files
    image_size: int = 32                 # synthetic only
    channels: int = 3                    # synthetic only
    samples: int = 8192                  # synthetic training images
    layers: str = "fastconv"             # fastconv | torch
    widths: tuple = (32, 64)             # conv1, conv2 output channels
    epochs: int = 15
    batch_size: int = 32                 # per rank
    lr: Optional[float] = None           # None: DEFAULT_LR[optimizer]
    optimizer: str = "adam"              # adam | sgd (momentum 0.9)
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"                 # auto | cpu | cuda | cuda:N
    backend: Optional[str] = None        # fastconv backend; None keeps FASTCONV_BACKEND / auto
    amp: str = "none"                    # none | bf16 | fp16
    channels_last: bool = False
    compile: bool = False                # torch.compile the model
    threads: Optional[int] = None        # CPU threads; None: 1 for images up to 16x16, else torch's default
    max_time: Optional[float] = None     # seconds; stop cleanly past it
    steps_per_epoch: Optional[int] = None  # cap on batches per epoch (smoke runs)
    checkpoint_dir: Optional[str] = None
    resume: Optional[str] = None         # a checkpoint path, or "auto": last.pt in checkpoint_dir if any
    deterministic: bool = False
    quiet: bool = False                  # no progress bars


@dataclass
class TrainResult:
    val_accuracy: float
    best_val_accuracy: float
    seconds: float
    images_per_second: float
    epochs_completed: int
    steps: int                          # optimizer steps taken by this run
    stopped_early: bool
    backend: str
    device: str
    peak_memory_bytes: int
    peak_memory_kind: str
    world_size: int
    train_loss: Optional[float]
    model: nn.Module = field(repr=False)

    def summary(self, config: TrainConfig) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "model"}
        d.update(layers=config.layers, data=config.data, amp=config.amp, compile=config.compile,
                 channels_last=config.channels_last, fastconv=fastconv.__version__, torch=torch.__version__)
        return d


# --------------------------------------------------------------------------- set-up


def pick_device(name: str, world: World) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", world.local_rank if world.distributed else torch.cuda.current_device())
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return device


def serving_backend(cfg: TrainConfig, device: torch.device) -> str:
    """The backend that runs the model's convs: 'torch' for torch layers, else the fastconv
    backend that the dispatcher picks for the first conv layer's forward."""
    if cfg.layers == "torch":
        return "torch"
    from fastconv import _args, backends

    x = torch.empty(1, 1, 8, 8, device=device)
    w = torch.empty(1, 1, 3, 3, device=device)
    p = _args.conv(x, w, None, 1, 1, 1, 1, "relu", 2)
    return backends.select("conv2d_fwd", x, w, None, p).NAME


def _optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.optimizer]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer must be adam or sgd, got {cfg.optimizer!r}")


def _amp_dtype(cfg: TrainConfig):
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]


def _peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "cpu_max_rss"


@contextlib.contextmanager
def _stop_on_signals(flag: threading.Event, say: Callable[[str], None]):
    """SIGINT / SIGTERM set ``flag`` (stop after this step and save); a second SIGINT aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if flag.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.set()
        say(f"{signal.Signals(signum).name}: stopping after this step and saving (Ctrl-C again to abort)")

    saved = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _cpu_threads(cfg: TrainConfig, ds: datasets.ImageData, device: torch.device):
    """Convs on images of a few dozen pixels are too small to split across threads: starting
    the threads costs more than the work (and far more on a busy machine)."""
    saved = torch.get_num_threads()
    n = cfg.threads or (1 if device.type == "cpu" and ds.image_size <= 16 else saved)
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(saved)


@contextlib.contextmanager
def _determinism(on: bool):
    if not on:
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[1], saved[2]


# --------------------------------------------------------------------------- checkpoints

# the settings a checkpoint must agree with to be resumed: (config field, flag)
_MUST_MATCH = (("data", "--data"), ("optimizer", "--optimizer"), ("widths", "--widths"))


def _identity(cfg: TrainConfig, ds: datasets.ImageData) -> dict:
    return {"data": cfg.data, "optimizer": cfg.optimizer, "widths": list(cfg.widths),
            "channels": ds.channels, "image_size": ds.image_size, "num_classes": ds.num_classes}


def _resume_path(cfg: TrainConfig) -> Optional[Path]:
    if cfg.resume is None:
        return None
    if cfg.resume != "auto":
        return Path(cfg.resume)
    if cfg.checkpoint_dir is None:
        raise checkpoint.CheckpointError("--resume without a path needs --checkpoint-dir")
    path = Path(cfg.checkpoint_dir) / checkpoint.LAST
    return path if path.is_file() else None


def _check_fits(ck: dict, cfg: TrainConfig, ds: datasets.ImageData, path: Path) -> None:
    have, want = ck.get("identity", {}), _identity(cfg, ds)
    for key, flag in _MUST_MATCH:
        if key in have and have[key] != want[key]:
            raise checkpoint.CheckpointError(
                f"{path} was trained with {flag} {_fmt(have[key])}, this run has {flag} {_fmt(want[key])}")
    for key in ("channels", "image_size", "num_classes"):
        if key in have and have[key] != want[key]:
            raise checkpoint.CheckpointError(f"{path} holds a model for {key}={have[key]}, the data has "
                                             f"{key}={want[key]}")


def _fmt(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


# --------------------------------------------------------------------------- the run


@dataclass
class _Progress:
    """Where the run is, and the running sums of the epoch in progress (summed over ranks)."""

    epoch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    best: float = -1.0
    val_accuracy: Optional[float] = None


def train(cfg: TrainConfig, say: Callable[[str], None] = print) -> TrainResult:
    """Run ``cfg`` (single process, or one rank of a torchrun launch) and return its result.

    ``say`` receives the log lines (rank 0 only). Raises ``data.DataError`` for missing or
    malformed data and ``checkpoint.CheckpointError`` for a checkpoint that cannot be resumed.
    """
    t0 = time.perf_counter()
    world = distributed.from_env()
    device = pick_device(cfg.device, world)
    distributed.init(world, device)
    stop = threading.Event()
    log = say if world.main else (lambda _msg: None)
    try:
        backend = fastconv.use_backend(cfg.backend) if cfg.backend else contextlib.nullcontext()
        with backend, _determinism(cfg.deterministic), _stop_on_signals(stop, log):
            random.seed(cfg.seed)
            torch.manual_seed(cfg.seed)
            ds = datasets.load(cfg.data, cfg.data_dir, cfg.image_size, cfg.channels, cfg.samples, cfg.seed)
            with _cpu_threads(cfg, ds, device):
                return _Run(cfg, world, device, ds, log).fit(t0, stop)
    finally:
        distributed.shutdown(world)


class _Run:
    """One training run: the model, its optimizer and where the run is (``self.pr``)."""

    def __init__(self, cfg: TrainConfig, world: World, device: torch.device, ds: datasets.ImageData, log):
        self.cfg, self.world, self.device, self.ds, self.log = cfg, world, device, ds, log
        self.fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model = ReferenceCNN(ds.channels, ds.num_classes, ds.image_size, cfg.layers, cfg.widths)
        self.model.to(device=device, memory_format=self.fmt)
        self.opt = _optimizer(cfg, self.model)
        self.base_lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.optimizer]
        self.amp = _amp_dtype(cfg)
        self.scaler = torch.amp.GradScaler(device.type) if self.amp is torch.float16 else None
        # how an epoch is cut into steps: a checkpoint taken inside an epoch resumes at its
        # step only when this is unchanged
        self.ordering = {"batch_size": cfg.batch_size, "world_size": world.size,
                         "steps_per_epoch": cfg.steps_per_epoch}
        self.pr = _Progress()
        self.resume()
        self.net: nn.Module = self.model
        if world.distributed:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.compile:
            self.net = torch.compile(self.net)
        self.sampler = DistributedSampler(range(len(ds.train_y)), num_replicas=world.size, rank=world.rank,
                                          shuffle=True, seed=cfg.seed)
        self.batches_per_epoch = math.ceil(len(self.sampler) / cfg.batch_size)
        if cfg.steps_per_epoch:
            self.batches_per_epoch = min(self.batches_per_epoch, cfg.steps_per_epoch)

    # ----------------------------------------------------------------- checkpoints

    def resume(self) -> None:
        cfg, pr = self.cfg, self.pr
        path = _resume_path(cfg)
        if path is None:
            if cfg.resume == "auto":
                self.log(f"no checkpoint in {cfg.checkpoint_dir}; starting from scratch")
            return
        ck = checkpoint.load(path)
        _check_fits(ck, cfg, self.ds, path)
        try:
            self.model.load_state_dict(ck["model"])
            self.opt.load_state_dict(ck["optimizer"])
            if self.scaler is not None and ck.get("scaler"):
                self.scaler.load_state_dict(ck["scaler"])
            checkpoint.set_rng_state(ck["rng"])
            pr = self.pr = _Progress(**ck["progress"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise checkpoint.CheckpointError(f"{path} does not fit this run ({type(e).__name__}: {e})") from None
        if pr.step and ck.get("ordering") != self.ordering:
            self.log(f"resume: batch size, world size or steps per epoch changed; epoch {pr.epoch + 1} restarts")
            pr.step, pr.loss_sum, pr.correct, pr.seen = 0, 0.0, 0, 0
        if not self.world.main:  # the running sums are global and kept by rank 0
            pr.loss_sum, pr.correct, pr.seen = 0.0, 0, 0
        self.log(f"resumed from {path}: epoch {pr.epoch + 1}, step {pr.step}, best val acc {max(pr.best, 0):.2%}")

    def save(self, best: bool) -> None:
        if not (self.world.main and self.cfg.checkpoint_dir):
            return
        ck = {"format": CHECKPOINT_FORMAT, "fastconv": fastconv.__version__, "model": self.model.state_dict(),
              "optimizer": self.opt.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else {},
              "rng": checkpoint.rng_state(), "progress": asdict(self.pr), "ordering": self.ordering,
              "identity": _identity(self.cfg, self.ds)}
        directory = Path(self.cfg.checkpoint_dir)
        checkpoint.save(ck, directory / checkpoint.LAST)
        if best:
            checkpoint.save(ck, directory / checkpoint.BEST)

    # ----------------------------------------------------------------- steps

    def evaluate(self) -> float:
        """Validation accuracy; each rank scores every world.size-th image."""
        ds, device = self.ds, self.device
        self.model.eval()
        correct = total = 0
        idx = torch.arange(self.world.rank, len(ds.val_y), self.world.size)
        with torch.no_grad(), torch.autocast(device.type, self.amp, enabled=self.amp is not None):
            for chunk in idx.split(max(self.cfg.batch_size, 256)):
                logits = self.model(ds.batch(ds.val_x[chunk], device, self.fmt))
                correct += int((logits.argmax(1).cpu() == ds.val_y[chunk]).sum())
                total += len(chunk)
        self.model.train()
        correct, total = distributed.all_sum([correct, total], self.world, device)
        return correct / max(total, 1)

    def step(self, chunk: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on the training images ``chunk`` at schedule position t in [0, 1).
        Returns (loss, number correct) as device tensors (no host sync)."""
        for g in self.opt.param_groups:
            g["lr"] = self.base_lr * 0.5 * (1.0 + math.cos(math.pi * t))
        x = self.ds.batch(self.ds.train_x[chunk], self.device, self.fmt)
        y = self.ds.train_y[chunk].to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, self.amp, enabled=self.amp is not None):
            out = self.net(x)
            loss = F.cross_entropy(out, y)
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        return loss.detach(), (out.detach().argmax(1) == y).sum()

    # ----------------------------------------------------------------- the run

    def fit(self, t0: float, stop: threading.Event) -> TrainResult:
        cfg, world, device, pr, log = self.cfg, self.world, self.device, self.pr, self.log
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            torch.backends.cudnn.benchmark = not cfg.deterministic
        total_steps = max(cfg.epochs * self.batches_per_epoch, 1)
        backend = serving_backend(cfg, device)
        ds = self.ds
        log(f"fastconv train: {cfg.data} ({len(ds.train_y)} train / {len(ds.val_y)} val, {ds.channels}x"
            f"{ds.image_size}x{ds.image_size}), {cfg.layers} layers, backend {backend}, {device}"
            f"{f' x {world.size} ranks' if world.distributed else ''}, {cfg.optimizer} lr {self.base_lr:g}, "
            f"batch {cfg.batch_size}, {cfg.epochs} epochs")
        steps = images = 0
        train_seconds = 0.0
        last_loss: Optional[float] = None
        stopped = False
        self.model.train()
        while pr.epoch < cfg.epochs and not stopped:
            self.sampler.set_epoch(pr.epoch)
            order = torch.tensor(list(self.sampler), dtype=torch.int64)
            batches = order.split(cfg.batch_size)[:self.batches_per_epoch]
            bar = _bar(cfg, world, pr.epoch, len(batches), pr.step)
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            seen = 0
            t_epoch = time.perf_counter()
            while pr.step < len(batches):
                chunk = batches[pr.step]
                loss, hits = self.step(chunk, (pr.epoch * self.batches_per_epoch + pr.step) / total_steps)
                loss_sum += loss.double() * len(chunk)
                correct += hits
                seen += len(chunk)
                pr.step += 1
                steps += 1
                if bar is not None:
                    bar.update(1)
                    if pr.step % 10 == 0 or pr.step == len(batches):
                        bar.set_postfix(loss=f"{loss.item():.4f}")
                late = cfg.max_time is not None and time.perf_counter() - t0 >= cfg.max_time
                if distributed.any_rank(stop.is_set() or late, world, device):
                    stopped = True
                    if late:
                        log(f"--max-time {cfg.max_time:g} s reached at epoch {pr.epoch + 1}, step {pr.step}")
                    break
            if bar is not None:
                bar.close()
            seconds = time.perf_counter() - t_epoch
            g_loss, g_correct, g_seen = distributed.all_sum([loss_sum.item(), correct.item(), seen], world, device)
            pr.loss_sum += g_loss
            pr.correct += int(g_correct)
            pr.seen += int(g_seen)
            train_seconds += seconds
            images += int(g_seen)
            if pr.step < len(batches):  # stopped inside the epoch: keep the place and the sums
                if not world.main:
                    pr.loss_sum, pr.correct, pr.seen = 0.0, 0, 0
                break
            pr.val_accuracy = self.evaluate()
            last_loss = pr.loss_sum / max(pr.seen, 1)
            improved = pr.val_accuracy > pr.best
            pr.best = max(pr.best, pr.val_accuracy)
            log(f"epoch {pr.epoch + 1:>3}/{cfg.epochs}  loss {last_loss:.4f}  train acc "
                f"{pr.correct / max(pr.seen, 1):.2%}  val acc {pr.val_accuracy:.2%}  "
                f"{g_seen / max(seconds, 1e-9):,.0f} img/s  {seconds:.1f} s")
            pr.epoch += 1
            pr.step, pr.loss_sum, pr.correct, pr.seen = 0, 0.0, 0, 0
            self.save(improved)
        if stopped and pr.step:  # score the model as it stands and keep the partial epoch
            pr.val_accuracy = self.evaluate()
            pr.best = max(pr.best, pr.val_accuracy)
            self.save(False)
            where = f"epoch {pr.epoch + 1} step {pr.step}"
            saved = f"checkpoint saved at {where}" if cfg.checkpoint_dir else f"at {where}; no --checkpoint-dir"
            log(f"stopped: val acc {pr.val_accuracy:.2%}; {saved}")
        if pr.val_accuracy is None:
            pr.val_accuracy = self.evaluate()
        peak, kind = _peak_memory(device)
        return TrainResult(
            val_accuracy=pr.val_accuracy, best_val_accuracy=max(pr.best, pr.val_accuracy),
            seconds=time.perf_counter() - t0, images_per_second=images / max(train_seconds, 1e-9),
            epochs_completed=pr.epoch, steps=steps, stopped_early=stopped and pr.epoch < cfg.epochs,
            backend=backend, device=str(device), peak_memory_bytes=peak, peak_memory_kind=kind,
            world_size=world.size, train_loss=last_loss, model=self.model)


def _bar(cfg: TrainConfig, world: World, epoch: int, total: int, initial: int):
    if cfg.quiet or not world.main or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # progress bars are optional (pip install tqdm)
        return None

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                leave=False, dynamic_ncols=True)
