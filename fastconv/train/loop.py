"""The training loop of ``fastconv train``: :func:`train` runs one :class:`TrainConfig`.

    TrainConfig, TrainResult   every knob of a run; what a run returns
    lr_at                      the learning-rate schedule
    Progress                   where the run is: every counter of the loop (checkpoints save it)
    train                      set-up: ranks, device, backend, signals, seed, data; then _fit
    _fit                       model and resume, then per epoch: train steps, evaluate, log, save

Per epoch: each rank walks its DistributedSampler shard (seeded by seed + epoch, so the
order is a function of the epoch alone) in batches, with Adam or SGD (momentum 0.9)
under a per-step cosine learning-rate decay from ``lr`` to 0; then the validation set
is scored, rank 0 logs loss, accuracy and images/s and writes ``last.pt`` (and
``best.pt`` when the validation accuracy improves).

Stopping: ``max_time`` (seconds since :func:`train` began) or SIGINT / SIGTERM stop
the run at the next step boundary, on every rank at the same step; the model is then
scored and a checkpoint saved with the position inside the epoch. Resuming
(``checkpoint.resume``) restores model, optimizer, grad scaler, RNG states, best
accuracy, epoch, step and the epoch's running sums, and continues with the next batch
of the same epoch: an interrupted and resumed run takes the same steps as an
uninterrupted one.
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
from dataclasses import asdict, dataclass, field, fields
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
    cuda_graphs: bool = False            # forward + backward as a CUDA graph (fastconv/train/graphs.py)
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
                 cuda_graphs=config.cuda_graphs,
                 channels_last=config.channels_last, fastconv=fastconv.__version__, torch=torch.__version__)
        return d


def lr_at(step: int, total_steps: int, peak: float) -> float:
    """The learning rate of optimizer step ``step`` (0-based, counted over the whole run, not
    the epoch) of ``total_steps``: a cosine from ``peak`` at step 0 down towards 0."""
    return peak * 0.5 * (1.0 + math.cos(math.pi * (step / total_steps)))


def _this_run(default):
    """A Progress field that counts this process's run only: not saved, not resumed."""
    return field(default=default, metadata={"saved": False})


@dataclass
class Progress:
    """Where the run is: every counter of the loop, in one record. The fields up to
    ``val_accuracy`` are saved in checkpoints and resumed; the running sums are over all
    ranks (every rank holds the same values) and cover the epoch in progress up to ``step``."""

    epoch: int = 0                         # epochs completed
    step: int = 0                          # batches of epoch ``epoch`` done
    loss_sum: float = 0.0                  # sum of loss x images over those batches
    correct: int = 0                       # training images classified right in them
    seen: int = 0                          # training images in them
    best: float = -1.0                     # best validation accuracy; -1 before the first
    val_accuracy: Optional[float] = None   # the latest validation accuracy
    steps: int = _this_run(0)              # optimizer steps
    images: int = _this_run(0)             # training images, over all ranks
    seconds: float = _this_run(0.0)        # time spent in training steps
    train_loss: Optional[float] = _this_run(None)  # mean loss of the last epoch this run completed
    stopped: bool = _this_run(False)       # --max-time or a signal ended the run

    def start_epoch(self, epoch: int) -> None:
        """Go to the first step of ``epoch``, with empty running sums."""
        self.epoch, self.step, self.loss_sum, self.correct, self.seen = epoch, 0, 0.0, 0, 0

    def add(self, loss_sum: float, correct: float, images: float, seconds: float) -> None:
        """Count training steps: their sums over all ranks and the time they took."""
        self.loss_sum += loss_sum
        self.correct += int(correct)
        self.seen += int(images)
        self.images += int(images)
        self.seconds += seconds

    def state_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("saved", True)}

    def load_state_dict(self, state: dict) -> None:
        saved = self.state_dict()
        if not isinstance(state, dict) or not set(state) <= set(saved):
            raise TypeError(f"progress must be a dict with keys among {', '.join(saved)}, got {state!r}")
        for key, value in state.items():
            setattr(self, key, value)


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
    return backends.static_select("conv2d_fwd", x, w, None, p).NAME


def _peak_lr(cfg: TrainConfig) -> float:
    return cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.optimizer]


def _optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=_peak_lr(cfg), weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=_peak_lr(cfg), momentum=0.9, weight_decay=cfg.weight_decay)
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


# --------------------------------------------------------------------------- the model and its steps


