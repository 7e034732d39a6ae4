"""Layer benchmark: fastconv backends vs eager PyTorch vs torch.compile.

    bench/bench_layers.py --suite cnn                        # on a GPU: bf16, channels_last
    bench/bench_layers.py --suite vgg,airbench --dtype fp32  # fp32 = TF32, like cuDNN's default
    bench/bench_layers.py --suite cpu --out DIR              # cpu backend vs PyTorch CPU eager
    bench/bench_layers.py --layer N=64,C=128,H=56,K=256 --providers triton,eager
    bench/bench_layers.py --suite all --write-autotable fastconv/backends/autotable.json

Suites: cnn, vgg, airbench, stem, small-c, depthwise, cpu, tiny, and ``all`` (the
GPU suites). Each layer x provider x pass gives median / p20 / p80 time, TFLOP/s,
GB/s, % of the roofline floor and peak memory; the output folder (default
bench/results/<device>/) gets results.json (rewritten after every layer),
results.md and speedup.png, and the short table is printed last.
``FASTCONV_BENCH_DEVICE=cpu`` runs on the CPU even where a GPU is present.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if __name__ == "__main__" and __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # run as a script: import from the checkout

import torch  # noqa: E402

from bench import autotable, harness, malloc, providers, report  # noqa: E402
from bench.model import PASSES  # noqa: E402
from bench.suites import SUITES, layers_of  # noqa: E402
from bench.timing import dtype_of  # noqa: E402

GPU_SUITES = ("cnn", "vgg", "airbench", "stem", "small-c", "depthwise")


def _csv(s: str) -> list[str]:
    return [p.strip() for p in s.split(",") if p.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", action="append", default=[],
                    help=f"comma-separated suites: {', '.join(SUITES)}, all (repeatable)")
    ap.add_argument("--layer", action="append", default=[],
                    help="one more layer, e.g. N=64,C=128,H=56,K=256,R=3,padding=1,pool=2 (repeatable)")
    ap.add_argument("--device", choices=("cuda", "cpu"),
                    default=os.environ.get("FASTCONV_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available()
                                                                        else "cpu"))
    ap.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), help="default: bf16 on cuda, fp32 on cpu")
    ap.add_argument("--layout", choices=("channels_last", "nchw"),
                    help="memory format of x (default: channels_last on cuda, nchw on cpu)")
    ap.add_argument("--providers", type=_csv,
                    help=f"comma-separated, from {', '.join(providers.ALL)} (default: cuda: "
                         f"{','.join(providers.default_providers(torch.device('cuda')))}; cpu: "
                         f"{','.join(providers.default_providers(torch.device('cpu')))})")
    ap.add_argument("--passes", type=_csv, default=list(PASSES), help="comma-separated: fwd,bwd,fwdbwd")
    ap.add_argument("--compile-mode", default=providers.COMPILE_MODE, help="torch.compile mode of 'compile'")
    ap.add_argument("--inductor-simdlen", type=int, choices=(128, 256, 512),
                    help="bits of the vectors Inductor's CPU code uses (torch._inductor.config.cpp.simdlen; default: "
                         "the CPU's widest): 256 with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 "
                         "FASTCONV_CPU_ISA=avx2 runs all of PyTorch and fastconv at AVX2 on an AVX-512 machine")
    ap.add_argument("--out", type=Path, help="output folder (default: bench/results/<device>/)")
    ap.add_argument("--write-autotable", type=Path, metavar="PATH",
                    help="merge the fastest native backend per conv key into this auto table")
    ap.add_argument("--budget-s", type=float, help="start no new timing after this many seconds")
    ap.add_argument("--target-ms", type=float, default=100.0, help="timed milliseconds per measurement")
    ap.add_argument("--rounds", type=int, default=1,
                    help="the providers take turns this many times per layer, each keeping its fastest round "
                         "(3 on a shared, noisy CPU machine)")
    ap.add_argument("--warmup-ms", type=float, default=25.0, help="untimed warm-up per measurement")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--malloc", choices=malloc.POLICIES, default="default",
                    help="the C allocator's policy: glibc's default, or 'steady' (freed memory is kept, so page "
                         "faults left by the previous provider do not decide; bench/malloc.py)")
    ap.add_argument("--kernel-times", action="store_true",
                    help="profile one forward + backward of each fastconv provider: its top kernels "
                         "(in results.json under the fwdbwd row's 'kernels')")
    args = ap.parse_args(argv)
    suites = [s for spec in args.suite for s in _csv(spec)]
    if "all" in suites:
        suites = [s for s in suites if s != "all"] + [s for s in GPU_SUITES if s not in suites]
    if not suites and not args.layer:
        suites = ["cnn"] if args.device == "cuda" else ["cpu"]
    args.suites = suites
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        ap.error(f"--suite: unknown suite(s) {', '.join(unknown)}; suites are {', '.join(SUITES)}, all")
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.providers:
        try:
            providers.check_names(args.providers)
        except ValueError as e:
            ap.error(f"--providers: {e}")
    try:
        args.layers = layers_of(suites, args.layer)
    except ValueError as e:
        ap.error(str(e))
    bad = [p for p in args.passes if p not in PASSES]
    if bad:
        ap.error(f"--passes: unknown pass(es) {', '.join(bad)}; passes are {', '.join(PASSES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible (use --device cpu)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    try:
        malloc_policy = malloc.apply(args.malloc)
    except RuntimeError as e:
        print(f"--malloc: {e}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.inductor_simdlen:
        import torch._inductor.config as inductor_config

        inductor_config.cpp.simdlen = args.inductor_simdlen
    dtype = dtype_of(args.dtype or ("bf16" if device.type == "cuda" else "fp32"))
    layout = args.layout or ("channels_last" if device.type == "cuda" else "nchw")
    cfg = harness.Config(
        device=device, dtype=dtype, channels_last=layout == "channels_last", passes=tuple(args.passes),
        providers=providers.check_names(args.providers or providers.default_providers(device)),
        compile_mode=args.compile_mode, target_ms=args.target_ms, warmup_ms=args.warmup_ms,
        budget_s=args.budget_s, seed=args.seed, kernel_times=args.kernel_times, rounds=args.rounds,
        malloc=malloc_policy, inductor_simdlen=args.inductor_simdlen)
    layers = args.layers
    out = args.out or Path(harness.default_out_dir(device))
    out.mkdir(parents=True, exist_ok=True)

    def checkpoint(results):
        report.write_json(results, out / "results.json")

    results = harness.run(layers, cfg, on_progress=checkpoint, log=lambda s: print(s, flush=True))
    train_path = out / "train.json"
    train = json.loads(train_path.read_text()) if train_path.is_file() else None
    report.write_all(results, out, train)
    if args.write_autotable:
        autotable.write_table(results, args.write_autotable)
        print(f"auto table: {len(autotable.best_backends(results))} entries written to {args.write_autotable}")
    print(f"\nwrote {out / 'results.json'}, results.md, speedup.png\n")
    print(report.table(results, train))
    return 0


if __name__ == "__main__":
    sys.exit(main())
