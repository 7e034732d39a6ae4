"""fastconv.info() and the `fastconv info` command."""
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
