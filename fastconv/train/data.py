"""Data sets of the reference trainer, held in memory as tensors.

    digits     scikit-learn's bundled 8x8 handwritten digits (1797 images, 16 grey levels;
               real data, no download); a fixed stratified 80/20 train/validation split
    mnist      the standard idx files (raw or .gz) in --data-dir:
               train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
               t10k-labels-idx1-ubyte (torchvision's MNIST/raw/ layout works too)
    cifar10    the python pickle batches in --data-dir (or its cifar-10-batches-py/):
               data_batch_1..5 for training, test_batch for validation
    synthetic  class templates plus noise, any --image-size / --channels (throughput runs)

Images stay in their stored dtype (uint8 for MNIST and CIFAR-10) and are normalized per
batch, on the training device, with the training set's per-channel mean and std.
Missing or malformed files raise :class:`DataError`, whose message names the file and
what is wrong with it.
"""
from __future__ import annotations

import gzip
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

NAMES = ("digits", "mnist", "cifar10", "synthetic")


class DataError(ValueError):
    """A data file is missing or malformed."""


@dataclass
class ImageData:
    """x: [N, C, H, W] (any real dtype), y: [N] int64 in 0..num_classes-1, for train and val."""

    name: str
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    num_classes: int
    mean: Tensor  # [C] float32, of the training images
    std: Tensor  # [C] float32

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[2])

    def batch(self, x: Tensor, device: torch.device, memory_format=torch.contiguous_format) -> Tensor:
        """Stored images -> normalized float32 [N, C, H, W] on device."""
        x = x.to(device, non_blocking=True).float()
        mean = self.mean.to(device).view(1, -1, 1, 1)
        std = self.std.to(device).view(1, -1, 1, 1)
        return ((x - mean) / std).contiguous(memory_format=memory_format)


def _make(name, train_x, train_y, val_x, val_y, num_classes) -> ImageData:
    xf = train_x.float()
    mean = xf.mean(dim=(0, 2, 3))
    std = xf.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return ImageData(name, train_x, train_y.long(), val_x, val_y.long(), num_classes, mean, std)


def load(name: str, data_dir: str | None = None, image_size: int = 32, channels: int = 3,
         samples: int = 8192, seed: int = 0) -> ImageData:
    """The data set ``name`` (one of NAMES); data_dir for mnist / cifar10, the rest for synthetic."""
    if name == "digits":
        return digits()
    if name == "mnist":
        return mnist(_directory(data_dir))
    if name == "cifar10":
        return cifar10(_directory(data_dir))
    if name == "synthetic":
        return synthetic(image_size, channels, samples, seed=seed)
    raise ValueError(f"unknown data set {name!r}; expected one of {', '.join(NAMES)}")


def _directory(data_dir) -> Path:
    if data_dir is None:
        raise DataError("no data directory given")
    path = Path(data_dir)
    if not path.is_dir():
        raise DataError(f"{path} is not a directory")
    return path


# --------------------------------------------------------------------------- digits


def digits(val_fraction: float = 0.2) -> ImageData:
    """sklearn's digits; each class split 80/20 by a fixed permutation (the same every run)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the digits data set comes with scikit-learn, which is not installed "
                        "(pip install scikit-learn, or fastconv[train])") from None
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1)  # [1797, 1, 8, 8], values 0..16
    y = torch.tensor(d.target, dtype=torch.int64)
    g = torch.Generator().manual_seed(0)
    val = torch.zeros(len(y), dtype=torch.bool)
    for c in range(10):
        members = (y == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=g)]
        val[members[:round(len(members) * val_fraction)]] = True
    return _make("digits", x[~val], y[~val], x[val], y[val], 10)


# --------------------------------------------------------------------------- MNIST (idx)

_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "val_x": "t10k-images-idx3-ubyte", "val_y": "t10k-labels-idx1-ubyte",
}


def _find(data_dir: Path, stem: str) -> Path:
    for d in (data_dir, data_dir / "MNIST" / "raw", data_dir / "raw"):
        for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
            if (d / name).is_file():
                return d / name
    raise DataError(f"MNIST file {stem} (or {stem}.gz) not found in {data_dir}")


def read_idx(path: Path) -> np.ndarray:
    """An idx file (``.gz`` or raw) of unsigned bytes: magic 0x0000 0x08 ndim, ndim big-endian
    uint32 sizes, then the data, row-major."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes, too short for an idx header")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08 or not 1 <= ndim <= 4:
        raise DataError(f"{path}: not an idx file of unsigned bytes (magic {raw[:4].hex()}, "
                        f"expected 000008 followed by the number of dimensions)")
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise DataError(f"{path}: truncated header")
    shape = struct.unpack(f">{ndim}I", raw[4:head])
    expected = int(np.prod(shape))
    if len(raw) - head != expected:
        raise DataError(f"{path}: header says shape {shape} ({expected} bytes of data) but the file "
                        f"holds {len(raw) - head}")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(shape)


