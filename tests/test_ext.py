"""Building the extension (fastconv/_ext.py): no compiler still imports; concurrent starts build
once; a build shows its progress and log, a failed one the compiler's first errors; the CUDA
kernels are built only where a CUDA device is visible or FASTCONV_BUILD_CUDA=1 asks."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import fastconv
from fastconv import _ext


def _run(code: str, env: dict, timeout=300):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=timeout, cwd=Path(__file__).parents[1])


def test_extension_status_in_info():
    ext = fastconv.info()["extension"]
    assert set(ext) >= {"built", "cuda_kernels", "path", "error", "cuda"}
    if ext["built"]:
        assert ext["error"] is None and Path(ext["path"]).is_file()
    else:
        assert ext["error"]
    cuda = ext["cuda"]
    assert cuda["built"] or cuda["why"], cuda  # built, or says why not
    from fastconv.info import format_info

    assert "CUDA kernels" in format_info(fastconv.info())


def test_cuda_kernels_wanted_only_with_a_device_or_when_asked(monkeypatch):
    monkeypatch.setenv("FASTCONV_BUILD_CUDA", "0")
    assert _ext.cuda_wanted() == (False, "FASTCONV_BUILD_CUDA=0")
    monkeypatch.setenv("FASTCONV_BUILD_CUDA", "yes")
    with pytest.raises(ValueError, match="FASTCONV_BUILD_CUDA must be 0 or 1"):
        _ext.cuda_wanted()
    monkeypatch.delenv("FASTCONV_BUILD_CUDA")
    if not torch.cuda.is_available():
        want, why = _ext.cuda_wanted()
        assert not want and "no CUDA device is visible" in why and "FASTCONV_BUILD_CUDA=1" in why
    monkeypatch.setattr(_ext._build, "want_cuda", lambda: (True, "nvcc found"))
    monkeypatch.setenv("FASTCONV_BUILD_CUDA", "1")
    assert _ext.cuda_wanted() == (True, "nvcc found")
    # the C++ library never compiles a CUDA source
    sources, _ = _ext._sources("_C")
    assert sources and all(p.suffix == ".cpp" for p in sources)
    assert all(p.suffix == ".cu" for p in _ext._sources("_C_cuda")[0])


def test_build_progress_log_and_first_errors(tmp_path, monkeypatch, capsys):
    """A failing build: progress lines name the part, the time and the log; the error carries the
    compiler's first error line and the log's path."""
    bad = tmp_path / "bad.cpp"
    bad.write_text("int main() { return undefined_name; }\n")
    monkeypatch.setattr(_ext, "PROGRESS_EVERY_S", 0.05)
    build = tmp_path / "build"
    build.mkdir()
    kwargs = dict(name="bad", sources=[str(bad)], build_directory=str(build), with_cuda=False,
                  is_python_module=False, verbose=True)
    with pytest.raises(_ext.BuildError) as err:
        _ext._compile("C++ kernels", kwargs, build / "build.log")
    msg = str(err.value)
    assert "building the C++ kernels failed" in msg and str(build / "build.log") in msg
    assert "undefined_name" in msg and "error" in msg
    printed = capsys.readouterr().err
    assert "building the C++ kernels (once" in printed and f"log: {build / 'build.log'}" in printed
    assert "building the C++ kernels: " in printed  # a progress line while it ran


def test_first_errors_picks_the_compiler_error():
    log = "[1/3] c++ -c a.cpp\nFAILED: a.o\na.cpp:3:5: error: 'x' was not declared\n" + "noise\n" * 40
    first = _ext.first_errors(log)
    assert first.startswith("FAILED: a.o") and "'x' was not declared" in first
    assert _ext.first_errors("just\nlines") == "just\nlines"


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
        from fastconv import _ext
        log = {str(tmp_path / 'builds.log')!r}
        def fake_compile(part, kwargs, log_path):
            with open(log, "a") as f:
                f.write("build\\n")
            time.sleep(2)
            open(os.path.join(kwargs["build_directory"], "_C.so"), "w").close()
        _ext._compile = fake_compile
        torch.ops.load_library = lambda path: None
        _ext._load_jit("_C")
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
