"""Compile the Triton kernels for a GPU target on a machine without a GPU.

    python -m fastconv.backends.triton._compile_check [--all-configs] [--arch 90] [--dtype bf16 ...]
                                                      [--code-hash] [--dump-code DIR]

Runs the backend's launchers on small CPU tensors with every kernel launch
recorded instead of run, then compiles each distinct recorded launch with
``triton.compile`` for the target (default sm_90, ptxas from the triton
wheel), exactly as the launch would specialize it on a GPU (argument types,
16-divisibility, ints equal to 1, constexprs, num_warps/num_stages). It
reports per kernel the shared memory, whether tl.dot became a Hopper
warp-group MMA and whether loads were pipelined, and exits non-zero on any
compile error. ``--all-configs`` compiles every tuning candidate, not only
the default. ``--code-hash`` adds to each line a hash of the variant's PTX and
one of its SASS, ``--dump-code DIR`` writes both out, with the kernel's name
replaced and the PTX's debug information dropped (``code_of``): two versions
of the kernels generate the same code exactly where the hashes agree. Uses
Triton's launch internals (written against Triton 3.6 and 3.8; exits with
status 3 when they differ); TRITON_INTERPRET must be unset.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import torch

from ..._params import ConvParams, PoolParams

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# (name, N, C, H, W, K, R, S, stride, padding, dilation, groups, relu, pool, bias): the bench
# suites' layer kinds at batch 1, plus strided, dilated, grouped and depthwise convs.
LAYERS = [
    ("3x3 relu pool2", 1, 64, 56, 56, 128, 3, 3, 1, 1, 1, 1, True, 2, True),
    ("small-C first layer", 1, 3, 32, 32, 64, 3, 3, 1, 1, 1, 1, True, 2, True),
    ("C=24 (airbench's first block)", 1, 24, 32, 32, 64, 3, 3, 1, 1, 1, 1, False, 2, False),
    ("grayscale first layer", 1, 1, 28, 28, 32, 3, 3, 1, 1, 1, 1, True, 2, True),
    ("stem 7x7/s2", 1, 3, 64, 64, 64, 7, 7, 2, 3, 1, 1, True, 1, True),
    ("1x1", 1, 256, 14, 14, 64, 1, 1, 1, 0, 1, 1, False, 1, False),
    ("3x3/s2 dilated", 1, 64, 28, 28, 64, 3, 3, 2, 2, 2, 1, True, 1, True),
    ("grouped pool3", 1, 64, 27, 27, 64, 3, 3, 1, 1, 1, 4, True, 3, False),
    ("depthwise pool2", 1, 32, 16, 16, 64, 3, 3, 1, 1, 1, 32, True, 2, True),
]
POOLS = [((3, 3), (2, 2), (1, 1), (1, 1), False), ((2, 2), (2, 2), (0, 0), (1, 1), True)]


class _Recorder:
    """Stands in for a @triton.jit kernel: ``kernel[grid](*args, **kw)`` records the call."""

    def __init__(self, fn, log, where):
        self.fn, self.log, self.where = fn, log, where

    def __getitem__(self, grid):
        return lambda *args, **kw: self.log.append((self.fn, args, kw, self.where["layer"]))


def _modules():
    import importlib

    names = ("conv2d_fwd", "conv2d_dgrad", "conv2d_wgrad", "conv2d_depthwise", "max_pool2d", "relu", "conv2d_vendor")
    return [importlib.import_module(f"{__package__}.{name}") for name in names]


def _kernels():
    for mod in _modules():
        for name, obj in vars(mod).items():
            if name.endswith("_kernel") and hasattr(obj, "arg_names"):
                yield mod, name, obj


def record(dtypes, all_configs: bool, only: list[str] | None = None):
    """Run every launcher on CPU tensors; return the recorded (kernel, args, kwargs, layer)
    launches (``only``: the LAYERS whose name contains one of these strings, no pool or relu)."""
    from . import _tune

    from . import conv2d_bwd, conv2d_fwd, max_pool2d_bwd, max_pool2d_fwd, relu_bwd, relu_fwd
    from .conv2d_vendor import conv2d_vendor_bwd, conv2d_vendor_fwd

    log: list = []
    where = {"layer": ""}

    def choose(kernel, key, cfgs, run, device):
        over = _tune.pinned(kernel)
        if over:
            return {**cfgs[0], **over}
        for cfg in cfgs[1:] if all_configs else []:
            run(cfg)
        return cfgs[0]

    def precision(dtype, device):  # what a GPU with cudnn.allow_tf32 (the default) uses
        return "tf32" if dtype == torch.float32 else "ieee"

    with ExitStack() as stack:
        for mod, name, fn in _kernels():
            stack.enter_context(mock.patch.object(mod, name, _Recorder(fn, log, where)))
        for mod in _modules()[:3]:  # the GEMM kernels
            stack.enter_context(mock.patch.object(mod, "dot_precision", precision))
        stack.enter_context(mock.patch.object(_tune, "choose", choose))
        for dtype in dtypes:
            for (name, N, C, H, W, K, R, S, st, pad, dil, G, act, k, bias) in LAYERS:
                if only and not any(o in name for o in only):
                    continue
                where["layer"] = f"{name} {str(dtype).replace('torch.', '')}"
                p = ConvParams((st, st), (pad,) * 4, (dil, dil), G, act, k)
                x = torch.randn(N, C, H, W, dtype=dtype).contiguous(memory_format=torch.channels_last)
                w = torch.randn(K, C // G, R, S, dtype=dtype)
                b = torch.randn(K, dtype=dtype) if bias else None
                y, idx = conv2d_fwd(x, w, b, p)
                saved_y, saved_idx = (y if act else None), (idx if k > 1 else None)
                # depthwise layers also run the separate bias-gradient kernel; the GEMM's rides on wgrad
                conv2d_bwd(torch.randn_like(y), x, w, saved_y, saved_idx, p, (True, True, bias or C // G == 1 < G))
                # the vendor-core variant: its epilogue and prologue (ATen runs the conv on the CPU)
                y, idx = conv2d_vendor_fwd(x, w, b, p)
                conv2d_vendor_bwd(torch.randn_like(y), x, w, y if act else None, idx if k > 1 else None, p,
                                  (True, True, bias))
            if only:
                continue
            where["layer"] = f"pool and relu {str(dtype).replace('torch.', '')}"
            x = torch.randn(1, 64, 28, 28, dtype=dtype).contiguous(memory_format=torch.channels_last)
            for pk in POOLS:
                pp = PoolParams(*pk)
                y, idx = max_pool2d_fwd(x, pp)
                max_pool2d_bwd(torch.randn_like(y), idx, (28, 28), pp)
            relu_bwd(x, relu_fwd(x))
    return log


EXIT_UNSUPPORTED = 3  # this Triton's launch internals differ: nothing was checked


class InternalsMismatch(RuntimeError):
    """Triton's launch internals are not the ones this check was written against."""


