"""Packaging of fastconv.

* ``pip install .`` (isolated build, no torch in the build environment): pure
  Python; the extension is compiled just in time on first use, against the
  torch that is installed (fastconv/_ext.py).
* ``pip install --no-build-isolation .`` with torch installed: the C++ kernels
  ``fastconv._C`` and, where nvcc is found, the CUDA kernels ``fastconv._C_cuda``
  are compiled ahead of time against that torch (``FASTCONV_AOT=0`` skips it,
  ``FASTCONV_BUILD_CUDA=0|1`` decides the CUDA part).

Either way csrc/ is shipped inside the package so that the JIT path works from a
wheel too. The build configuration is shared with the JIT path in
fastconv/_build.py.
"""
import importlib.util
import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _load_build_config():
    spec = importlib.util.spec_from_file_location("fastconv_build", ROOT / "fastconv" / "_build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class BuildPyWithSources(build_py):
    """Ship csrc/ as fastconv/csrc/ in the wheel (the JIT path compiles it)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dst = Path(self.build_lib) / "fastconv" / "csrc"
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(ROOT / "csrc", dst)


def _extensions():
    if os.environ.get("FASTCONV_AOT", "1") == "0":
        return [], {}
    try:
        import torch  # noqa: F401  (only present with --no-build-isolation)
        from torch.utils import cpp_extension
    except ImportError:
        return [], {}
    cfg = _load_build_config()
    src = ROOT / "csrc"
    kwargs = dict(
        include_dirs=[str(src)],
        extra_compile_args={"cxx": cfg.extra_cflags(), "nvcc": cfg.extra_cuda_cflags()},
        extra_link_args=cfg.extra_ldflags(),
    )
    cpp = [str(p.relative_to(ROOT)) for p in cfg.cpp_sources(src)]
    exts = [cpp_extension.CppExtension("fastconv._C", cpp, **kwargs)]
    with_cuda, why = cfg.want_cuda()
    if with_cuda:  # the CUDA kernels: a second library, loaded on the first CUDA use
        cfg.prepare_cuda_env()
        cu = [str(p.relative_to(ROOT)) for p in cfg.cuda_sources(src)]
        exts.append(cpp_extension.CUDAExtension("fastconv._C_cuda", cu, **{
            **kwargs, "include_dirs": kwargs["include_dirs"] + cfg.pip_cuda_include_dirs()}))
    else:
        print(f"fastconv: not building the CUDA kernels ({why})")
    return exts, {"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=True)}


ext_modules, cmdclass = _extensions()
cmdclass["build_py"] = BuildPyWithSources
setup(ext_modules=ext_modules, cmdclass=cmdclass)
