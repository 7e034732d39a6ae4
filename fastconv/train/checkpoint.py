"""Training checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors, numbers, strings, lists, tuples and dicts only (RNG
states included), so loading never unpickles arbitrary objects. It is written to a
temporary file in the same directory, flushed to disk, then renamed over the target:
a reader sees the old file or the new one, never half of one.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import torch

LAST = "last.pt"
BEST = "best.pt"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or does not fit the run."""


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
