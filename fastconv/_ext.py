"""Loading the C++/CUDA extension ``fastconv._C``.

Two ways in, tried in this order:

1. ahead of time: ``pip install --no-build-isolation .`` compiled ``fastconv._C``
   against the installed torch (``setup.py``); importing it loads the kernels;
2. just in time: ``torch.utils.cpp_extension.load`` compiles ``csrc/`` on first use
   into ``$FASTCONV_CACHE_DIR`` (default ``~/.cache/fastconv``), once per torch
   version and source hash. A file lock per build makes processes that start
   together build once; the others wait and load the result.

``FASTCONV_EXT=off`` skips both (the other backends serve). Failures never raise
here: :func:`status` records why, ``fastconv info`` prints it and the ``cpu`` /
``cuda`` backends decline calls, so the dispatcher falls back.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import sys
import threading
import time
from pathlib import Path

import torch

from . import _build

_lock = threading.Lock()
_status: dict = {"built": False, "cuda_kernels": False, "path": None, "error": None, "mode": None}
_tried = False


def cache_dir() -> Path:
    return Path(os.environ.get("FASTCONV_CACHE_DIR") or Path.home() / ".cache" / "fastconv")


def status() -> dict:
    """Load (or build) the extension if not tried yet; return what happened."""
    load()
    return dict(_status)


def available() -> bool:
    return load()


def load() -> bool:
    global _tried
    if _tried:
        return _status["built"]
    with _lock:
        if _tried:
            return _status["built"]
        try:
            if os.environ.get("FASTCONV_EXT", "").lower() in ("off", "0", "none"):
                raise RuntimeError("disabled by FASTCONV_EXT=off")
            if not _load_aot():
                _load_jit()
            _status["built"] = True
            _status["cuda_kernels"] = bool(torch.ops.fastconv_C.has_cuda_kernels())
        except Exception as e:  # a missing compiler must not break `import fastconv`
            _status["built"] = False
            _status["error"] = f"{type(e).__name__}: {e}".strip()[-2000:]
        finally:
            _tried = True
    return _status["built"]


def _load_aot() -> bool:
    here = Path(__file__).resolve().parent
    sos = sorted(here.glob("_C*.so")) + sorted(here.glob("_C*.pyd"))
    if not sos:
        return False
    src = here.parent / "csrc"
    if src.is_dir():  # a checkout: ignore a build that is older than its sources
        newest = max(p.stat().st_mtime for p in src.rglob("*") if p.is_file())
        if newest > sos[0].stat().st_mtime:
            return False
    try:
        importlib.import_module("fastconv._C")
    except ImportError as e:  # built against another torch: rebuild just in time
        print(f"fastconv: ignoring {sos[0].name} ({e}); building just in time", file=sys.stderr)
        return False
    _status["path"] = str(sos[0])
    _status["mode"] = "aot"
    return True


def _source_hash(files: list[Path], with_cuda: bool) -> str:
    h = hashlib.sha256()
    h.update(torch.__version__.encode())
    h.update(sys.version.encode())
    h.update(repr((with_cuda, _build.arch_list() if with_cuda else "", _build.extra_cflags(),
                   _build.extra_cuda_cflags())).encode())
    root = _build.source_root()
    headers = set(root.glob("*.h")) | set(root.glob("cpu/*.h"))
    if with_cuda:
        headers |= set(root.glob("cuda/*.h")) | set(root.glob("cuda/*.cuh"))
    for f in sorted(set(files) | headers):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _file_lock(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _load_jit() -> None:
    from torch.utils import cpp_extension

    root = _build.source_root()
    with_cuda, _why = _build.want_cuda()
    sources = _build.cpp_sources(root) + (_build.cuda_sources(root) if with_cuda else [])
    if with_cuda:
        _build.prepare_cuda_env()
    tag = f"torch{torch.__version__.replace('+', '_')}-py{sys.version_info[0]}{sys.version_info[1]}"
    build_dir = cache_dir() / f"{tag}-{'cuda' if with_cuda else 'cpu'}-{_source_hash(sources, with_cuda)}"
    lib = build_dir / "_C.so"
    with _file_lock(build_dir.with_name(build_dir.name + ".lock")):
        if not lib.is_file():
            build_dir.mkdir(parents=True, exist_ok=True)
            (build_dir / "lock").unlink(missing_ok=True)  # stale baton of a killed build
            print(f"building fastconv._C (once) into {build_dir} "
                  f"[{'C++ and CUDA' if with_cuda else 'C++ only'}; this takes a few minutes]",
                  file=sys.stderr, flush=True)
            t0 = time.time()
            cpp_extension.load(
                name="_C",
                sources=[str(s) for s in sources],
                extra_cflags=_build.extra_cflags() + (["-DFASTCONV_WITH_CUDA"] if with_cuda else []),
                extra_cuda_cflags=_build.extra_cuda_cflags() + ["-DFASTCONV_WITH_CUDA"],
                extra_ldflags=_build.extra_ldflags(),
                extra_include_paths=[str(root)] + (_build.pip_cuda_include_dirs() if with_cuda else []),
                build_directory=str(build_dir),
                with_cuda=with_cuda,
                is_python_module=False,
                verbose=os.environ.get("FASTCONV_VERBOSE_BUILD") == "1",
            )
            print(f"built fastconv._C in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
        else:
            torch.ops.load_library(str(lib))
    _status["path"] = str(lib)
    _status["mode"] = "jit"
