"""fastconv.info() and the `fastconv info` command."""
import importlib
import json
import subprocess
import sys

import torch

import fastconv


def test_info_dict():
    d = fastconv.info()
    assert d["torch"] == torch.__version__
    for key in ("triton", "cuda", "cudnn", "nvcc", "gpus", "extension", "backends", "backend"):
        assert key in d
    assert d["backends"]["reference"] is None
    assert isinstance(d["gpus"], list) and len(d["gpus"]) == torch.cuda.device_count()


def test_info_cli_text_and_json():
    text = subprocess.run([sys.executable, "-m", "fastconv", "info"], capture_output=True, text=True, timeout=600)
    assert text.returncode == 0, text.stderr
    assert "torch" in text.stdout and "extension" in text.stdout and "reference  available" in text.stdout
    js = subprocess.run([sys.executable, "-m", "fastconv", "info", "--json"], capture_output=True, text=True,
                        timeout=600)
    assert json.loads(js.stdout)["torch"] == torch.__version__


def test_cpu_id_carries_family_and_model(monkeypatch):
    """Two EPYC generations a VM names alike get different ids (auto's cache key, the results
    folder), and a CPU whose /proc/cpuinfo has no family/model falls back to the bare name."""
    info_mod = importlib.import_module("fastconv.info")  # (fastconv.info is also the function)

    def cpuinfo(fields):
        text = "".join(f"{k}\t: {v}\n" for k, v in fields.items())
        monkeypatch.setattr(info_mod, "_read", lambda path: text)

    cpuinfo({"vendor_id": "AuthenticAMD", "cpu family": 25, "model": 17, "model name": "AMD EPYC"})
    zen4 = info_mod.cpu_id()
    assert zen4 == "AMD EPYC (family 25, model 17)" and info_mod.cpu_model() == "AMD EPYC"
    cpuinfo({"model name": "AMD EPYC", "cpu family": 26, "model": 2})  # either order
    assert info_mod.cpu_id() == "AMD EPYC (family 26, model 2)" != zen4
    assert info_mod.device_name(torch.device("cpu")) == "cpu: AMD EPYC (family 26, model 2)"
    cpuinfo({"model name": "Neoverse"})
    assert info_mod.cpu_id() == "Neoverse"
