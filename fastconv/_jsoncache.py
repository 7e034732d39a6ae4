"""The small JSON tables fastconv keeps in its cache folder (``fastconv/_ext.py: cache_dir``):
Triton's tuned launch configs (backends/triton/_tune.py) and auto's measured choices
(backends/measure.py). Several processes may add to one table: an entry is merged into what
the file holds now and written atomically (write a temporary file, rename it)."""
from __future__ import annotations

import json
import os
from pathlib import Path


def read(path: Path) -> dict:
    """The table in ``path``; empty when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def add(path: Path, key: str, value) -> dict | None:
    """Set ``key`` in the table at ``path``, keeping what other processes wrote meanwhile;
    returns the table written, or None when the folder is not writable (the entry then lives
    only in the caller's memory)."""
    try:
        table = read(path)
        table[key] = value
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
        os.replace(tmp, path)
        return table
    except OSError:
        return None
