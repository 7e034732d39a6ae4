"""Building fastconv._C: no compiler still imports; concurrent starts build once."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import fastconv


def _run(code: str, env: dict, timeout=300):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=timeout, cwd=Path(__file__).parents[1])


def test_extension_status_in_info():
    ext = fastconv.info()["extension"]
    assert set(ext) >= {"built", "cuda_kernels", "path", "error"}
    if ext["built"]:
        assert ext["error"] is None and Path(ext["path"]).is_file()
    else:
        assert ext["error"]


def test_no_compiler_still_imports_and_reference_serves(tmp_path):
    out = _run("""
        import torch, fastconv
        y = fastconv.conv2d(torch.randn(1, 2, 6, 6), torch.randn(3, 2, 3, 3), activation="relu", pool=2)
        d = fastconv.info()
        print("SHAPE", tuple(y.shape))
        print("BUILT", d["extension"]["built"])
        print("CPU", d["backends"]["cpu"])
        """, {"FASTCONV_CACHE_DIR": str(tmp_path), "CXX": "/nonexistent/c++", "CC": "/nonexistent/cc",
              "FASTCONV_BUILD_CUDA": "0"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SHAPE (1, 3, 2, 2)" in out.stdout
    assert "BUILT False" in out.stdout
    assert "CPU the C++ extension is not built" in out.stdout
    cli = subprocess.run([sys.executable, "-m", "fastconv", "info"], capture_output=True, text=True,
                         env={**os.environ, "FASTCONV_CACHE_DIR": str(tmp_path), "CXX": "/nonexistent/c++",
                              "FASTCONV_BUILD_CUDA": "0"}, cwd=Path(__file__).parents[1], timeout=300)
    assert cli.returncode == 0 and "extension  NOT built" in cli.stdout


def test_processes_starting_together_build_once(tmp_path):
    """Three processes race for an empty cache: exactly one compiles, all load the result."""
    code = f"""
        import os, time, torch
        from torch.utils import cpp_extension
        from fastconv import _ext
        log = {str(tmp_path / 'builds.log')!r}
        def fake_load(name, sources, build_directory, **kw):
            with open(log, "a") as f:
                f.write("build\\n")
            time.sleep(2)
            open(os.path.join(build_directory, "_C.so"), "w").close()
        cpp_extension.load = fake_load
        torch.ops.load_library = lambda path: None
        _ext._load_jit()
        print("MODE", _ext._status["mode"])
        """
    env = {"FASTCONV_CACHE_DIR": str(tmp_path / "cache"), "FASTCONV_BUILD_CUDA": "0"}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
                              cwd=Path(__file__).parents[1]) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert all("MODE jit" in o[0] for o in outs)
    assert (tmp_path / "builds.log").read_text().count("build") == 1
    assert sum("building fastconv._C (once)" in o[1] for o in outs) == 1
