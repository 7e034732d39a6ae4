"""Environment report: ``fastconv.info()`` (a dict) and ``fastconv info`` (printed).

Its parts serve the benchmarks too (``bench/harness.py``), so every result names the machine
the same way: ``versions()``, ``cpu()`` (model, the vector ISA the C++ kernels run, threads),
``gpus()`` and ``device_name(device)``.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess

import torch

_ISAS = ("base", "avx2", "avx512")


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


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _cpuinfo_field(name: str) -> str | None:
    for line in _read("/proc/cpuinfo").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == name:  # exact: "model" must not match "model name"
            return value.strip()
    return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what platform knows."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_id() -> str:
    """The CPU model name with its x86 family and model numbers where ``/proc/cpuinfo`` has them:
    virtual machines often name every EPYC just "AMD EPYC", though Zen 3 (family 25 model 1), Zen 4
    (25/17) and Zen 5 (26/2) differ in what is fastest. It keys the measured auto choices and names
    a CPU's folder of benchmark results; the bare name is what the user reads (``cpu_model``)."""
    family, number = _cpuinfo_field("cpu family"), _cpuinfo_field("model")
    if family is None or number is None:
        return cpu_model()
    return f"{cpu_model()} (family {family}, model {number})"


def native_isa() -> str:
    """The widest vector ISA of this CPU that the C++ kernels have a copy for
    (the rule of csrc/cpu/cpu_kernel.h: avx512 needs avx512f/vl/bw/dq, avx2 needs avx2 and fma)."""
    if platform.machine() not in ("x86_64", "AMD64", "i686", "x86"):
        return "base"
    flags = set((_cpuinfo_field("flags") or "").split())
    if {"avx512f", "avx512vl", "avx512bw", "avx512dq"} <= flags:
        return "avx512"
    if {"avx2", "fma"} <= flags:
        return "avx2"
    return "base"


def cpu_isa() -> str:
    """The ISA the C++ kernels run: the native one, lowered (never raised) by FASTCONV_CPU_ISA."""
    native = native_isa()
    want = os.environ.get("FASTCONV_CPU_ISA", "").strip()
    if want not in _ISAS:
        return native
    return want if _ISAS.index(want) < _ISAS.index(native) else native


def cpu() -> dict:
    """The CPU: model, the ISA its kernels run (and the native one), the one ATen's kernels run
    (``ATEN_CPU_CAPABILITY`` lowers it; ``ONEDNN_MAX_CPU_ISA`` lowers oneDNN's), threads and cores."""
    return {"model": cpu_model(), "family": _cpuinfo_field("cpu family"), "model_number": _cpuinfo_field("model"),
            "isa": cpu_isa(), "isa_native": native_isa(), "aten_isa": torch.backends.cpu.get_cpu_capability().lower(),
            "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"), "threads": torch.get_num_threads(),
            "cores": os.cpu_count()}


def device_name(device: torch.device) -> str:
    """A GPU's name, or ``cpu: <model>``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu: " + cpu_id()


def kernels(backend: str, device: torch.device) -> str:
    """What runs a model's layers, in words: the backend and the GPU, or the CPU and, for the
    ``cpu`` backend, the ISA of its C++ kernels (the first line of ``fastconv train``)."""
    if device.type == "cuda":
        where = f"on {torch.cuda.get_device_name(device)}"
    else:
        where = f"on {cpu_model()}, {torch.get_num_threads()} thread{'' if torch.get_num_threads() == 1 else 's'}"
    if backend == "torch":
        return f"torch.nn layers {where}"
    from . import backends
    from .backends import measure

    auto = ""
    if backends.current() == "auto" and measure.enabled():
        auto = " (auto: each layer timed against PyTorch on its first call, the faster kept)"
    if backend == "cpu":
        return f"fastconv cpu backend ({cpu_isa()} C++ kernels) {where}{auto}"
    return f"fastconv {backend} backend {where}{auto}"


def driver_version() -> str | None:
    """The NVIDIA driver's version (``nvidia-smi``), None without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0] if out.returncode == 0 and lines else None


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except Exception:
        return None


def gpus() -> list[dict]:
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
            "l2_mb": round(getattr(pr, "L2_cache_size", 0) / 2**20, 1),
        })
    return out


def versions() -> dict:
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"fastconv": __import__("fastconv").__version__, "python": platform.python_version(),
            "torch": torch.__version__, "triton": _triton_version(), "cuda": torch.version.cuda, "cudnn": cudnn}


def info() -> dict:
    """Versions, the CPU and GPUs, the extension's build state and which backends can run here."""
    from . import _ext, backends

    ext = _ext.status()
    return {
        **versions(),
        "nvcc": _nvcc_version(),
        "compiler": shutil.which("c++") or shutil.which("g++"),
        "cpu": cpu(),
        "gpus": gpus(),
        "extension": {k: ext[k] for k in ("built", "cuda_kernels", "path", "error", "mode", "cuda")},
        "backends": backends.available(),
        "backend": backends.current(),
        "auto_choices": _auto_choices(),
    }


def _auto_choices() -> dict:
    from .backends import measure

    return measure.cached()


def format_info(d: dict) -> str:
    lines = [f"fastconv {d['fastconv']}  (python {d['python']})"]
    for k in ("torch", "triton", "cuda", "cudnn", "nvcc", "compiler"):
        lines.append(f"  {k:<10} {d[k] if d[k] is not None else 'not found'}")
    c = d["cpu"]
    isa = c["isa"] if c["isa"] == c["isa_native"] else f"{c['isa']} (lowered from {c['isa_native']} by FASTCONV_CPU_ISA)"
    lines.append(f"  cpu        {c['model']}, {c['cores']} cores, {c['threads']} threads, kernels for {isa}, ATen's for {c['aten_isa']}")
    if d["gpus"]:
        for g in d["gpus"]:
            lines.append(f"  gpu {g['index']}:    {g['name']}, {g['sms']} SMs, {g['memory_gib']} GiB, "
                         f"sm_{g['capability'].replace('.', '')}")
    else:
        lines.append("  gpus       none visible")
    e = d["extension"]
    if e["built"]:
        lines.append(f"  extension  C++ kernels built ({e['mode']}): {e['path']}")
        c = e["cuda"]
        if c["built"]:
            lines.append(f"             CUDA kernels built ({c['mode']}): {c['path']}")
        else:
            lines.append(f"             CUDA kernels not built: {c['why']}")
    else:
        lines.append(f"  extension  NOT built: {e['error']}")
    lines.append(f"  backend    {d['backend']} (active)")
    from .backends import measure

    choices = d.get("auto_choices") or {}
    counts = {}
    for name in choices.values():
        counts[name] = counts.get(name, 0) + 1
    what = ", ".join(f"{n} {name}" for name, n in sorted(counts.items())) or "none yet"
    lines.append(f"  auto       {len(choices)} measured choice{'' if len(choices) == 1 else 's'} for this machine "
                 f"({what}) in {measure.path()}"
                 f"{'' if measure.enabled() else '; measuring is off (FASTCONV_AUTO_MEASURE=0)'}")
    for name, why in d["backends"].items():
        lines.append(f"    {name:<10} {'available' if why is None else 'unavailable: ' + why}")
    return "\n".join(lines)
