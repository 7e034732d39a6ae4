"""Backend registry and the per-call choice of backend.

A backend is a module with

    NAME: str
    available() -> str | None             # why it cannot run at all here, or None
    unsupported(op, *args) -> str | None  # why it cannot take this call (args as the op gets them)
    conv2d_fwd(x, w, b, p: ConvParams) -> (y, idx)
    conv2d_bwd(dy, x, w, y, idx, p: ConvParams, mask) -> (dx | None, dw | None, db | None)
    relu_fwd(x) -> y;  relu_bwd(dy, y) -> dx
    max_pool2d_fwd(x, p: PoolParams) -> (y, idx)
    max_pool2d_bwd(dy, idx, input_hw, p: PoolParams) -> dx

and receives from fastconv/ops.py: x (and dy) contiguous in x's memory format
(NCHW or channels_last), N > 0, arguments already validated (fastconv/_args.py);
w with any strides; y / idx are None when relu / pool is off. Outputs keep x's
memory format; dw is contiguous [K, C/groups, R, S].

The active choice is process-wide (not thread-local: autograd runs CUDA
backward in its own threads): ``set_backend(name)``, ``use_backend(name)``,
or the environment variable ``FASTCONV_BACKEND``. ``auto`` picks per call. A
chosen backend that cannot take a call falls back to ``reference`` with one
warning; in strict mode (``FASTCONV_STRICT=1`` or ``use_backend(name,
strict=True)``) that is a :class:`BackendUnsupportedError` instead, for
``auto`` too when no fastconv kernel can take the call (``auto`` choosing
``reference`` because the measured table says it is fastest is not a fallback).
"""
from __future__ import annotations

import contextlib
import importlib
import threading
import warnings
from types import ModuleType

from .. import _env

NAMES = ("auto", "reference", "cpu", "cuda", "triton", "vendor")
_MODULES = {
    "reference": "fastconv.backends.reference",
    "cpu": "fastconv.backends.cpu",
    "cuda": "fastconv.backends.cuda",
    "triton": "fastconv.backends.triton",
    "vendor": "fastconv.backends.vendor",
}


class BackendUnsupportedError(RuntimeError):
    """The requested backend cannot run this call and strict mode forbids a fallback."""


_state_lock = threading.Lock()
_state = {"name": None, "strict": None}
_warned: set = set()
_loaded: dict[str, ModuleType] = {}


def _check_name(name) -> str:
    if not isinstance(name, str) or name.lower() not in NAMES:
        raise ValueError(f"unknown fastconv backend {name!r}; expected one of {', '.join(NAMES)}")
    return name.lower()


def current() -> str:
    """The active backend name (``set_backend`` > ``FASTCONV_BACKEND`` > ``auto``)."""
    if _state["name"] is not None:
        return _state["name"]
    env = _env.get("FASTCONV_BACKEND")
    if env:
        try:
            return _check_name(env)
        except ValueError as e:
            raise ValueError(f"FASTCONV_BACKEND: {e}") from None
    return "auto"


def strict() -> bool:
    if _state["strict"] is not None:
        return _state["strict"]
    return _env.get("FASTCONV_STRICT", "0") not in ("", "0", "false", "False")


def set_backend(name: str, strict: bool | None = None) -> None:
    """Choose the backend for every later call in this process."""
    name = _check_name(name)
    with _state_lock:
        _state["name"] = name
        if strict is not None:
            _state["strict"] = bool(strict)


@contextlib.contextmanager
def use_backend(name: str, strict: bool | None = None):
    """``with fastconv.use_backend("triton", strict=True): ...``"""
    name = _check_name(name)
    with _state_lock:
        saved = dict(_state)
        _state["name"] = name
        if strict is not None:
            _state["strict"] = bool(strict)
    try:
        yield
    finally:
        with _state_lock:
            _state.update(saved)


def get(name: str) -> ModuleType:
    be = _loaded.get(name)
    if be is not None:  # the per-call path
        return be
    if isinstance(name, str) and name.startswith("cpu:"):  # one conv core of cpu (auto's candidates)
        _loaded[name] = get("cpu").core(name[4:])
        return _loaded[name]
    name = _check_name(name)
    if name == "auto":
        raise ValueError("'auto' is a policy, not a backend module")
    if name not in _loaded:
        _loaded[name] = importlib.import_module(_MODULES[name])
    return _loaded[name]


def unsupported_reason(name: str, op: str, *args) -> str | None:
    try:
        be = get(name)
    except Exception as e:  # e.g. triton not installed
        return f"backend {name!r} failed to import: {type(e).__name__}: {e}"
    return be.available() or be.unsupported(op, *args)


def _auto(op: str, args, may_measure: bool = True) -> ModuleType:
    """The first candidate that can take the call (``reference`` only where the measured table
    names it, or as the fallback when none can: an error in strict mode)."""
    from . import autoselect, measure

    call = None
    if may_measure:  # a call measured before: its choice, without listing the candidates again
        call = measure.call_key(op, args, autoselect.candidates)
        hit = measure._memory.get(call)
        if hit is not None:
            return get(hit)
    names = autoselect.candidates(op, args)
    for i, name in enumerate(names):
        if unsupported_reason(name, op, *args) is None:
            if name != "reference" and may_measure and autoselect.measured(op, args) and measure.enabled():
                options = [name] + [n for n in names[i + 1:] if unsupported_reason(n, op, *args) is None]
                options = [v for n in options for v in autoselect.variants(n, op)]
                return get(measure.choose(op, args, list(dict.fromkeys(options + ["reference"])), get, call))
            return get(name)
    if strict():
        why = "; ".join(f"{n}: {unsupported_reason(n, op, *args)}" for n in names) or "no candidate for this device"
        raise BackendUnsupportedError(f"fastconv backend 'auto' found no kernel for {op} ({why}); strict mode "
                                      "forbids falling back to 'reference'")
    return get("reference")


def select(op: str, *args) -> ModuleType:
    """The backend module that runs ``op(*args)`` (args as the backend gets them); the name is
    kept in ``last_selected[op]`` (tests check which kernel ran under ``auto``)."""
    be = _select(op, args)
    last_selected[op] = be.NAME
    return be


last_selected: dict[str, str] = {}


def static_select(op: str, *args) -> ModuleType:
    """What ``select`` runs before any measurement: auto's static rule (a label for logs)."""
    return _auto(op, args, may_measure=False) if current() == "auto" else _select(op, args)


def _select(op: str, args) -> ModuleType:
    name = current()
    if name == "auto":
        return _auto(op, args)
    reason = unsupported_reason(name, op, *args)
    if reason is None:
        return get(name)
    msg = f"fastconv backend {name!r} cannot run {op} ({reason})"
    if strict():
        raise BackendUnsupportedError(msg + "; strict mode forbids falling back")
    key = (name, op, reason)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg + "; falling back to 'reference'", RuntimeWarning, stacklevel=3)
    return get("reference")


def available() -> dict[str, str | None]:
    """{backend: None if usable in this process, else why not}."""
    out = {}
    for name in _MODULES:
        try:
            be = get(name)
            out[name] = be.available()
        except Exception as e:
            out[name] = f"{type(e).__name__}: {e}"
    return out