class _Run:
    """One run's model and what acts on it: a training step, scoring, saving, the stop check.
    ``model`` is the bare module (what checkpoints hold); ``net`` is the same parameters as
    they train, wrapped for DDP and torch.compile when asked (:meth:`wrap`)."""

    def __init__(self, cfg: TrainConfig, world: World, device: torch.device, ds: datasets.ImageData,
                 log: Callable[[str], None], t0: float, stop: threading.Event):
        self.cfg, self.world, self.device, self.ds, self.log = cfg, world, device, ds, log
        self.t0, self.stop = t0, stop  # when train() began, the signal flag
        self.fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model = ReferenceCNN(ds.channels, ds.num_classes, ds.image_size, cfg.layers, cfg.widths)
        self.model.to(device=device, memory_format=self.fmt)
        self.opt = _optimizer(cfg, self.model)
        self.peak_lr = _peak_lr(cfg)
        self.amp = _amp_dtype(cfg)
        self.scaler = torch.amp.GradScaler(device.type) if self.amp is torch.float16 else None
        self.net: nn.Module = self.model

    def wrap(self) -> None:
        if self.world.distributed:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.cfg.compile:
            self.net = torch.compile(self.net)
        if self.cfg.cuda_graphs:
            from .graphs import graph_network

            if self.world.distributed or self.cfg.compile or self.device.type != "cuda":
                raise ValueError("cuda_graphs needs one CUDA device, without DDP or compile")
            ds = self.ds
            sample = torch.randn(self.cfg.batch_size, ds.channels, ds.image_size, ds.image_size,
                                 device=self.device).contiguous(memory_format=self.fmt)
            self.net = graph_network(self.net, sample, self.amp)

    def step(self, chunk: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step at learning rate ``lr`` on the training images ``chunk``.
        Returns (loss, number correct) as device tensors (no host sync)."""
        for g in self.opt.param_groups:
            g["lr"] = lr
        x = self.ds.batch(self.ds.train_x[chunk], self.device, self.fmt)
        y = self.ds.train_y[chunk].to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, self.amp, enabled=self.amp is not None,
                            cache_enabled=not self.cfg.cuda_graphs):  # graphed callables need it off
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

    def save(self, pr: Progress, best: bool) -> None:
        """last.pt (and best.pt when ``best``) in the checkpoint directory; rank 0 only."""
        if self.world.main and self.cfg.checkpoint_dir:
            checkpoint.save_run(Path(self.cfg.checkpoint_dir), best, self.cfg, self.world, self.ds, self.model,
                                self.opt, self.scaler, pr)

    def should_stop(self, pr: Progress) -> bool:
        """True on every rank once a signal came or --max-time passed on any rank."""
        cfg = self.cfg
        late = cfg.max_time is not None and time.perf_counter() - self.t0 >= cfg.max_time
        if not distributed.any_rank(self.stop.is_set() or late, self.world, self.device):
            return False
        if late:
            self.log(f"--max-time {cfg.max_time:g} s reached at epoch {pr.epoch + 1}, step {pr.step}")
        return True


# --------------------------------------------------------------------------- the run


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
    clean = False
    try:
        backend = fastconv.use_backend(cfg.backend) if cfg.backend else contextlib.nullcontext()
        with backend, _determinism(cfg.deterministic), _stop_on_signals(stop, log):
            random.seed(cfg.seed)
            torch.manual_seed(cfg.seed)
            ds = datasets.load(cfg.data, cfg.data_dir, cfg.image_size, cfg.channels, cfg.samples, cfg.seed)
            with _cpu_threads(cfg, ds, device):
                result = _fit(_Run(cfg, world, device, ds, log, t0, stop))
        clean = True
        return result
    finally:
        distributed.shutdown(world, clean)


def _fit(run: _Run) -> TrainResult:
    cfg, world, device, ds, log = run.cfg, run.world, run.device, run.ds, run.log
    pr = Progress()
    checkpoint.resume(cfg, world, ds, run.model, run.opt, run.scaler, pr, log)
    run.wrap()  # once the checkpoint's weights are in
    sampler = DistributedSampler(range(len(ds.train_y)), num_replicas=world.size, rank=world.rank, shuffle=True,
                                 seed=cfg.seed)
    batches_per_epoch = math.ceil(len(sampler) / cfg.batch_size)
    if cfg.steps_per_epoch:
        batches_per_epoch = min(batches_per_epoch, cfg.steps_per_epoch)
    total_steps = max(cfg.epochs * batches_per_epoch, 1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.backends.cudnn.benchmark = not cfg.deterministic
    from ..info import kernels

    backend = serving_backend(cfg, device)
    log(f"fastconv train: {kernels(backend, device)}{f' x {world.size} ranks' if world.distributed else ''}; "
        f"{cfg.data} ({len(ds.train_y)} train / {len(ds.val_y)} val, {ds.channels}x{ds.image_size}x"
        f"{ds.image_size}), {cfg.optimizer} lr {run.peak_lr:g}, batch {cfg.batch_size}, {cfg.epochs} epochs")

    run.model.train()
    while pr.epoch < cfg.epochs and not pr.stopped:
        sampler.set_epoch(pr.epoch)
        batches = torch.tensor(list(sampler), dtype=torch.int64).split(cfg.batch_size)[:batches_per_epoch]
        images, seconds = _train_epoch(run, pr, batches, pr.epoch * batches_per_epoch, total_steps)
        if pr.step < len(batches):  # stopped inside the epoch: keep the place and the sums
            break
        pr.val_accuracy = run.evaluate()
        pr.train_loss = pr.loss_sum / max(pr.seen, 1)
        improved = pr.val_accuracy > pr.best
        pr.best = max(pr.best, pr.val_accuracy)
        log(f"epoch {pr.epoch + 1:>3}/{cfg.epochs}  loss {pr.train_loss:.4f}  train acc "
            f"{pr.correct / max(pr.seen, 1):.2%}  val acc {pr.val_accuracy:.2%}  "
            f"{images / max(seconds, 1e-9):,.0f} img/s  {seconds:.1f} s")
        pr.start_epoch(pr.epoch + 1)
        run.save(pr, improved)

    if pr.stopped and pr.step:  # score the model as it stands and keep the partial epoch
        pr.val_accuracy = run.evaluate()
        pr.best = max(pr.best, pr.val_accuracy)
        run.save(pr, False)
        where = f"epoch {pr.epoch + 1} step {pr.step}"
        saved = f"checkpoint saved at {where}" if cfg.checkpoint_dir else f"at {where}; no --checkpoint-dir"
        log(f"stopped: val acc {pr.val_accuracy:.2%}; {saved}")
    if pr.val_accuracy is None:
        pr.val_accuracy = run.evaluate()
    peak, kind = _peak_memory(device)
    return TrainResult(
        val_accuracy=pr.val_accuracy, best_val_accuracy=max(pr.best, pr.val_accuracy),
        seconds=time.perf_counter() - run.t0, images_per_second=pr.images / max(pr.seconds, 1e-9),
        epochs_completed=pr.epoch, steps=pr.steps, stopped_early=pr.stopped and pr.epoch < cfg.epochs,
        backend=backend, device=str(device), peak_memory_bytes=peak, peak_memory_kind=kind,
        world_size=world.size, train_loss=pr.train_loss, model=run.model)


def _train_epoch(run: _Run, pr: Progress, batches: tuple[torch.Tensor, ...], first_step: int,
                 total_steps: int) -> tuple[int, float]:
    """Optimizer steps on ``batches`` from ``pr.step`` to the end of the epoch or to a stop;
    ``first_step`` is the run-wide number of the epoch's first step. Adds the steps' sums
    over all ranks to ``pr`` and returns (images over all ranks, seconds) of these steps."""
    bar = _bar(run.cfg, run.world, pr.epoch, len(batches), pr.step)
    # this rank's sums, kept on the device: no host sync per step
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    correct = torch.zeros((), dtype=torch.int64, device=run.device)
    seen = 0
    t = time.perf_counter()
    while pr.step < len(batches) and not pr.stopped:
        chunk = batches[pr.step]
        loss, hits = run.step(chunk, lr_at(first_step + pr.step, total_steps, run.peak_lr))
        loss_sum += loss.double() * len(chunk)
        correct += hits
        seen += len(chunk)
        pr.step += 1
        pr.steps += 1
        if bar is not None:
            bar.update(1)
            if pr.step % 10 == 0 or pr.step == len(batches):
                bar.set_postfix(loss=f"{loss.item():.4f}")
        pr.stopped = run.should_stop(pr)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t
    g_loss, g_correct, g_seen = distributed.all_sum([loss_sum.item(), correct.item(), seen], run.world, run.device)
    pr.add(g_loss, g_correct, g_seen, seconds)
    return int(g_seen), seconds


def _bar(cfg: TrainConfig, world: World, epoch: int, total: int, initial: int):
    if cfg.quiet or not world.main or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # progress bars are optional (pip install tqdm)
        return None

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                leave=False, dynamic_ncols=True)
