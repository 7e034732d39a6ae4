"""Training checkpoints: what one holds, how a run is saved into one and resumed from it.

A checkpoint is a dict of tensors, numbers, strings, lists, tuples and dicts only (RNG
states included), so loading never unpickles arbitrary objects. It is written to a
temporary file in the same directory, flushed to disk, then renamed over the target:
a reader sees the old file or the new one, never half of one.

    format, fastconv     the layout version (FORMAT) and the package version that wrote it
    model, optimizer     state_dicts (the bare model's, never a DDP or compiled wrapper's)
    scaler               the fp16 grad scaler's state_dict, {} without one
    rng                  Python and torch generator states (rng_state)
    progress             where the run is: epoch, step, the epoch's running sums, best accuracy
    ordering             how an epoch is cut into steps (ordering)
    identity             what the model was trained on and with (identity)

Resuming checks the identity (a mismatch names the flag), restores the rest, and continues
at the saved step of the saved epoch, unless the ordering changed: then that epoch
restarts from its first step.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import torch

import fastconv

if TYPE_CHECKING:
    from .data import ImageData
    from .distributed import World
    from .loop import Progress, TrainConfig

FORMAT = 1
LAST = "last.pt"
BEST = "best.pt"

# the settings a checkpoint must agree with to be resumed: (config field, flag)
_MUST_MATCH = (("data", "--data"), ("optimizer", "--optimizer"), ("widths", "--widths"))


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or does not fit the run."""


# --------------------------------------------------------------------------- files


def save(obj: dict, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot load checkpoint {path} ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict) or "model" not in obj:
        raise CheckpointError(f"{path} is not a fastconv train checkpoint")
    return obj


def rng_state() -> dict:
    """Python and torch (CPU and every CUDA device) generator states."""
    version, state, gauss = random.getstate()
    return {
        "python": [version, list(state), gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(s: dict) -> None:
    version, state, gauss = s["python"]
    random.setstate((version, tuple(state), gauss))
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])


# --------------------------------------------------------------------------- what a run records


def identity(cfg: TrainConfig, ds: ImageData) -> dict:
    """What the model was trained on and with: a checkpoint resumes only into a run that agrees."""
    return {"data": cfg.data, "optimizer": cfg.optimizer, "widths": list(cfg.widths),
            "channels": ds.channels, "image_size": ds.image_size, "num_classes": ds.num_classes}


def ordering(cfg: TrainConfig, world: World) -> dict:
    """How an epoch is cut into steps: a checkpoint taken inside an epoch resumes at its step
    only when this is unchanged."""
    return {"batch_size": cfg.batch_size, "world_size": world.size, "steps_per_epoch": cfg.steps_per_epoch}


def check_fits(have: dict, want: dict, path: Path) -> None:
    """Raise CheckpointError, naming the flag, where the checkpoint's identity ``have`` and the
    run's ``want`` differ; keys the checkpoint lacks are not checked."""
    for key, flag in _MUST_MATCH:
        if key in have and have[key] != want[key]:
            raise CheckpointError(
                f"{path} was trained with {flag} {_fmt(have[key])}, this run has {flag} {_fmt(want[key])}")
    for key in ("channels", "image_size", "num_classes"):
        if key in have and have[key] != want[key]:
            raise CheckpointError(f"{path} holds a model for {key}={have[key]}, the data has "
                                  f"{key}={want[key]}")


def _fmt(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


# --------------------------------------------------------------------------- saving and resuming


def save_run(directory: Path, best: bool, cfg: TrainConfig, world: World, ds: ImageData, model: torch.nn.Module,
             optimizer: torch.optim.Optimizer, scaler: Optional[torch.amp.GradScaler], progress: Progress) -> None:
    """Write the run to ``directory``/last.pt, and to best.pt as well when ``best``."""
    ck = {"format": FORMAT, "fastconv": fastconv.__version__, "model": model.state_dict(),
          "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else {},
          "rng": rng_state(), "progress": progress.state_dict(), "ordering": ordering(cfg, world),
          "identity": identity(cfg, ds)}
    save(ck, directory / LAST)
    if best:
        save(ck, directory / BEST)


def resume_path(cfg: TrainConfig) -> Optional[Path]:
    """The checkpoint ``--resume`` names; None for a fresh run (or ``--resume`` without a path
    and no last.pt in the checkpoint directory yet)."""
    if cfg.resume is None:
        return None
    if cfg.resume != "auto":
        return Path(cfg.resume)
    if cfg.checkpoint_dir is None:
        raise CheckpointError("--resume without a path needs --checkpoint-dir")
    path = Path(cfg.checkpoint_dir) / LAST
    return path if path.is_file() else None


def resume(cfg: TrainConfig, world: World, ds: ImageData, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
           scaler: Optional[torch.amp.GradScaler], progress: Progress, log: Callable[[str], None]) -> None:
    """Load the checkpoint of ``--resume`` (if any) into model, optimizer, scaler, the RNGs and
    ``progress``; raise CheckpointError when it does not fit this run."""
    path = resume_path(cfg)
    if path is None:
        if cfg.resume == "auto":
            log(f"no checkpoint in {cfg.checkpoint_dir}; starting from scratch")
        return
    ck = load(path)
    check_fits(ck.get("identity", {}), identity(cfg, ds), path)
    try:
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        set_rng_state(ck["rng"])
        progress.load_state_dict(ck["progress"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} does not fit this run ({type(e).__name__}: {e})") from None
    if progress.step and ck.get("ordering") != ordering(cfg, world):
        log(f"resume: batch size, world size or steps per epoch changed; epoch {progress.epoch + 1} restarts")
        progress.start_epoch(progress.epoch)
    log(f"resumed from {path}: epoch {progress.epoch + 1}, step {progress.step}, "
        f"best val acc {max(progress.best, 0):.2%}")
