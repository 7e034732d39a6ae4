"""Reads of fastconv's environment variables on the per-call path.

The knobs are read on every call (a change at run time, e.g. a test's monkeypatch, takes effect
at once). ``os.environ.get`` encodes the key and builds a view on each call, about 0.8 us on a
2-core cloud CPU: a third of a small relu's overhead. ``get`` reads the same mapping that
``os.environ`` keeps in step with the process environment, with the key encoded once.
"""
from __future__ import annotations

import os

_data = getattr(os.environ, "_data", None)
_encodekey = getattr(os.environ, "encodekey", None)
_decodevalue = getattr(os.environ, "decodevalue", None)
_FAST = isinstance(_data, dict) and callable(_encodekey) and callable(_decodevalue)


_keys: dict = {}  # name -> its encoded key


def get(name: str, default: str | None = None) -> str | None:
    """``os.environ.get(name, default)``."""
    if not _FAST:
        return os.environ.get(name, default)
    key = _keys.get(name)
    if key is None:
        key = _keys[name] = _encodekey(name)
    v = _data.get(key)
    return default if v is None else _decodevalue(v)