def mnist(data_dir: Path) -> ImageData:
    arrays = {k: read_idx(_find(data_dir, stem)) for k, stem in _MNIST_FILES.items()}
    for split in ("train", "val"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        fx, fy = _MNIST_FILES[f"{split}_x"], _MNIST_FILES[f"{split}_y"]
        if x.ndim != 3:
            raise DataError(f"{fx}: images must be a 3-D idx array [N, H, W], got shape {x.shape}")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{fy}: expected {len(x)} labels (one per image in {fx}), got shape {y.shape}")
        if len(y) and y.max() > 9:
            raise DataError(f"{fy}: labels must be 0..9, found {int(y.max())}")
    if arrays["train_x"].shape[1:] != arrays["val_x"].shape[1:]:
        raise DataError(f"train and t10k images differ in size: {arrays['train_x'].shape[1:]} vs "
                        f"{arrays['val_x'].shape[1:]}")
    t = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
    return _make("mnist", t["train_x"].unsqueeze(1), t["train_y"], t["val_x"].unsqueeze(1), t["val_y"], 10)


# --------------------------------------------------------------------------- CIFAR-10 (pickle)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays; refuses every other class,
    so a crafted file cannot run code."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"CIFAR-10 batch {path.name} not found in {path.parent}")
    try:
        d = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except Exception as e:  # a malformed pickle can raise nearly anything
        raise DataError(f"{path}: not a CIFAR-10 python pickle batch ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a dict with 'data' and 'labels', got {type(d).__name__}")
    d = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise DataError(f"{path}: expected keys 'data' and 'labels', got {sorted(map(str, d))}")
    data, labels = np.asarray(d["data"]), np.asarray(d["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' must be uint8 [N, 3072] (3 x 32 x 32 planes), got "
                        f"{data.dtype} {list(data.shape)}")
    if labels.ndim != 1 or len(labels) != len(data):
        raise DataError(f"{path}: expected {len(data)} labels, got shape {list(labels.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels must be 0..9, found {int(labels.min())}..{int(labels.max())}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def cifar10(data_dir: Path) -> ImageData:
    root = data_dir / "cifar-10-batches-py" if (data_dir / "cifar-10-batches-py").is_dir() else data_dir
    train = [_cifar_batch(root / f"data_batch_{i}") for i in range(1, 6)]
    val_x, val_y = _cifar_batch(root / "test_batch")
    train_x = torch.from_numpy(np.concatenate([b[0] for b in train]))
    train_y = torch.from_numpy(np.concatenate([b[1] for b in train]))
    return _make("cifar10", train_x, train_y, torch.from_numpy(val_x.copy()), torch.from_numpy(val_y), 10)


# --------------------------------------------------------------------------- synthetic


def synthetic(image_size: int, channels: int, samples: int, num_classes: int = 10, seed: int = 0) -> ImageData:
    """``samples`` training and ``samples // 4`` validation images: x = template[y] + noise,
    a learnable task of any shape for throughput runs."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(num_classes, channels, image_size, image_size, generator=g)

    def draw(n):
        y = torch.randint(0, num_classes, (n,), generator=g)
        return templates[y] + 2.0 * torch.randn(n, channels, image_size, image_size, generator=g), y

    train_x, train_y = draw(samples)
    val_x, val_y = draw(max(samples // 4, 1))
    return _make("synthetic", train_x, train_y, val_x, val_y, num_classes)
