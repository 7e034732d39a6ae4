"""Writes the table that the ``auto`` backend reads (fastconv/backends/autoselect.py).

    python bench/autotable.py DIR/results.json --out fastconv/backends/autotable.json

Format: ``{device name: {conv_key: entry}}``, where ``conv_key`` is the
autoselect key (input channels, weight shape, stride, groups, relu, pool,
dtype; not batch or spatial size) and ``entry`` is ``{"backend": name,
"backends": the CUDA backends of the version that measured it}``, name the
fastconv backend with the least total time over the measured layers of that
key: forward + backward where every candidate ran it, else forward.
``reference`` (cuDNN conv, then relu and pool) competes too, so ``auto`` never
picks a fused kernel that was measured slower than the unfused composition.
An entry that predates a backend (a bare name: before ``vendor``) is not
trusted: ``auto`` times that layer on first use. Entries of other devices and
other keys already in the file are kept.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

if __name__ == "__main__" and __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # run as a script: import from the checkout

import torch  # noqa: E402

from bench.model import Layer  # noqa: E402
from fastconv.backends.autoselect import conv_key, entry  # noqa: E402

CANDIDATES = ("triton", "cuda", "vendor", "reference")


def layer_key(layer: Layer, dtype: torch.dtype) -> str:
    """conv_key of the layer's conv as the backend receives it (only C, dtype and the weight shape matter)."""
    x = torch.empty((1, layer.C, 1, 1), dtype=dtype, device="meta")
    return conv_key(x, layer.w_shape(), layer.conv_params())


def best_backends(results: dict) -> dict[str, str]:
    """{conv_key: backend} from one run's rows (empty unless a CUDA run timed a candidate)."""
    if results.get("device_type") != "cuda":
        return {}
    dtype = getattr(torch, results["config"]["dtype"])
    times = {(r["suite"], r["layer"], r["provider"], r["pass"]): r["median_ms"]
             for r in results["rows"] if r["status"] == "ok" and r["provider"] in CANDIDATES}
    totals: dict[str, dict[str, dict[str, float]]] = {}  # key -> pass -> backend -> ms
    for la in results["layers"]:
        fields = {k: v for k, v in la.items() if k in Layer.__dataclass_fields__}
        if fields.get("post_pool") is not None:
            fields["post_pool"] = tuple(fields["post_pool"])
        layer = Layer(**fields)
        key = layer_key(layer, dtype)
        for pass_ in ("fwdbwd", "fwd"):
            ran = {b: times[(la["suite"], layer.name, b, pass_)] for b in CANDIDATES
                   if (la["suite"], layer.name, b, pass_) in times}
            for b, ms in ran.items():
                totals.setdefault(key, {}).setdefault(pass_, {}).setdefault(b, 0.0)
                totals[key][pass_][b] += ms
    best = {}
    for key, per_pass in totals.items():
        for pass_ in ("fwdbwd", "fwd"):
            t = per_pass.get(pass_, {})
            if t:
                best[key] = min(t, key=t.get)
                break
    return best


def write_table(results: dict, path: Path) -> dict:
    """Merge this run's choices into the table at path; returns the whole table."""
    path = Path(path)
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    best = best_backends(results)
    if best:  # each entry names the CUDA backends this version has (autoselect.table_choice)
        table.setdefault(results["device"], {}).update({k: entry(b) for k, b in best.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    return table


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="a results.json of bench/bench_layers.py")
    ap.add_argument("--out", type=Path, required=True, help="the table to write (merged if it exists)")
    args = ap.parse_args(argv)
    results = json.loads(args.results.read_text())
    table = write_table(results, args.out)
    mine = table.get(results["device"], {})
    print(f"auto table {args.out}: {len(best_backends(results))} entries from this run, "
          f"{len(mine)} for {results['device']}")
    for key, backend in sorted(best_backends(results).items()):
        print(f"  {key} -> {backend}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
