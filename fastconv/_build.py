"""Build configuration of the extension ``fastconv._C``, shared by the JIT path
(``fastconv/_ext.py``) and the ahead-of-time path (``setup.py``).

This module imports nothing from fastconv so that ``setup.py`` can load it by
path. It decides:

* which sources make up the two libraries: ``fastconv._C`` is
  ``csrc/fastconv.cpp`` and every ``csrc/cpu/*.cpp``; ``fastconv._C_cuda`` is
  every ``csrc/cuda/*.cu``;
* whether the CUDA kernels can be built: ``FASTCONV_BUILD_CUDA=0|1`` forces it,
  otherwise whenever torch is a CUDA build and nvcc is found (a GPU is not
  needed to compile; ``fastconv/_ext.py`` builds them just in time only where a
  CUDA device is visible or FASTCONV_BUILD_CUDA=1 asks);
* ``CUDA_HOME``: the environment's, else the toolkit beside ``nvcc`` on PATH;
* the pip CUDA headers (``site-packages/nvidia/cu13/include``) when present;
* ``TORCH_CUDA_ARCH_LIST``: honoured, default ``9.0+PTX``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

DEFAULT_ARCH_LIST = "9.0+PTX"


def source_root() -> Path:
    """Folder holding csrc/: the checkout's, or the copy shipped in the wheel."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "csrc", here / "csrc"):
        if (cand / "fastconv.cpp").is_file():
            return cand
    raise FileNotFoundError(
        f"fastconv C++ sources not found (looked in {here.parent / 'csrc'} and {here / 'csrc'})"
    )


def cpp_sources(root: Path) -> list[Path]:
    return [root / "fastconv.cpp"] + sorted((root / "cpu").glob("*.cpp"))


def cuda_sources(root: Path) -> list[Path]:
    return sorted((root / "cuda").glob("*.cu"))


def find_nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").is_file():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _is_toolkit(path: Path) -> bool:
    return (path / "bin" / "nvcc").is_file() and (path / "include" / "cuda_runtime.h").is_file()


def _nvcc_here(nvcc: str) -> Path | None:
    """The folder nvcc really runs from (it may be a wrapper script): nvcc says so."""
    try:
        out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (out.stdout + out.stderr).splitlines():
        if line.startswith("#$ _HERE_="):
            return Path(line.split("=", 1)[1].strip())
    return None


def cuda_home() -> str | None:
    """CUDA_HOME from the environment, else the toolkit beside nvcc."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and Path(home).is_dir():
        return home
    nvcc = shutil.which("nvcc")
    if nvcc:
        for cand in (Path(nvcc).resolve().parent.parent, (_nvcc_here(nvcc) or Path("/nonexistent")).parent):
            if _is_toolkit(cand):
                return str(cand)
    if _is_toolkit(Path("/usr/local/cuda")):
        return "/usr/local/cuda"
    return None


def want_cuda() -> tuple[bool, str]:
    """(build CUDA sources?, why)."""
    import torch

    forced = os.environ.get("FASTCONV_BUILD_CUDA")
    if forced is not None and forced.strip() not in ("", "0", "1"):
        raise ValueError(f"FASTCONV_BUILD_CUDA must be 0 or 1, got {forced!r}")
    if forced == "0":
        return False, "FASTCONV_BUILD_CUDA=0"
    if torch.version.cuda is None:
        if forced == "1":
            raise RuntimeError("FASTCONV_BUILD_CUDA=1 but the installed torch is not a CUDA build")
        return False, "torch is a CPU-only build"
    if cuda_home() is None or find_nvcc() is None:
        if forced == "1":
            raise RuntimeError("FASTCONV_BUILD_CUDA=1 but nvcc was not found (set CUDA_HOME)")
        return False, "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
    return True, "nvcc and a CUDA build of torch are present"


def pip_cuda_include_dirs() -> list[str]:
    out = []
    for base in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        inc = Path(base) / "nvidia" / "cu13" / "include"
        if inc.is_dir():
            out.append(str(inc))
    return out


def arch_list() -> str:
    return os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_ARCH_LIST


def extra_cflags() -> list[str]:
    flags = ["-O3"]  # the C++ standard is torch's own choice (C++20 for recent torch)
    if sys.platform != "win32":
        flags += ["-fopenmp"] if _openmp_ok() else []
    return flags


def extra_ldflags() -> list[str]:
    return ["-fopenmp"] if sys.platform != "win32" and _openmp_ok() else []


def extra_cuda_cflags() -> list[str]:
    return ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]


def _openmp_ok() -> bool:
    # at::parallel_for uses OpenMP when torch was built with it (Linux wheels are).
    return sys.platform.startswith("linux")


def prepare_cuda_env() -> None:
    """Make torch.utils.cpp_extension see CUDA_HOME and the arch list."""
    home = cuda_home()
    if home:
        os.environ["CUDA_HOME"] = home
        import torch.utils.cpp_extension as ce

        ce.CUDA_HOME = home  # torch guessed it at import time, maybe from a wrapper script
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list()