def compile_launch(fn, args, kw, arch: int):
    """triton.compile one recorded launch for cuda sm_<arch>, specialized like JITFunction.run."""
    import triton

    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource, make_backend
        from triton.runtime.jit import create_function_from_signature

        target = GPUTarget("cuda", arch, 32)
        backend = make_backend(target)
        kw = dict(kw)
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        bound, spec, options = binder(*args, **kw)
        options, signature, constexprs, attrs = fn._pack_args(backend, kw, bound, spec, options)
        src = ASTSource(fn, signature, constexprs, attrs)
    except (ImportError, AttributeError, TypeError, ValueError) as e:
        raise InternalsMismatch(f"triton {triton.__version__}: {type(e).__name__}: {e}") from e
    return triton.compile(src, target=target, options=options.__dict__)


def _cuobjdump(cubin: bytes, *flags: str) -> str | None:
    """The output of the triton wheel's cuobjdump on ``cubin``, or None when it cannot run."""
    import os
    import subprocess
    import tempfile

    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        try:
            return subprocess.run([tool, *flags, f.name], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            return None


def _registers(cubin: bytes) -> tuple[int, int]:
    """(registers per thread, stack bytes per thread) from cuobjdump of the triton wheel, or (-1, -1)."""
    import re

    m = re.search(r"REG:(\d+) STACK:(\d+)", _cuobjdump(cubin, "-res-usage") or "")
    return (int(m.group(1)), int(m.group(2))) if m else (-1, -1)


def code_of(compiled, name: str) -> tuple[str, str]:
    """(PTX, SASS) of a compiled kernel, comparable across versions of its source: the kernel's
    name is replaced by ``KERNEL``; the PTX loses its debug information (``.loc`` / ``.file``
    lines, the labels that only they use, comments, the DWARF sections), which moves with
    every edit of a docstring or a file name and does not change the code."""
    import re

    ptx = compiled.asm["ptx"]
    ptx = ptx[:ptx.find("\t.section\t.debug")] if "\t.section\t.debug" in ptx else ptx
    keep = []
    for line in ptx.splitlines():
        line = line.split("//", 1)[0].rstrip()
        if not line or re.match(r"\s*(\.loc|\.file)\b", line) or re.match(r"\$L__(tmp|func_\w+)\d*:", line):
            continue
        keep.append(line)
    sass = _cuobjdump(compiled.asm["cubin"], "-sass") or ""
    named = re.compile(rf"(?<!\w){re.escape(name)}(?=\W|_param_)")
    return named.sub("KERNEL", "\n".join(keep) + "\n"), named.sub("KERNEL", sass)


def vector_load_share(ptx: str) -> float:
    """Share of the bytes that the global loads in ``ptx`` move with vector instructions
    (ld.global.v2/.v4, cp.async of 8 or 16 bytes); scalar loads are what a kernel gets
    when Triton cannot prove alignment or mask constancy. 1.0 when nothing is loaded."""
    import re

    def width(op: str) -> int:
        bits = re.search(r"\.[bfsu](8|16|32|64)\b", op)
        n = int(bits.group(1)) // 8 if bits else 4
        return n * (4 if ".v4" in op else 2 if ".v2" in op else 1)

    vec = total = 0
    for op in re.findall(r"\bld\.global[.\w:]*", ptx):
        b = width(op)
        total += b
        vec += b if (".v2" in op or ".v4" in op) else 0
    for n in re.findall(r"\bcp\.async\.c[ag]\.shared\.global[.\w:]*\s*\[[^\]]*\],\s*\[[^\]]*\],\s*(0x[0-9a-fA-F]+|\d+)",
                        ptx):
        b = int(n, 0)
        total += b
        vec += b if b >= 8 else 0
    return vec / total if total else 1.0


def describe(compiled) -> dict:
    ttgir = compiled.asm["ttgir"]
    regs, stack = _registers(compiled.asm["cubin"])
    return {
        "vector_loads": vector_load_share(compiled.asm["ptx"]),
        "regs": regs,
        "stack": stack,
        "shared": compiled.metadata.shared,
        "warps": compiled.metadata.num_warps,
        "wgmma": "warp_group_dot" in ttgir,
        "mma": "nvidia_mma" in ttgir,
        "pipelined": "async_copy_global_to_local" in ttgir or "async_tma" in ttgir,
    }


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _label(fn, kw):
    meta = ",".join(f"{k}={v}" for k, v in sorted(kw.items())
                    if k.startswith(("BLOCK", "num_", "POOL", "FLAT", "ONE_TAP", "RELU")))
    return f"{fn.__name__}[{meta}]"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability x 10 (default 90: H100/H200)")
    ap.add_argument("--dtype", action="append", choices=sorted(DTYPES), help="default: bf16 and fp32")
    ap.add_argument("--all-configs", action="store_true", help="compile every tuning candidate")
    ap.add_argument("--layer", action="append", metavar="SUBSTRING",
                    help="only the LAYERS whose name contains this (default: all, and the pools and relu)")
    ap.add_argument("--code-hash", action="store_true",
                    help="add a hash of each variant's PTX and SASS (kernel name replaced, no debug info)")
    ap.add_argument("--dump-code", metavar="DIR",
                    help="write DIR/<n>-<kernel>.ptx and .sass of the n-th variant (as hashed)")
    a = ap.parse_args(argv)
    from ._common import INTERPRET

    if INTERPRET:
        print("TRITON_INTERPRET is set: the kernels are interpreted, there is nothing to compile", file=sys.stderr)
        return 2
    log = record([DTYPES[d] for d in a.dtype or ["bf16", "fp32"]], a.all_configs, a.layer)
    seen, failures = set(), 0
    for fn, args, kw, layer in log:
        sig = tuple(str(t.dtype) if isinstance(t, torch.Tensor) else (t == 1, t % 16 == 0) if isinstance(t, int)
                    else t for t in args)
        key = (fn.__name__, sig, tuple(sorted(kw.items())))
        if key in seen:
            continue
        seen.add(key)
        t0 = time.time()
        try:
            compiled = compile_launch(fn, args, kw, a.arch)
            d = describe(compiled)
        except InternalsMismatch as e:
            print(f"cannot drive this Triton's compiler: {e}", file=sys.stderr)
            return EXIT_UNSUPPORTED
        except Exception as e:  # report every failing launch, then fail
            failures += 1
            print(f"FAIL {_label(fn, kw)} ({layer}): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                  flush=True)
        else:
            code = ""
            if a.code_hash or a.dump_code:
                ptx, sass = code_of(compiled, fn.__name__)
                if a.code_hash:
                    code = f"ptx {_digest(ptx)} sass {_digest(sass)}  "
                if a.dump_code:
                    stem = Path(a.dump_code) / f"{len(seen) - failures:03d}-{fn.__name__}"
                    stem.parent.mkdir(parents=True, exist_ok=True)
                    stem.with_suffix(".ptx").write_text(ptx)
                    stem.with_suffix(".sass").write_text(sass)
            print(f"ok   {time.time() - t0:5.1f}s  regs {d['regs']:3d} stack {d['stack']:4d}  smem {d['shared']:6d}  "
                  f"wgmma {d['wgmma']:d}  pipelined {d['pipelined']:d}  vector loads {d['vector_loads']:3.0%}  "
                  f"{code}{_label(fn, kw)}  ({layer})", flush=True)
    print(f"{len(seen) - failures} compiled, {failures} failed (sm_{a.arch})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
