"""``auto``'s measured choice: on the first call of a shape, time each candidate backend on that
very call and keep the fastest, like ``torch.backends.cudnn.benchmark``.

One design for CPU and GPU (``fastconv/backends/__init__.py`` asks ``choose`` whenever
``autoselect.candidates`` leaves a choice):

* the candidates are the static rule's backends that can take the call, plus ``reference``
  (plain PyTorch: ATen's conv, then relu and pool), so ``auto`` is never slower than PyTorch by
  more than the noise of the measurement;
* each runs the call once to warm up; then the candidates run in turn, one call each per round,
  for ``REPS`` rounds or ``BUDGET_S`` seconds per candidate (at least one round), and each one's
  fastest call counts: on a shared, noisy machine a slow spell then hits every candidate alike,
  and noise (which only ever adds time) does not decide. A fastconv backend wins only if it is at
  least ``MARGIN`` faster than ``reference``: a tie goes to PyTorch;
* the choice is cached per device identity -- CPU model, ISA of the C++ kernels, ATen's and
  oneDNN's ISA, thread count and the built kernels' content hash, or GPU name -- and torch version, op and shape key, in memory and in
  ``$FASTCONV_CACHE_DIR/autoselect.json`` (``~/.cache/fastconv``), so later processes reuse it;
* ``FASTCONV_AUTO_MEASURE=0`` turns measuring off (tests, reproducible runs): the static rule
  decides. Nothing is measured while a CUDA graph is being captured.

``fastconv info`` lists the cached choices of this machine (``cached()``).
"""
from __future__ import annotations

import functools
import hashlib
import os
import threading
import time
from pathlib import Path

import torch

from .. import _env, _jsoncache

ENV = "FASTCONV_AUTO_MEASURE"
REPS = 15  # rounds: 5 went the wrong way on near-ties between the two CPU conv cores
BUDGET_S = 0.5  # per candidate, after the warm-up
MARGIN = 0.03

_lock = threading.Lock()
_memory: dict[tuple, str] = {}
_disk: dict | None = None


def enabled() -> bool:
    v = _env.get(ENV, "1").strip()
    if v not in ("0", "1"):
        raise ValueError(f"{ENV} must be 0 or 1, got {v!r}")
    return v == "1"


def path() -> Path:
    from .. import _ext

    return _ext.cache_dir() / "autoselect.json"


def device_identity(device: torch.device) -> str:
    return _identity(device.type, device.index, torch.get_num_threads(), _env.get("FASTCONV_CPU_ISA", ""))


@functools.lru_cache(maxsize=None)
def _identity(kind: str, index, threads: int, isa_env: str) -> str:
    from ..info import cpu_id, cpu_isa  # (fastconv.info is the function; the module is this)

    if kind == "cuda":
        return f"cuda|{torch.cuda.get_device_name(index)}|torch {torch.__version__}"
    # ATen's vector code and oneDNN's ISA decide how fast the reference candidate and the ATen
    # core run, as the kernels' ISA decides fastconv's (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA)
    aten = torch.backends.cpu.get_cpu_capability().lower()
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "").lower()
    return (f"cpu|{cpu_id()}|{cpu_isa()}|aten {aten}" + (f"|onednn <= {onednn}" if onednn else "")
            + f"|{threads} threads|torch {torch.__version__}|kernels {_kernels_id()}")


@functools.lru_cache(maxsize=None)
def _kernels_id() -> str:
    """The built C++ library's content hash: a choice measured against other kernels (an older
    build, a new fastconv) is measured again, not reused."""
    from .. import _ext

    lib = _ext._status["path"] if _ext.load() else None
    if not lib or not Path(lib).is_file():
        return "none"
    return hashlib.sha256(Path(lib).read_bytes()).hexdigest()[:12]


def _signature(a):
    if isinstance(a, torch.Tensor):
        return (tuple(a.shape), a.dtype, a.stride())
    return tuple(a) if isinstance(a, list) else a


def shape_key(op: str, args) -> str:
    """Everything about a call that decides which backend is fastest: shapes, dtype, layout and
    the op's parameters (not the values)."""
    parts = [op]
    for a in args:
        if isinstance(a, torch.Tensor):
            fmt = "cl" if a.dim() == 4 and a.is_contiguous(memory_format=torch.channels_last) and \
                not a.is_contiguous() else "c"
            parts.append(f"{tuple(a.shape)}:{str(a.dtype).replace('torch.', '')}:{fmt}")
        elif a is None:
            parts.append("-")
        else:
            parts.append(repr(a))
    return "|".join(parts)


def _load() -> dict:
    global _disk
    if _disk is None:
        _disk = _jsoncache.read(path())
    return _disk


def _save(key: str, name: str) -> None:
    """Keep a choice on disk, merged with other processes' (read-only folder: in memory only)."""
    table = _jsoncache.add(path(), key, name)
    _load().update(table or {key: name})


def cached(device: torch.device | None = None) -> dict[str, str]:
    """{shape key: backend} cached on disk for this machine (this device's identity)."""
    ident = device_identity(device or torch.device("cpu"))
    return {k.split("||", 1)[1]: v for k, v in _load().items() if k.startswith(ident + "||")}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _times(fns: dict, device: torch.device) -> dict[str, float]:
    """{name: seconds of its fastest call}: each ``fns[name]()`` warmed up once (compiles, tunes,
    allocates), then the candidates in turn, one call per round."""
    for fn in fns.values():
        fn()
    _sync(device)
    best = dict.fromkeys(fns, float("inf"))
    t_end = time.perf_counter() + BUDGET_S * len(fns)
    for r in range(REPS):
        if r and time.perf_counter() >= t_end:
            break
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def call_key(op: str, args, rule) -> tuple:
    """A key in ``_memory`` for everything that decides ``auto``'s measured choice of ``op(*args)``
    before the candidates are even listed: the call's shapes, dtypes, strides and device, the
    thread count, the knobs that change the candidates or the measuring (FASTCONV_CPU_ISA,
    FASTCONV_CPU_CONV, FASTCONV_AUTO_MEASURE) and ``rule`` (the candidate rule in force). A hit
    skips listing and checking the candidates on every later call: ~10 us of Python per call on a
    2-core CPU, a sixth of a small layer (fastconv/backends/__init__.py ``_auto``)."""
    device = next(a.device for a in args if isinstance(a, torch.Tensor))
    return ("call", op, device, torch.get_num_threads(), _env.get("FASTCONV_CPU_ISA", ""),
            _env.get("FASTCONV_CPU_CONV", ""), _env.get(ENV, ""), rule, *map(_signature, args))


def choose(op: str, args, names: list[str], get, call: tuple) -> str:
    """The backend among ``names`` (``reference`` among them) to run ``op(*args)`` with: from the
    disk cache, else measured; kept in memory under ``call`` (``call_key``), which ``_auto`` asks
    first on later calls."""
    device = next(a.device for a in args if isinstance(a, torch.Tensor))
    key = f"{device_identity(device)}||{shape_key(op, args)}"
    with _lock:
        best = _load().get(key)
        if best not in names:
            if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                return names[0]  # no timing inside a capture; decided on an uncaptured call
            fns = {name: (lambda fn=getattr(get(name), op): fn(*args)) for name in names}
            with torch.no_grad():
                times = _times(fns, device)
            best = min(times, key=times.get)
            if best != "reference" and "reference" in times and times[best] > (1 - MARGIN) * times["reference"]:
                best = "reference"
            _save(key, best)
        _memory[call] = best
    return best
