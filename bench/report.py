"""Outputs of a benchmark run: results.json, results.md, speedup.png and a short printed table.

    python bench/report.py DIR     # re-render DIR/results.md and DIR/speedup.png from
                                   # DIR/results.json (+ DIR/train.json) and print the table

Cells of the Markdown tables read ``median ms (xS, R%)``: S = eager time /
this time (> 1 is faster than eager PyTorch), R = % of the roofline floor
(bench/model.py).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

if __name__ == "__main__" and __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # run as a script: import from the checkout

from bench.model import PASSES  # noqa: E402

PROVIDER_ORDER = ("eager", "compile", "auto", "triton", "cuda", "vendor", "cpu", "reference")
PASS_TITLE = {"fwd": "forward", "bwd": "backward", "fwdbwd": "forward + backward"}


def write_json(obj: dict, path: Path) -> None:
    """Atomically (a killed run never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    tmp.replace(path)


def _providers(results: dict) -> list[str]:
    present = {r["provider"] for r in results["rows"]}
    return [p for p in PROVIDER_ORDER if p in present]


def _layers(results: dict) -> list[tuple[str, str]]:
    seen = []
    for r in results["rows"]:
        key = (r["suite"], r["layer"])
        if key not in seen:
            seen.append(key)
    return seen


def _index(results: dict) -> dict:
    return {(r["suite"], r["layer"], r["provider"], r["pass"]): r for r in results["rows"]}


def _fmt_x(v: Optional[float]) -> str:
    return "-" if v is None else f"x{v:.2f}"


def _label(results: dict, provider: str) -> str:
    if provider == "eager":
        return "eager (cuDNN)" if results.get("device_type") == "cuda" else "eager (aten)"
    if provider == "compile":
        return f"compile ({results['config'].get('compile_mode')})"
    return provider


def _cell(r: Optional[dict]) -> str:
    if r is None:
        return ""
    if r["status"] != "ok":
        return r["status"]
    s = f"{r['median_ms']:.3f}"
    if r.get("speedup_vs_eager") is not None and r["provider"] != "eager":
        s += f" ({_fmt_x(r['speedup_vs_eager'])}, {r['roofline_pct']:.0f}%)"
    else:
        s += f" ({r['roofline_pct']:.0f}%)"
    return s


def _header(results: dict) -> list[str]:
    v = results["versions"]
    cfg = results["config"]
    pk = results.get("peaks") or {}
    lines = [
        f"Device: **{results['device']}**, {results['date']}. fastconv {v['fastconv']}, torch {v['torch']}, "
        f"triton {v['triton']}, CUDA {v['cuda']}, cuDNN {v['cudnn']}"
        + (f", driver {v['driver']}" if v.get("driver") else "") + f", Python {v['python']}.",
        f"dtype {cfg['dtype']}" + (" (TF32)" if cfg.get("tf32") else "") + f", {cfg['layout']}"
        + (", cudnn.benchmark" if cfg.get("cudnn_benchmark") else "")
        + (f", {cfg['threads']} CPU threads" if results.get("device_type") == "cpu" else "")
        + (f", malloc {cfg['malloc']}" if cfg.get("malloc", "default") != "default" else "")
        + (f", Inductor simdlen {cfg['inductor_simdlen']}" if cfg.get("inductor_simdlen") else "")
        + (f", C++ kernels {cpu['isa']} (CPU's widest {cpu['isa_native']}; family {cpu.get('family')} "
           f"model {cpu.get('model_number')})" + (f", ATen {cpu['aten_isa']}" if cpu.get("aten_isa") else "")
           + (f", oneDNN <= {cpu['onednn_max_isa']}" if cpu.get("onednn_max_isa") else "")
           if (cpu := results.get("cpu")) and cpu.get("isa") else "")
        + f". Peaks measured in this run: {pk.get('matmul_tflops', 0):.2f} TFLOP/s "
        f"({pk.get('matmul_dtype')} matmul), {pk.get('copy_gbps', 0):.1f} GB/s (copy, bytes read + written).",
    ]
    if not results.get("complete", True):
        lines.append("**Partial run**: the run stopped before its last layer.")
    return lines


def _summary_line(results: dict) -> str:
    s = results.get("summary") or {}
    if not s.get("provider"):
        return "No fastconv provider ran a layer."
    return (f"**{s['provider']} vs eager**: forward geomean {_fmt_x(s.get('geomean_fwd_vs_eager'))} "
            f"(min {_fmt_x(s.get('min_fwd_vs_eager'))}), backward {_fmt_x(s.get('geomean_bwd_vs_eager'))}, "
            f"forward + backward {_fmt_x(s.get('geomean_fwdbwd_vs_eager'))} over "
            f"{s.get('layers_fwd_vs_eager') or 0} layers; **vs torch.compile**: forward "
            f"{_fmt_x(s.get('geomean_fwd_vs_compile'))}, forward + backward "
            f"{_fmt_x(s.get('geomean_fwdbwd_vs_compile'))}.")


def _notes(results: dict) -> list[str]:
    seen = {}
    for r in results["rows"]:
        if r["status"] != "ok":
            key = (r["provider"], r["status"], r["note"])
            seen.setdefault(key, []).append(f"{r['layer']} {r['pass']}")
    out = []
    for (p, status, note), where in seen.items():
        n_layers = len({w.rsplit(' ', 1)[0] for w in where})
        out.append(f"- `{p}` {status} on {n_layers} layer(s) ({where[0]}{', ...' if len(where) > 1 else ''}): "
                   f"{note}")
    return out


def train_lines(train: Optional[dict]) -> list[str]:
    if not train:
        return []
    c = train.get("config", {})
    lines = ["", "## Training step"]
    if c.get("batch"):
        lines += ["", f"Reference CNN (widths {c.get('widths')}), batch {c['batch']}, {c.get('image_size')}x"
                      f"{c.get('image_size')}x{c.get('in_channels')}, {c.get('precision')}, {c.get('layout')}, "
                      f"{c.get('optimizer')}; median of {c.get('steps')} steps (host overhead included; host ms: the step's Python until it returns)."]
    if train.get("status") != "ok":
        return lines + ["", f"Not measured: {train.get('note')}"]
    lines += ["", "| variant | step ms | host ms | images/s | peak memory MB | vs torch eager | note |",
              "|---|---|---|---|---|---|---|"]
    eager = next((v for v in train["variants"] if v["name"] == "torch-eager" and v["status"] == "ok"), None)
    for v in train["variants"]:
        if v["status"] != "ok":
            lines.append(f"| {v['name']} | {v['status']} | | | | | {v.get('note', '')} |")
            continue
        rel = _fmt_x(eager["step_ms"] / v["step_ms"]) if eager else "-"
        mem = "-" if v.get("peak_mem_mb") is None else f"{v['peak_mem_mb']:.0f}"
        host = "-" if v.get("host_ms") is None else f"{v['host_ms']:.2f}"
        lines.append(f"| {v['name']} | {v['step_ms']:.2f} | {host} | {v['images_per_s']:.0f} | {mem} | {rel} | "
                     f"{v.get('note', '')} |")
    return lines


def markdown(results: dict, train: Optional[dict] = None, plot_name: Optional[str] = "speedup.png") -> str:
    idx = _index(results)
    provs = _providers(results)
    layers = _layers(results)
    shapes = {(la["suite"], la["name"]): la["shape"] for la in results.get("layers", [])}
    lines = [f"# fastconv benchmarks: {results['device']}", "", *_header(results), "", _summary_line(results), "",
             "Cells: median ms (speedup vs eager, % of the roofline floor); floor = max(FLOPs / peak, "
             "min bytes / bandwidth), bench/model.py."]
    if plot_name:
        lines += ["", f"![speedup per layer]({plot_name})"]
    for pass_ in results["config"]["passes"]:
        lines += ["", f"## {PASS_TITLE[pass_]}", "",
                  "| suite | layer | shape | floor ms | " + " | ".join(_label(results, p) for p in provs) + " |",
                  "|---|---|---|---|" + "---|" * len(provs)]
        for suite, layer in layers:
            floor = next((r["floor_ms"] for p in provs
                          if (r := idx.get((suite, layer, p, pass_))) and r["status"] == "ok"), None)
            cells = [_cell(idx.get((suite, layer, p, pass_))) for p in provs]
            lines.append(f"| {suite} | {layer} | {shapes.get((suite, layer), '')} | "
                         f"{'-' if floor is None else f'{floor:.4f}'} | " + " | ".join(cells) + " |")
    mem_pass = "fwdbwd" if "fwdbwd" in results["config"]["passes"] else results["config"]["passes"][-1]
    if any(r.get("peak_mem_mb") is not None for r in results["rows"]):
        lines += ["", f"## peak memory of one {PASS_TITLE[mem_pass]} (MB above the inputs)", "",
                  "| suite | layer | " + " | ".join(_label(results, p) for p in provs) + " |",
                  "|---|---|" + "---|" * len(provs)]
        for suite, layer in layers:
            cells = []
            for p in provs:
                r = idx.get((suite, layer, p, mem_pass))
                ok = r is not None and r["status"] == "ok" and r.get("peak_mem_mb") is not None
                cells.append(f"{r['peak_mem_mb']:.1f}" if ok else "")
            lines.append(f"| {suite} | {layer} | " + " | ".join(cells) + " |")
    notes = _notes(results)
    if notes:
        lines += ["", "## Not timed", "", *notes]
    lines += train_lines(train)
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> Optional[str]:
    """Speedup vs eager per layer and provider (one panel per pass), with the roofline
    bound (eager time / floor: the speedup of a kernel at the roofline). Returns why not, if not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return f"matplotlib unavailable: {e}"
    idx = _index(results)
    layers = _layers(results)
    ran = {r["provider"] for r in results["rows"] if r["status"] == "ok" and r.get("speedup_vs_eager")}
    provs = [p for p in _providers(results) if p != "eager" and p in ran]
    passes = results["config"]["passes"]
    if not layers or not provs:
        return "nothing to plot"
    fig, axes = plt.subplots(len(passes), 1, figsize=(max(6.0, 1.1 * len(layers) + 2), 3.2 * len(passes)),
                             squeeze=False)
    width = 0.8 / len(provs)
    for ax, pass_ in zip(axes[:, 0], passes):
        for j, p in enumerate(provs):
            xs, ys = [], []
            for i, (s, la) in enumerate(layers):
                r = idx.get((s, la, p, pass_))
                if r and r["status"] == "ok" and r.get("speedup_vs_eager"):
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ys.append(r["speedup_vs_eager"])
            ax.bar(xs, ys, width, label=p)
        for i, (s, la) in enumerate(layers):
            e = idx.get((s, la, "eager", pass_))
            if e and e["status"] == "ok":
                ax.hlines(e["median_ms"] / e["floor_ms"], i - 0.45, i + 0.45, colors="k", linestyles="--",
                          label="roofline bound" if i == 0 else None)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_ylabel(f"{pass_}: speedup vs eager")
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels([la for _, la in layers], rotation=30, ha="right", fontsize=8)
        ax.legend(fontsize=7, ncol=len(provs) + 1)
    fig.suptitle(f"fastconv vs eager PyTorch: {results['device']}, {results['config']['dtype']}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def table(results: dict, train: Optional[dict] = None) -> str:
    """The short table printed last: median ms per layer and pass, xS vs eager."""
    idx = _index(results)
    provs = _providers(results)
    out = [f"{results['device']} | {results['config']['dtype']} {results['config']['layout']} | "
           f"torch {results['versions']['torch']} | {results['date']}"]
    head = f"{'layer':<26} {'pass':<6} " + " ".join(f"{p[:15]:>15}" for p in provs)
    out += [head, "-" * len(head)]
    for suite, layer in _layers(results):
        for pass_ in PASSES:
            if pass_ not in results["config"]["passes"]:
                continue
            cells = []
            for p in provs:
                r = idx.get((suite, layer, p, pass_))
                if r is None:
                    cells.append(f"{'':>15}")
                elif r["status"] != "ok":
                    cells.append(f"{r['status']:>15}")
                elif p == "eager" or r.get("speedup_vs_eager") is None:
                    cells.append(f"{r['median_ms']:>9.3f} ms    ")
                else:
                    cells.append(f"{r['median_ms']:>7.3f} {_fmt_x(r['speedup_vs_eager']):>7}")
            out.append(f"{layer[:26]:<26} {pass_:<6} " + " ".join(cells))
    out.append(_summary_line(results).replace("**", ""))
    if train:
        if train.get("status") == "ok":
            parts = [f"{v['name']} {v['step_ms']:.2f} ms (host {v.get('host_ms', float('nan')):.2f})"
                     if v["status"] == "ok" else f"{v['name']} {v['status']}" for v in train["variants"]]
            out.append("train step: " + ", ".join(parts))
        else:
            out.append(f"train step: not measured ({train.get('note')})")
    return "\n".join(out)


def write_all(results: dict, out_dir: Path, train: Optional[dict] = None) -> None:
    """results.json, results.md and speedup.png in out_dir."""
    out_dir = Path(out_dir)
    write_json(results, out_dir / "results.json")
    why_not = plot(results, out_dir / "speedup.png")
    (out_dir / "results.md").write_text(markdown(results, train, None if why_not else "speedup.png"))


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path, help="folder with results.json (and train.json)")
    ap.add_argument("--no-render", action="store_true", help="only print the table")
    args = ap.parse_args(argv)
    res_path, train_path = args.dir / "results.json", args.dir / "train.json"
    train = json.loads(train_path.read_text()) if train_path.is_file() else None
    if not res_path.is_file():
        print(f"no {res_path}")
        if train:
            print("\n".join(train_lines(train)))
        return 1
    results = json.loads(res_path.read_text())
    if not args.no_render:
        why_not = plot(results, args.dir / "speedup.png")
        (args.dir / "results.md").write_text(markdown(results, train, None if why_not else "speedup.png"))
    print(table(results, train))
    return 0


if __name__ == "__main__":
    sys.exit(main())
