"""One small call of every fastconv kernel family per backend, for compute-sanitizer.

    compute-sanitizer --tool memcheck python bench/kernel_smoke.py --backends cuda
    compute-sanitizer --tool racecheck python bench/kernel_smoke.py --backends cuda
    python bench/kernel_smoke.py --device cpu --backends reference,cpu      # dry run

The cases reach each kernel variant once: small-C and GEMM-sized convs, a
depthwise conv, a 7x7/s2 stem conv without pool, pool 3 with dilation, an
asymmetric 'same' padding, a ragged pool edge; general max-pool (overlapping,
ceil mode) and relu; forward and backward; in bf16 and fp32 (``--dtypes``),
channels_last and one NCHW case. Each runs in strict mode (a call the backend
declines is reported as unsupported, not run elsewhere) and is compared by
relative norm with the reference backend run in float64 on the same inputs.
Exit status: 0 when every supported case ran and matched, 1 otherwise.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __name__ == "__main__" and __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # run as a script: import from the checkout

import torch  # noqa: E402

import fastconv  # noqa: E402
from fastconv.backends import BackendUnsupportedError  # noqa: E402

# (N, C, H, W, K, R, conv kwargs, bias)
CONV_CASES = [
    ((2, 3, 9, 9, 8, 3), dict(padding=1, activation="relu", pool=2), True),       # small C, ragged pool
    ((2, 16, 8, 8, 32, 3), dict(padding=1, activation="relu", pool=2), True),     # GEMM-sized
    ((2, 8, 8, 8, 8, 3), dict(padding=1, groups=8, activation="relu", pool=2), True),  # depthwise
    ((1, 4, 12, 12, 8, 7), dict(stride=2, padding=3, activation="relu"), True),   # stem, no pool
    ((1, 4, 12, 12, 4, 3), dict(padding=2, dilation=2, pool=3), False),           # pool 3, no relu/bias
    ((1, 3, 9, 9, 4, 4), dict(padding="same", activation="relu", pool=2), True),  # asymmetric padding
]
POOL_CASES = [
    ((2, 8, 9, 9), dict(kernel_size=3, stride=2, padding=1)),
    ((1, 4, 10, 9), dict(kernel_size=3, stride=2, ceil_mode=True)),
]
RELU_SHAPE = (2, 8, 5, 7)
TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3, torch.float64: 1e-10}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


def _rel(a, b) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _leaf(t, dtype, device, fmt):
    return t.to(device=device, dtype=dtype).contiguous(memory_format=fmt).requires_grad_(True)


def _compare(fn, backend, tensors, dtype, device, fmt, gen):
    """Run fn on backend (strict) and on reference in float64; {name: rel err}."""
    leaves = [_leaf(t, dtype, device, fmt if t.dim() == 4 else torch.contiguous_format) for t in tensors]
    with fastconv.use_backend(backend, strict=True):
        y = fn(*leaves)
        dy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
        y.backward(dy.to(device=device, dtype=dtype).contiguous(memory_format=fmt))
    if device.type == "cuda":
        torch.cuda.synchronize()
    ref = [t.detach().double().cpu().requires_grad_(True) for t in leaves]
    with fastconv.use_backend("reference"):
        y64 = fn(*ref)
        y64.backward(dy.to(dtype).double())
    errs = {"y": _rel(y, y64)}
    for name, a, r in zip(("dx", "dw", "db"), leaves, ref):
        errs[name] = _rel(a.grad, r.grad)
    return errs


def cases(dtypes):
    for dtype in dtypes:
        for (N, C, H, W, K, R), kw, bias in CONV_CASES:
            def conv(x, w, *b, kw=kw):
                return fastconv.conv2d(x, w, b[0] if b else None, **kw)
            shapes = [(N, C, H, W), (K, C // kw.get("groups", 1), R, R)] + ([(K,)] if bias else [])
            name = f"conv {N}x{C}x{H}x{W} K{K} {R}x{R} " + " ".join(f"{k}={v}" for k, v in kw.items())
            yield name, conv, shapes, dtype, torch.channels_last
        for shape, kw in POOL_CASES:
            def pool(x, kw=kw):
                return fastconv.max_pool2d(x, **kw)
            name = "max_pool2d " + "x".join(map(str, shape)) + " " + " ".join(f"{k}={v}" for k, v in kw.items())
            yield name, pool, [shape], dtype, torch.channels_last
        yield "relu " + "x".join(map(str, RELU_SHAPE)), fastconv.relu, [RELU_SHAPE], dtype, torch.contiguous_format
    (N, C, H, W, K, R), kw, bias = CONV_CASES[1]
    yield ("conv NCHW " + f"{N}x{C}x{H}x{W} K{K}", lambda x, w, b: fastconv.conv2d(x, w, b, **kw),
           [(N, C, H, W), (K, C, R, R), (K,)], dtypes[0], torch.contiguous_format)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="cuda,triton", help="comma-separated fastconv backends")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtypes", default=None, help="comma-separated from fp32,bf16,fp16,fp64 "
                    "(default: bf16,fp32 on cuda, fp32 on cpu)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtypes = [DTYPES[d] for d in (args.dtypes or ("bf16,fp32" if device.type == "cuda" else "fp32")).split(",")]
    torch.backends.cudnn.allow_tf32 = False  # fp32 kernels compute in fp32 here, like the oracle
    torch.backends.cuda.matmul.allow_tf32 = False
    counts = {"ok": 0, "unsupported": 0, "mismatch": 0, "error": 0}
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        why = fastconv.backends.unsupported_reason(backend, "relu_fwd", torch.empty(1, device=device))
        if why:
            print(f"{backend}: unavailable: {why}")
            counts["unsupported"] += 1
            continue
        gen = torch.Generator().manual_seed(0)
        for name, fn, shapes, dtype, fmt in cases(dtypes):
            label = f"{backend:<9} {str(dtype).replace('torch.', ''):<8} " \
                    f"{'cl' if fmt == torch.channels_last else 'nchw':<4} {name}"
            tensors = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
            try:
                errs = _compare(fn, backend, tensors, dtype, device, fmt, gen)
            except BackendUnsupportedError as e:
                counts["unsupported"] += 1
                print(f"unsupported {label}: {str(e).splitlines()[0][:200]}")
                continue
            except Exception as e:  # noqa: BLE001  (report every case, then fail)
                counts["error"] += 1
                print(f"ERROR       {label}: {type(e).__name__}: {str(e).strip().splitlines()[0][:160]}")
                continue
            bad = {k: v for k, v in errs.items() if not v <= TOL[dtype]}
            counts["mismatch" if bad else "ok"] += 1
            detail = " ".join(f"{k}={v:.1e}" for k, v in errs.items())
            print(f"{'MISMATCH' if bad else 'ok':<11} {label}  [{detail}]", flush=True)
    print("kernel smoke: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 1 if counts["error"] or counts["mismatch"] else 0


if __name__ == "__main__":
    sys.exit(main())
