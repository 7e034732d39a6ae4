"""Environment report: ``fastconv.info()`` (a dict) and ``fastconv info`` (printed)."""
from __future__ import annotations

import platform
import shutil
import subprocess

import torch


def _nvcc_version() -> str | None:
    from . import _build

    nvcc = _build.find_nvcc()
    if not nvcc:
        return None
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if "release" in line:
            return line.split("release")[-1].strip().split(",")[0]
    return out.strip().splitlines()[-1] if out.strip() else None


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except Exception:
        return None


def _gpus() -> list[dict]:
    out = []
    if not torch.cuda.is_available():
        return out
    for i in range(torch.cuda.device_count()):
        pr = torch.cuda.get_device_properties(i)
        out.append({
            "index": i,
            "name": pr.name,
            "sms": pr.multi_processor_count,
            "memory_gib": round(pr.total_memory / 2**30, 1),
            "capability": f"{pr.major}.{pr.minor}",
        })
    return out


def info() -> dict:
    """Versions, GPUs, the extension's build state and which backends can run here."""
    from . import _ext, backends

    ext = _ext.status()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "fastconv": __import__("fastconv").__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "nvcc": _nvcc_version(),
        "compiler": shutil.which("c++") or shutil.which("g++"),
        "gpus": _gpus(),
        "extension": {k: ext[k] for k in ("built", "cuda_kernels", "path", "error", "mode")},
        "backends": backends.available(),
        "backend": backends.current(),
    }


def format_info(d: dict) -> str:
    lines = [f"fastconv {d['fastconv']}  (python {d['python']})"]
    for k in ("torch", "triton", "cuda", "cudnn", "nvcc", "compiler"):
        lines.append(f"  {k:<10} {d[k] if d[k] is not None else 'not found'}")
    if d["gpus"]:
        for g in d["gpus"]:
            lines.append(f"  gpu {g['index']}:    {g['name']}, {g['sms']} SMs, {g['memory_gib']} GiB, "
                         f"sm_{g['capability'].replace('.', '')}")
    else:
        lines.append("  gpus       none visible")
    e = d["extension"]
    if e["built"]:
        lines.append(f"  extension  built ({e['mode']}), CUDA kernels {'in' if e['cuda_kernels'] else 'not compiled in'}"
                     f": {e['path']}")
    else:
        lines.append(f"  extension  NOT built: {e['error']}")
    lines.append(f"  backend    {d['backend']} (active)")
    for name, why in d["backends"].items():
        lines.append(f"    {name:<10} {'available' if why is None else 'unavailable: ' + why}")
    return "\n".join(lines)
