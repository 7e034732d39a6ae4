"""The triton backend's launch configs (fastconv/backends/triton/configs.py) and
their choice (_tune.py): pinned configs, the on-disk tuning cache, the rules of
the candidate lists, split-K, and on a GPU every candidate against the oracle."""
import importlib
import json
from unittest import mock

import pytest
import torch

from triton_cases import DEV, EXTRA_CASES, GPU_REALISTIC, TRITON_TESTS

from fastconv.backends.triton import _tune, configs  # noqa: E402
from oracle import CONV_CASES, POOL_CASES, ConvCase, check_conv, check_pool  # noqa: E402

pytestmark = TRITON_TESTS


def test_pinned_config_parsing(monkeypatch):
    spec = "BLOCK_M=128,BLOCK_N=64,BLOCK_K=32,num_warps=4,num_stages=3"
    monkeypatch.setenv(_tune.ENV_PIN, spec)
    for kernel in ("conv2d_fwd", "conv2d_dgrad", "conv2d_wgrad"):
        assert _tune.pinned(kernel) == dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3)
    assert _tune.pinned("max_pool2d_fwd") is None  # it has no BLOCK_K
    monkeypatch.setenv(_tune.ENV_PIN, "max_pool2d_fwd: BLOCK_M=32; relu:num_warps=2")
    assert _tune.pinned("max_pool2d_fwd") == {"BLOCK_M": 32} and _tune.pinned("relu") == {"num_warps": 2}
    for bad, msg in [("BLOCK_M=96", "power of two"), ("BLOCK_Q=16", "not a tunable key"),
                     ("conv:BLOCK_M=16", "unknown kernel"), ("BLOCK_M", "KEY=positive int"),
                     ("conv2d_fwd:BLOCK_K=8", "must be >= 16")]:
        monkeypatch.setenv(_tune.ENV_PIN, bad)
        with pytest.raises(ValueError, match=msg):
            _tune.pinned("conv2d_fwd")


def test_pinned_small_tiles_still_match_oracle(monkeypatch):
    """Small pinned tiles: several row/column tiles and reduction steps per launch."""
    monkeypatch.setenv(_tune.ENV_PIN, "BLOCK_M=32,BLOCK_N=16,BLOCK_K=16,num_warps=4,num_stages=1;"
                                      "conv2d_depthwise_fwd:BLOCK_M=16,BLOCK_N=4;max_pool2d_bwd:BLOCK_M=16,BLOCK_N=2")
    check_conv("triton", ConvCase(1, 20, 6, 7, 24, 3, 3, dict(padding=1, activation="relu", pool=3)),
               torch.float32, DEV)
    check_conv("triton", ConvCase(2, 32, 7, 6, 16, 3, 3, dict(padding=1, stride=2, pool=2)),  # wgrad ONE_TAP
               torch.float32, DEV)
    check_conv("triton", CONV_CASES[8], torch.float32, DEV)
    check_pool("triton", POOL_CASES[2], torch.float32, DEV)


@pytest.mark.parametrize("case, fused", [
    (CONV_CASES[0], True),                 # C*R*S = 27: one column tile, bias fused
    (EXTRA_CASES[2], True),                # two row tiles (K = 72)
    (ConvCase(2, 16, 8, 8, 8, 3, 3, dict(padding=1, activation="relu", pool=2)), False),  # 144 columns
], ids=str)
def test_wgrad_split_k_and_fused_bias_match_oracle(case, fused, monkeypatch):
    """wgrad split over three reduction chunks (fp32 atomics, then one cast: on the CPU only
    when forced), with the bias gradient fused into it or from its own reduction."""
    conv2d_wgrad = importlib.import_module("fastconv.backends.triton.conv2d_wgrad")  # the module

    monkeypatch.setattr(conv2d_wgrad, "split_count", lambda *a: 3)
    monkeypatch.setenv(_tune.ENV_PIN, "conv2d_wgrad:BLOCK_K=16")
    launches = []
    kernel = conv2d_wgrad._conv2d_wgrad_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kw):
                launches.append((grid[1], kw["ATOMIC"], kw["HAS_DB"]))
                return kernel[grid](*args, **kw)
            return launch

    monkeypatch.setattr(conv2d_wgrad, "_conv2d_wgrad_kernel", Spy())
    check_conv("triton", case, torch.float32, DEV)
    assert launches and all(split == 3 and atomic for split, atomic, _ in launches), launches
    assert all(has_db == fused for _, _, has_db in launches), launches


