"""Loading the extension: the C++ kernels ``fastconv._C`` and the CUDA kernels
``fastconv._C_cuda``.

Two libraries, loaded when first needed:

* ``_C`` (csrc/fastconv.cpp, csrc/cpu/*.cpp): every op schema and the CPU
  kernels; loaded on the first call of a native backend (or ``fastconv info``).
* ``_C_cuda`` (csrc/cuda/*.cu): the CUDA kernels of the same ops; loaded on the
  first use with a visible CUDA device, or whenever ``FASTCONV_BUILD_CUDA=1``
  asks. A machine without a GPU never compiles them unless asked: their nvcc
  build takes minutes and could never run there.

Each comes in one of two ways, tried in this order:

1. ahead of time: ``pip install --no-build-isolation .`` compiled both against
   the installed torch (``setup.py``, the CUDA part where nvcc is found);
2. just in time: ``torch.utils.cpp_extension`` compiles ``csrc/`` into
   ``$FASTCONV_CACHE_DIR`` (default ``~/.cache/fastconv``), once per part,
   torch version and source hash, in a child process whose output goes to
   ``build.log`` in the build folder; meanwhile one line every 15 s says which
   part, how long, how many files and where the log is. A file lock per build
   makes processes that start together build once; the others wait and load it.

``FASTCONV_EXT=off`` skips both (the other backends serve). ``FASTCONV_BUILD_CUDA=0``
never builds the CUDA part. Failures never raise here: :func:`status` records
why (with the compiler's first error lines), ``fastconv info`` prints it and the
``cpu`` / ``cuda`` backends decline calls, so the dispatcher falls back to
``reference``.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from . import _build

PROGRESS_EVERY_S = 15

_lock = threading.Lock()
_status: dict = {"built": False, "cuda_kernels": False, "path": None, "error": None, "mode": None,
                 "cuda": {"built": False, "path": None, "mode": None, "why": "not tried yet"}}
_tried = False
_cuda_tried = False


def cache_dir() -> Path:
    return Path(os.environ.get("FASTCONV_CACHE_DIR") or Path.home() / ".cache" / "fastconv")


def status() -> dict:
    """Load (or build) what this machine uses, if not tried yet; return what happened.
    ``cuda`` says whether the CUDA kernels are built and, if not, why."""
    load()
    load_cuda()
    out = dict(_status)
    out["cuda"] = dict(_status["cuda"])
    return out


def available() -> bool:
    return load()


def load() -> bool:
    """The C++ kernels (and the op schemas): loaded, or built then loaded."""
    global _tried
    if _tried:
        return _status["built"]
    with _lock:
        if _tried:
            return _status["built"]
        try:
            if _disabled():
                raise RuntimeError("disabled by FASTCONV_EXT=off")
            if not _load_aot("_C"):
                _load_jit("_C")
            _status["built"] = True
        except Exception as e:  # a missing compiler must not break `import fastconv`
            _status["built"] = False
            _status["error"] = f"{type(e).__name__}: {e}".strip()[-3000:]
        finally:
            _tried = True
    return _status["built"]


def cuda_wanted() -> tuple[bool, str]:
    """(load the CUDA kernels now?, why): with a visible CUDA device, or FASTCONV_BUILD_CUDA=1."""
    forced = os.environ.get("FASTCONV_BUILD_CUDA", "").strip()
    if forced not in ("", "0", "1"):
        raise ValueError(f"FASTCONV_BUILD_CUDA must be 0 or 1, got {forced!r}")
    if forced == "0":
        return False, "FASTCONV_BUILD_CUDA=0"
    if forced != "1" and not torch.cuda.is_available():
        return False, ("no CUDA device is visible (they are built on the first use with one, "
                       "or with FASTCONV_BUILD_CUDA=1)")
    return _build.want_cuda()


def load_cuda() -> bool:
    """The CUDA kernels: loaded, or built then loaded, when :func:`cuda_wanted` says so.
    A "not wanted" answer is not cached (a later FASTCONV_BUILD_CUDA=1 still builds)."""
    global _cuda_tried
    if _cuda_tried:
        return _status["cuda"]["built"]
    if not load():
        _status["cuda"]["why"] = "the C++ extension is not built"
        return False
    try:
        want, why = cuda_wanted()
    except Exception as e:
        want, why = False, f"{type(e).__name__}: {e}"
    if not want:
        _status["cuda"]["why"] = why
        return _cuda_kernels_registered()
    with _lock:
        if _cuda_tried:
            return _status["cuda"]["built"]
        try:
            if not _load_aot("_C_cuda"):
                _load_jit("_C_cuda")
            _status["cuda"]["built"] = True
            _status["cuda"]["why"] = None
        except Exception as e:
            _status["cuda"]["built"] = False
            _status["cuda"]["why"] = f"{type(e).__name__}: {e}".strip()[-3000:]
        finally:
            _cuda_tried = True
    return _cuda_kernels_registered()


def _cuda_kernels_registered() -> bool:
    has = torch._C._dispatch_has_kernel_for_dispatch_key("fastconv_C::conv2d_fwd", "CUDA")
    _status["cuda_kernels"] = bool(has)
    return _status["cuda_kernels"]


def _disabled() -> bool:
    return os.environ.get("FASTCONV_EXT", "").lower() in ("off", "0", "none")


def _record(name: str, path: Path, mode: str) -> None:
    target = _status if name == "_C" else _status["cuda"]
    target["path"] = str(path)
    target["mode"] = mode


def _load_aot(name: str) -> bool:
    here = Path(__file__).resolve().parent
    sos = sorted(here.glob(f"{name}.*so")) + sorted(here.glob(f"{name}.*pyd"))
    sos = [p for p in sos if p.name.split(".")[0] == name]
    if not sos:
        return False
    src = here.parent / "csrc"
    if src.is_dir():  # a checkout: ignore a build that is older than its sources
        newest = max(p.stat().st_mtime for p in src.rglob("*") if p.is_file())
        if newest > sos[0].stat().st_mtime:
            return False
    try:
        if name == "_C":
            importlib.import_module("fastconv._C")
        else:
            torch.ops.load_library(str(sos[0]))
    except (ImportError, OSError) as e:  # built against another torch: rebuild just in time
        print(f"fastconv: ignoring {sos[0].name} ({e}); building just in time", file=sys.stderr)
        return False
    _record(name, sos[0], "aot")
    return True


def _sources(name: str) -> tuple[list[Path], list[Path]]:
    """(sources, the headers they may include) of one part."""
    root = _build.source_root()
    headers = set(root.glob("*.h"))
    if name == "_C":
        return _build.cpp_sources(root), sorted(headers | set(root.glob("cpu/*.h")))
    return _build.cuda_sources(root), sorted(headers | set(root.glob("cuda/*.h")) | set(root.glob("cuda/*.cuh")))


def _source_hash(name: str, files: list[Path], headers: list[Path]) -> str:
    h = hashlib.sha256()
    h.update(torch.__version__.encode())
    h.update(sys.version.encode())
    cuda = name != "_C"
    h.update(repr((name, _build.arch_list() if cuda else "", _build.extra_cflags(),
                   _build.extra_cuda_cflags() if cuda else "")).encode())
    root = _build.source_root()
    for f in sorted(set(files) | set(headers)):
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


PART = {"_C": "C++ kernels", "_C_cuda": "CUDA kernels"}


def _load_jit(name: str) -> None:
    cuda = name != "_C"
    sources, headers = _sources(name)
    if cuda:
        _build.prepare_cuda_env()
    tag = f"torch{torch.__version__.replace('+', '_')}-py{sys.version_info[0]}{sys.version_info[1]}"
    build_dir = cache_dir() / f"{tag}-{'cuda' if cuda else 'cpu'}-{_source_hash(name, sources, headers)}"
    lib = build_dir / f"{name}.so"
    with _file_lock(build_dir.with_name(build_dir.name + ".lock")):
        if not lib.is_file():
            build_dir.mkdir(parents=True, exist_ok=True)
            (build_dir / "lock").unlink(missing_ok=True)  # stale baton of a killed build
            root = _build.source_root()
            kwargs = dict(
                name=name,
                sources=[str(s) for s in sources],
                extra_cflags=_build.extra_cflags(),
                extra_cuda_cflags=_build.extra_cuda_cflags(),
                extra_ldflags=_build.extra_ldflags(),
                extra_include_paths=[str(root)] + (_build.pip_cuda_include_dirs() if cuda else []),
                build_directory=str(build_dir),
                with_cuda=cuda,
                is_python_module=False,
                verbose=True,
            )
            _compile(PART[name], kwargs, build_dir / "build.log")
    torch.ops.load_library(str(lib))
    _record(name, lib, "jit")


class BuildError(RuntimeError):
    pass


def _compile(part: str, kwargs: dict, log: Path) -> None:
    """Run torch.utils.cpp_extension.load(**kwargs) in a child process, its output in ``log``,
    printing progress; raise BuildError with the compiler's first error lines on failure."""
    code = ("import json, sys\nfrom torch.utils import cpp_extension\n"
            "cpp_extension.load(**json.loads(sys.argv[1]))\n")
    t0 = time.time()
    print(f"fastconv: building the {part} (once, for this torch and these sources) into "
          f"{kwargs['build_directory']}; log: {log}", file=sys.stderr, flush=True)
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(kwargs)], stdout=fh,
                                stderr=subprocess.STDOUT, env=dict(os.environ), cwd=kwargs["build_directory"])
        while True:
            try:
                proc.wait(timeout=PROGRESS_EVERY_S)
                break
            except subprocess.TimeoutExpired:
                print(f"fastconv: building the {part}: {time.time() - t0:.0f} s{_files_done(log)} "
                      f"(log: {log})", file=sys.stderr, flush=True)
    if proc.returncode != 0:
        raise BuildError(f"building the {part} failed after {time.time() - t0:.0f} s (log: {log}):\n"
                         + first_errors(log.read_text(errors="replace")))
    print(f"fastconv: built the {part} in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)


def _files_done(log: Path) -> str:
    """', 3/9 steps' from the last ninja progress line of the log (empty if none yet)."""
    try:
        steps = re.findall(r"^\[(\d+)/(\d+)\]", log.read_text(errors="replace"), re.M)
    except OSError:
        return ""
    return f", {steps[-1][0]}/{steps[-1][1]} steps" if steps else ""


def first_errors(text: str, limit: int = 12) -> str:
    """The first compiler error lines of a build log (else its last lines)."""
    lines = text.splitlines()
    errs = [i for i, ln in enumerate(lines) if re.search(r"\berror\b|FAILED:|fatal", ln, re.I)]
    if not errs:
        return "\n".join(lines[-limit:])
    start = errs[0]
    return "\n".join(lines[start:start + limit])
