"""The reference trainer: model, smoke runs through the CLI, exact resume after --max-time,
2-process gloo DDP, the data readers (fake MNIST / CIFAR-10 files), checkpoints, and
the errors for bad arguments, data and checkpoints."""
import gzip
import json
import math
import os
import pickle
import re
import socket
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from fastconv.info import cpu_isa, cpu_model
from fastconv import nn as fnn
from fastconv.train import checkpoint, data
from fastconv.train.cli import format_comparison, main
from fastconv.train.loop import Progress, TrainConfig, lr_at, train
from fastconv.train.models import ReferenceCNN

QUICK = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "16", "--quiet"]
SUMMARY_KEYS = {"val_accuracy", "seconds", "images_per_second", "epochs_completed", "backend", "device",
                "peak_memory_bytes"}


def _summary(path):
    with open(path) as f:
        return json.load(f)


# --------------------------------------------------------------------------- model


def test_reference_cnn_same_init_and_state_dict_for_both_layer_kinds():
    torch.manual_seed(0)
    fast = ReferenceCNN(3, 10, 32, layers="fastconv").double()
    torch.manual_seed(0)
    ref = ReferenceCNN(3, 10, 32, layers="torch").double()
    assert list(fast.state_dict()) == list(ref.state_dict()) == [
        "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "classifier.weight", "classifier.bias"]
    for k, v in fast.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k
    assert type(fast.conv1) is fnn.Conv2dReLUMaxPool2d and type(ref.conv1) is torch.nn.Conv2d
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    y = fast(x)
    assert y.shape == (4, 10)
    torch.testing.assert_close(y, ref(x))
    assert fast.classifier.in_features == 64 * 8 * 8


def test_reference_cnn_odd_sizes_and_bad_arguments():
    model = ReferenceCNN(1, 7, 9, widths=(4, 6))
    assert model(torch.randn(2, 1, 9, 9)).shape == (2, 7)
    with pytest.raises(ValueError, match="layers"):
        ReferenceCNN(layers="keras")
    with pytest.raises(ValueError, match="widths"):
        ReferenceCNN(widths=(32,))
    with pytest.raises(ValueError, match="image_size"):
        ReferenceCNN(image_size=3)


# --------------------------------------------------------------------------- schedule and progress


def test_lr_at_is_a_cosine_from_the_peak_to_zero():
    assert lr_at(0, 10, 0.1) == 0.1
    assert lr_at(5, 10, 0.1) == pytest.approx(0.05)
    assert lr_at(10, 10, 0.1) == pytest.approx(0.0, abs=1e-15)
    lrs = [lr_at(s, 10, 0.1) for s in range(11)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    for s in range(11):
        assert lrs[s] == 0.1 * 0.5 * (1.0 + math.cos(math.pi * s / 10))
        assert lrs[s] + lrs[10 - s] == pytest.approx(0.1)  # point-symmetric about the midpoint


def test_progress_saves_the_position_not_this_runs_counters():
    pr = Progress(epoch=2, step=5, loss_sum=1.5, correct=3, seen=4, best=0.5, steps=7, images=64, stopped=True)
    state = pr.state_dict()
    assert state == {"epoch": 2, "step": 5, "loss_sum": 1.5, "correct": 3, "seen": 4, "best": 0.5,
                     "val_accuracy": None}
    fresh = Progress()
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state and (fresh.steps, fresh.images, fresh.stopped) == (0, 0, False)
    with pytest.raises(TypeError, match="keys among"):
        fresh.load_state_dict({"epoch": 1, "steps": 3})
    pr.start_epoch(3)
    assert pr.state_dict() == {"epoch": 3, "step": 0, "loss_sum": 0.0, "correct": 0, "seen": 0, "best": 0.5,
                               "val_accuracy": None}
    assert pr.steps == 7 and pr.images == 64


# --------------------------------------------------------------------------- CLI runs


def test_smoke_run_writes_summary_and_checkpoints(tmp_path, capsys):
    summary, ck = tmp_path / "s.json", tmp_path / "ck"
    assert main(QUICK + ["--summary", str(summary), "--checkpoint-dir", str(ck)]) == 0
    s = _summary(summary)
    assert SUMMARY_KEYS <= set(s)
    assert 0.0 <= s["val_accuracy"] <= 1.0
    assert s["epochs_completed"] == 1 and s["steps"] == 2 and not s["stopped_early"]
    assert s["backend"] in ("reference", "cpu") and s["device"] == "cpu"
    assert s["images_per_second"] > 0 and s["peak_memory_bytes"] > 0 and s["seconds"] > 0
    assert sorted(p.name for p in ck.iterdir()) == ["best.pt", "last.pt"]
    last = torch.load(ck / "last.pt", weights_only=True)
    assert sorted(last) == ["fastconv", "format", "identity", "model", "optimizer", "ordering", "progress", "rng",
                            "scaler"] and last["format"] == 1
    assert sorted(last["progress"]) == ["best", "correct", "epoch", "loss_sum", "seen", "step", "val_accuracy"]
    # the last of 2 steps ran at lr_at(1, 2, peak): the cosine schedule over the whole run
    assert last["optimizer"]["param_groups"][0]["lr"] == lr_at(1, 2, 3e-3)
    out = capsys.readouterr().out
    assert "epoch   1/1" in out and "val acc" in out and "img/s" in out
    # the first line says which kernels run: the backend and, on the CPU, the model (and ISA)
    first = out.splitlines()[0]
    assert first.startswith(f"fastconv train: fastconv {s['backend']} backend") and cpu_model() in first
    if s["backend"] == "cpu":
        assert f"({cpu_isa()} C++ kernels)" in first


def test_torch_layers_and_sgd(tmp_path):
    summary = tmp_path / "s.json"
    assert main(QUICK + ["--layers", "torch", "--optimizer", "sgd", "--channels-last",
                         "--summary", str(summary)]) == 0
    assert _summary(summary)["backend"] == "torch"


def test_synthetic_data_amp_bf16(tmp_path):
    summary = tmp_path / "s.json"
    assert main(QUICK + ["--data", "synthetic", "--image-size", "12", "--channels", "2", "--samples", "64",
                         "--amp", "bf16", "--summary", str(summary)]) == 0
    s = _summary(summary)
    assert s["data"] == "synthetic" and s["amp"] == "bf16"


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def _epoch_lines(out):
    """The epoch log lines without their timing (images/s and seconds)."""
    return [re.sub(r"\s+[\d,]+ img/s.*", "", line) for line in out.splitlines() if line.startswith("epoch ")]


@pytest.mark.parametrize("steps_per_epoch", [1, 3], ids=["at-epoch-end", "inside-an-epoch"])
def test_max_time_then_resume_takes_the_same_steps(tmp_path, capsys, steps_per_epoch):
    """An uninterrupted run and a run stopped by --max-time after its first step, then
    resumed, end with identical weights: no step lost, none repeated; the epoch's loss and
    accuracy count the steps before the stop too."""
    args = ["--epochs", "2", "--steps-per-epoch", str(steps_per_epoch), "--batch-size", "16",
            "--deterministic", "--quiet"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(args + ["--checkpoint-dir", str(whole)]) == 0
    whole_lines = _epoch_lines(capsys.readouterr().out)
    assert len(whole_lines) == 2
    assert main(args + ["--checkpoint-dir", str(parts), "--max-time", "1e-9",
                        "--summary", str(tmp_path / "first.json")]) == 0
    first = _summary(tmp_path / "first.json")
    assert first["stopped_early"] and first["steps"] == 1
    assert first["epochs_completed"] == (1 if steps_per_epoch == 1 else 0)
    progress = torch.load(parts / "last.pt", weights_only=True)["progress"]
    assert (progress["epoch"], progress["step"]) == ((1, 0) if steps_per_epoch == 1 else (0, 1))
    assert main(args + ["--checkpoint-dir", str(parts), "--resume", "--summary", str(tmp_path / "rest.json")]) == 0
    rest = _summary(tmp_path / "rest.json")
    assert rest["epochs_completed"] == 2 and rest["steps"] == 2 * steps_per_epoch - 1
    a, b = _weights(whole / "last.pt"), _weights(parts / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _epoch_lines(capsys.readouterr().out) == whole_lines


def test_resume_with_another_batch_size_restarts_the_epoch(tmp_path, capsys):
    args = ["--epochs", "1", "--steps-per-epoch", "3", "--quiet", "--checkpoint-dir", str(tmp_path)]
    assert main(args + ["--batch-size", "16", "--max-time", "1e-9"]) == 0
    assert torch.load(tmp_path / "last.pt", weights_only=True)["progress"]["step"] == 1
    capsys.readouterr()
    summary = tmp_path / "s.json"
    assert main(args + ["--batch-size", "8", "--resume", "--summary", str(summary)]) == 0
    out = capsys.readouterr().out
    assert "steps per epoch changed; epoch 1 restarts" in out and "epoch 1, step 0" in out
    s = _summary(summary)
    assert s["steps"] == 3 and s["epochs_completed"] == 1 and not s["stopped_early"]


def test_resume_without_a_checkpoint_starts_from_scratch(tmp_path, capsys):
    assert main(QUICK + ["--checkpoint-dir", str(tmp_path), "--resume"]) == 0
    assert "starting from scratch" in capsys.readouterr().out


def test_compare_prints_both(tmp_path, capsys):
    summary = tmp_path / "cmp.json"
    assert main(["--compare", "--epochs", "1", "--steps-per-epoch", "1", "--quiet", "--summary", str(summary)]) == 0
    s = _summary(summary)
    assert set(s) == {"fastconv", "torch"} and s["torch"]["backend"] == "torch"
    table = capsys.readouterr().out.splitlines()
    assert any(line.startswith("val accuracy") for line in table)
    assert any(line.startswith("peak memory") and line.count("MiB") == 2 for line in table)


def test_format_comparison():
    r = dict(val_accuracy=0.5, images_per_second=1234.5, peak_memory_bytes=3 * 2**20, seconds=2.0,
             epochs_completed=1, backend="cpu", peak_memory_kind="cpu_max_rss")
    text = format_comparison({"fastconv": r, "torch": dict(r, backend="torch", val_accuracy=0.25)})
    assert "50.00%" in text and "25.00%" in text and "1,234" in text and "3.0 MiB" in text


# --------------------------------------------------------------------------- DDP


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_rank(rank, port, out_dir, options):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    cfg = TrainConfig(epochs=1, steps_per_epoch=4, batch_size=16, device="cpu", quiet=True, **options)
    result = train(cfg, say=lambda _msg: None)
    assert result.world_size == 2
    torch.save({"model": result.model.state_dict(), "train_loss": result.train_loss},
               os.path.join(out_dir, f"rank{rank}.pt"))


def _ddp_run(out_dir, **options):
    mp.spawn(_ddp_rank, args=(_free_port(), str(out_dir), options), nprocs=2, join=True)
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]


def test_ddp_two_gloo_ranks_end_with_identical_weights(tmp_path):
    r0, r1 = _ddp_run(tmp_path)
    torch.manual_seed(0)
    init = ReferenceCNN(1, 10, 8).state_dict()
    for k in r0["model"]:
        assert torch.equal(r0["model"][k], r1["model"][k]), f"{k} differs between ranks"
        assert not torch.equal(r0["model"][k], init[k]), f"{k} was not trained"


def test_ddp_resume_inside_an_epoch_gives_every_rank_the_whole_epochs_sums(tmp_path):
    """The epoch's running sums are over all ranks, so every rank resumes them and ends the
    epoch with the same train loss as rank 0 (and the same weights)."""
    ck = str(tmp_path / "ck")
    _ddp_run(tmp_path, checkpoint_dir=ck, max_time=1e-9, deterministic=True)
    assert torch.load(tmp_path / "ck" / "last.pt", weights_only=True)["progress"]["step"] == 1
    r0, r1 = _ddp_run(tmp_path, checkpoint_dir=ck, resume="auto", deterministic=True)
    assert r0["train_loss"] is not None and r0["train_loss"] == r1["train_loss"]
    for k in r0["model"]:
        assert torch.equal(r0["model"][k], r1["model"][k]), f"{k} differs between ranks"


# --------------------------------------------------------------------------- data files


def _write_idx(path, arr, gz):
    arr = np.asarray(arr, dtype=np.uint8)
    raw = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def _fake_mnist(root, n_train=40, n_val=20, size=12):
    rng = np.random.default_rng(0)
    files = {}
    for i, (stem, arr) in enumerate([
        ("train-images-idx3-ubyte", rng.integers(0, 256, (n_train, size, size))),
        ("train-labels-idx1-ubyte", rng.integers(0, 10, n_train)),
        ("t10k-images-idx3-ubyte", rng.integers(0, 256, (n_val, size, size))),
        ("t10k-labels-idx1-ubyte", rng.integers(0, 10, n_val)),
    ]):
        files[stem] = _write_idx(root / stem, arr, gz=i % 2 == 0)
    return files


def test_mnist_reader(tmp_path):
    _fake_mnist(tmp_path)
    ds = data.mnist(tmp_path)
    assert ds.train_x.shape == (40, 1, 12, 12) and ds.train_x.dtype == torch.uint8
    assert ds.val_x.shape == (20, 1, 12, 12) and ds.val_y.shape == (20,)
    raw = gzip.decompress((tmp_path / "train-images-idx3-ubyte.gz").read_bytes())
    assert ds.train_x[3, 0, 5, 7] == raw[16 + 3 * 144 + 5 * 12 + 7]
    x = ds.batch(ds.train_x, torch.device("cpu"))
    assert x.dtype == torch.float32 and abs(x.mean().item()) < 1e-5


def test_mnist_training_run(tmp_path):
    _fake_mnist(tmp_path)
    summary = tmp_path / "s.json"
    assert main(QUICK + ["--data", "mnist", "--data-dir", str(tmp_path), "--summary", str(summary)]) == 0
    assert _summary(summary)["data"] == "mnist"


def _corrupt(files, what):
    if what == "missing":
        files["t10k-labels-idx1-ubyte"].unlink()
        return "t10k-labels-idx1-ubyte"
    if what == "magic":
        p = files["train-labels-idx1-ubyte"]
        p.write_bytes(b"\x00\x00\x0d\x01" + p.read_bytes()[4:])
        return "not an idx file"
    if what == "truncated":
        p = files["train-labels-idx1-ubyte"]
        p.write_bytes(p.read_bytes()[:-3])
        return "holds"
    if what == "count":
        _write_idx(files["train-labels-idx1-ubyte"], np.zeros(39), gz=False)
        return "expected 40 labels"
    if what == "label":
        _write_idx(files["t10k-labels-idx1-ubyte"], np.full(20, 12), gz=False)
        return "labels must be 0..9"
    if what == "gzip":
        files["train-images-idx3-ubyte"].write_bytes(b"definitely not gzip")
        return "cannot read"
    raise AssertionError(what)


@pytest.mark.parametrize("what", ["missing", "magic", "truncated", "count", "label", "gzip"])
def test_mnist_errors_name_the_file(tmp_path, capsys, what):
    files = _fake_mnist(tmp_path)
    expected = _corrupt(files, what)
    with pytest.raises(SystemExit) as e:
        main(QUICK + ["--data", "mnist", "--data-dir", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--data-dir" in err and expected in err


def _write_cifar_batch(path, n, seed, override=None):
    rng = np.random.default_rng(seed)
    d = {b"batch_label": b"fake", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
         b"labels": rng.integers(0, 10, n).tolist()}
    d.update(override or {})
    path.write_bytes(pickle.dumps(d, protocol=2))


def _fake_cifar(root):
    root = root / "cifar-10-batches-py"
    root.mkdir()
    for i in range(1, 6):
        _write_cifar_batch(root / f"data_batch_{i}", 4, i)
    _write_cifar_batch(root / "test_batch", 6, 0)
    return root


def test_cifar10_reader(tmp_path):
    root = _fake_cifar(tmp_path)
    ds = data.cifar10(tmp_path)
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.val_x.shape == (6, 3, 32, 32)
    first = pickle.loads((root / "data_batch_2").read_bytes())
    assert torch.equal(ds.train_x[4].flatten(), torch.from_numpy(first[b"data"][0]))
    assert ds.train_y[4] == first[b"labels"][0]
    assert data.cifar10(root).train_x.shape == (20, 3, 32, 32)  # the batches folder itself works too


class _Sneaky:
    def __reduce__(self):
        return (os.getcwd, ())


@pytest.mark.parametrize("what,expected", [
    ("missing", "test_batch not found"),
    ("garbage", "not a CIFAR-10 python pickle batch"),
    ("global", "refusing to load"),
    ("keys", "expected keys 'data' and 'labels'"),
    ("shape", "'data' must be uint8 [N, 3072]"),
    ("labels", "expected 4 labels"),
])
def test_cifar10_errors_name_the_file(tmp_path, capsys, what, expected):
    root = _fake_cifar(tmp_path)
    if what == "missing":
        (root / "test_batch").unlink()
    elif what == "garbage":
        (root / "data_batch_3").write_bytes(b"\x80\x04garbage")
    elif what == "global":
        (root / "data_batch_3").write_bytes(pickle.dumps({b"data": _Sneaky()}))
    elif what == "keys":
        (root / "data_batch_3").write_bytes(pickle.dumps({b"images": 1}))
    elif what == "shape":
        _write_cifar_batch(root / "data_batch_3", 4, 0, {b"data": np.zeros((4, 32, 32), np.uint8)})
    elif what == "labels":
        _write_cifar_batch(root / "data_batch_3", 4, 0, {b"labels": [1, 2]})
    with pytest.raises(SystemExit) as e:
        main(QUICK + ["--data", "cifar10", "--data-dir", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--data cifar10" in err and expected in err


# --------------------------------------------------------------------------- argument errors


@pytest.mark.parametrize("argv,flag", [
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "x"], "--batch-size"),
    (["--lr", "-1"], "--lr"),
    (["--max-time", "0"], "--max-time"),
    (["--widths", "32"], "--widths"),
    (["--data", "imagenet"], "--data"),
    (["--data", "mnist"], "--data-dir"),
    (["--data", "cifar10", "--data-dir", "/nonexistent/fastconv"], "--data-dir"),
    (["--data-dir", "."], "--data-dir"),
    (["--image-size", "16"], "--image-size"),
    (["--data", "synthetic", "--image-size", "2"], "--image-size"),
    (["--device", "tpu"], "--device"),
    (["--backend", "fast"], "--backend"),
    (["--amp", "fp8"], "--amp"),
    (["--resume"], "--resume"),
    (["--resume", "/nonexistent/fastconv/last.pt"], "--resume"),
    (["--compare", "--layers", "torch"], "--compare"),
    (["--optimizer", "lamb"], "--optimizer"),
    (["--cuda-graphs", "--device", "cpu"], "--cuda-graphs"),
    (["--unknown-flag"], "--unknown-flag"),
])
def test_bad_arguments_exit_2_naming_the_flag(capsys, argv, flag):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert flag in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_cuda(capsys):
    with pytest.raises(SystemExit):
        main(["--device", "cuda"])
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_save_is_atomic(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save({"model": {"w": torch.ones(2)}, "epoch": 1}, path)
    with pytest.raises(Exception):
        checkpoint.save({"model": {}, "epoch": 2, "bad": lambda: 0}, path)  # cannot be pickled
    assert checkpoint.load(path)["epoch"] == 1, "a failed save must leave the old checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "no temporary file may be left"


class _Custom:
    pass


def test_checkpoint_load_is_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "epoch": 0, "obj": _Custom()}, path)
    with pytest.raises(checkpoint.CheckpointError, match="cannot load"):
        checkpoint.load(path)


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(5)
    state = checkpoint.rng_state()
    a = torch.rand(3)
    checkpoint.save({"model": {}, "epoch": 0, "rng": state}, tmp_path / "c.pt")
    torch.manual_seed(6)
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "c.pt")["rng"])
    assert torch.equal(torch.rand(3), a)


def test_check_fits_names_the_flag_or_the_data_that_differs():
    ds = data.synthetic(8, 1, 4)
    want = checkpoint.identity(TrainConfig(), ds)
    assert want == {"data": "digits", "optimizer": "adam", "widths": [32, 64], "channels": 1, "image_size": 8,
                    "num_classes": 10}
    path = Path("c.pt")
    checkpoint.check_fits(dict(want), want, path)
    checkpoint.check_fits({}, want, path)  # a checkpoint without an identity is not checked
    for have, message in [
        (dict(want, widths=[8, 16]), "c.pt was trained with --widths 8,16, this run has --widths 32,64"),
        (dict(want, data="mnist"), "trained with --data mnist, this run has --data digits"),
        (dict(want, optimizer="sgd"), "trained with --optimizer sgd, this run has --optimizer adam"),
        (dict(want, channels=3), "c.pt holds a model for channels=3, the data has channels=1"),
        (dict(want, num_classes=7), "holds a model for num_classes=7, the data has num_classes=10"),
    ]:
        with pytest.raises(checkpoint.CheckpointError, match=re.escape(message)):
            checkpoint.check_fits(have, want, path)


def test_resume_errors(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit):
        main(QUICK + ["--resume", str(bad)])
    assert "--resume: cannot load checkpoint" in capsys.readouterr().err
    ck = tmp_path / "ck"
    assert main(QUICK + ["--checkpoint-dir", str(ck)]) == 0
    with pytest.raises(SystemExit):
        main(QUICK + ["--checkpoint-dir", str(ck), "--resume", "--widths", "8,16"])
    assert "was trained with --widths 32,64, this run has --widths 8,16" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(QUICK + ["--resume", str(ck / "last.pt"), "--optimizer", "sgd"])
    assert "--optimizer adam" in capsys.readouterr().err
    odd = torch.load(ck / "last.pt", weights_only=True)
    odd["progress"]["steps"] = 2  # a this-run counter, never saved
    checkpoint.save(odd, tmp_path / "odd.pt")
    with pytest.raises(SystemExit):
        main(QUICK + ["--resume", str(tmp_path / "odd.pt")])
    assert "odd.pt does not fit this run (TypeError: progress must be a dict" in capsys.readouterr().err


# --------------------------------------------------------------------------- the full run


@pytest.mark.slow
def test_default_run_reaches_97_percent_within_3_minutes(tmp_path):
    summary = tmp_path / "s.json"
    assert main(["--quiet", "--summary", str(summary)]) == 0
    s = _summary(summary)
    assert s["val_accuracy"] >= 0.97, s
    assert s["seconds"] <= 180, s


@pytest.mark.slow
def test_torchrun_cli(tmp_path):
    import subprocess

    summary = tmp_path / "s.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "fastconv.train",
           *QUICK, "--summary", str(summary), "--checkpoint-dir", str(tmp_path / "ck")]
    subprocess.run(cmd, check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    s = _summary(summary)
    assert s["world_size"] == 2 and s["epochs_completed"] == 1
    assert (tmp_path / "ck" / "last.pt").is_file()


@pytest.mark.gpu
def test_cuda_run_bf16_channels_last(tmp_path):
    summary = tmp_path / "s.json"
    assert main(QUICK + ["--device", "cuda", "--amp", "bf16", "--channels-last", "--data", "synthetic",
                         "--image-size", "32", "--samples", "256", "--summary", str(summary),
                         "--checkpoint-dir", str(tmp_path / "ck")]) == 0
    s = _summary(summary)
    assert s["device"].startswith("cuda") and s["peak_memory_kind"] == "cuda_max_allocated"
    assert s["backend"] in ("triton", "cuda", "vendor") and s["peak_memory_bytes"] > 0  # a fastconv kernel ran
    assert main(QUICK + ["--device", "cuda", "--data", "synthetic", "--image-size", "32", "--samples", "256",
                         "--epochs", "2", "--checkpoint-dir", str(tmp_path / "ck"), "--resume"]) == 0


@pytest.mark.gpu
def test_cuda_graphs_train_like_the_eager_step(tmp_path):
    """--cuda-graphs: forward + backward replayed from a CUDA graph; same losses as eager steps
    (the graphed callable computes the same kernels), and it trains."""
    runs = {}
    for graphs in (False, True):
        summary = tmp_path / f"s{graphs}.json"
        argv = QUICK + ["--device", "cuda", "--data", "synthetic", "--image-size", "32", "--samples", "256",
                        "--summary", str(summary)] + (["--cuda-graphs"] if graphs else [])
        assert main(argv) == 0
        runs[graphs] = _summary(summary)
    assert runs[True]["backend"] in ("triton", "cuda", "vendor")
    assert abs(runs[True]["train_loss"] - runs[False]["train_loss"]) < 1e-3 * max(1.0, runs[False]["train_loss"])