def test_tuning_cache_on_disk(monkeypatch, tmp_path):
    path = tmp_path / "tune.json"
    monkeypatch.setenv(_tune.ENV_CACHE, str(path))
    monkeypatch.delenv(_tune.ENV_PIN, raising=False)
    monkeypatch.setattr(_tune, "_disk", None)
    monkeypatch.setattr(_tune, "_memory", {})
    cands = [dict(BLOCK_M=64, num_warps=4), dict(BLOCK_M=128, num_warps=4)]
    dev = torch.device("cpu")
    assert _tune.choose("relu", ("k",), cands, lambda c: None, dev) == cands[0]  # nothing cached, no tuning
    _tune._save(_tune._full_key("relu", ("k",), dev), cands[1])
    monkeypatch.setattr(_tune, "_disk", None)
    assert json.loads(path.read_text())[_tune._full_key("relu", ("k",), dev)] == cands[1]
    assert _tune.choose("relu", ("k",), cands, lambda c: None, dev) == cands[1]  # read back from disk
    stale = [dict(BLOCK_M=256, num_warps=8), cands[0]]
    assert _tune.choose("relu", ("k",), stale, lambda c: None, dev) == stale[0]  # cached one is no candidate


def test_config_lists_keep_the_rules():
    """GPU candidate lists (built here without a GPU): dot tiles >= 16, powers of two, shared
    memory in budget, num_warps 8 only for 1x1 filters, BLOCK_M holds the pool window rows."""
    real = configs.INTERPRET
    cached = [configs.conv2d_fwd_configs, configs.conv2d_dgrad_configs, configs.conv2d_wgrad_configs]
    try:
        configs.INTERPRET = False
        for f in cached:
            f.cache_clear()
        for one_by_one in (False, True):
            lists = [configs.conv2d_fwd_configs(10**6, 64, 64, 16, 2, one_by_one),
                     configs.conv2d_fwd_configs(3000, 4, 27, 4, 4, one_by_one),
                     configs.conv2d_dgrad_configs(10**5, 128, 256, 2, one_by_one),
                     configs.conv2d_wgrad_configs(512, 4608, 10**6, 2, one_by_one)]
            for cfgs in lists:
                assert cfgs
                for c in cfgs:
                    assert min(c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"]) >= 16
                    assert all(c[k] & (c[k] - 1) == 0 for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
                    assert c["num_stages"] * (c["BLOCK_M"] + c["BLOCK_N"]) * c["BLOCK_K"] * 4 <= 2 * configs.SMEM_BUDGET
                    assert c["num_warps"] == 4 or one_by_one
        assert all(c["BLOCK_M"] >= 16 for c in configs.conv2d_fwd_configs(100, 8, 8, 16, 2, False))
        assert max(c["BLOCK_N"] for c in configs.conv2d_fwd_configs(10**6, 4, 27, 4, 2, False)) == 16
    finally:
        configs.INTERPRET = real
        for f in cached:
            f.cache_clear()


def _candidates(kernel, case):
    """The configs the launcher offers the tuner for this layer (bf16, channels_last)."""
    offered = {}
    real = _tune.choose

    def spy(name, key, cfgs, run, device):
        offered.setdefault(name, cfgs)
        return real(name, key, cfgs, run, device)

    with mock.patch.object(_tune, "choose", spy):
        check_conv("triton", case, torch.bfloat16, "cuda", layout="channels_last", integer=True)
    return offered[kernel]


@pytest.mark.gpu
@pytest.mark.parametrize("kernel,case", [
    ("conv2d_fwd", GPU_REALISTIC[0]), ("conv2d_dgrad", GPU_REALISTIC[0]), ("conv2d_wgrad", GPU_REALISTIC[0]),
    ("conv2d_fwd", GPU_REALISTIC[1]), ("conv2d_fwd", GPU_REALISTIC[4]),
], ids=str)
def test_gpu_every_candidate_config_is_correct(kernel, case, monkeypatch):
    """Every tuning candidate (incl. num_warps=8 where the lists allow it: 1x1 only) computes the
    right answer on this Triton -- a miscompiling config would be picked silently by the tuner.
    Cases: 3x3 with relu + pool (channel blocks), RGB first layer (flattened taps), 1x1."""
    cands = _candidates(kernel, case)
    assert cands
    for cfg in cands:
        monkeypatch.setenv(_tune.ENV_PIN, f"{kernel}:" + ",".join(f"{k}={v}" for k, v in cfg.items()))
        check_conv("triton", case, torch.bfloat16, "cuda", layout="channels_last", integer=True)


@pytest.mark.gpu
def test_gpu_tuning_picks_a_candidate_and_caches_it(monkeypatch, tmp_path):
    path = tmp_path / "tune.json"
    monkeypatch.setenv(_tune.ENV_TUNE, "1")
    monkeypatch.setenv(_tune.ENV_CACHE, str(path))
    monkeypatch.setattr(_tune, "_disk", None)
    monkeypatch.setattr(_tune, "_memory", {})
    check_conv("triton", GPU_REALISTIC[0], torch.bfloat16, "cuda", layout="channels_last", integer=True)
    table = json.loads(path.read_text())
    assert {k.split("|")[0] for k in table} >= {"conv2d_fwd", "conv2d_dgrad", "conv2d_wgrad"}
    assert all(torch.cuda.get_device_name() in k for k in table)
