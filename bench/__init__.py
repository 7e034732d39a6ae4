"""Benchmarks of fastconv against eager PyTorch (cuDNN / CPU aten) and torch.compile.

    bench/bench_layers.py --suite cnn --out DIR      # layer table, results.json, results.md, plot
    bench/bench_train.py --out DIR/train.json        # training step of the reference CNN
    bench/gpu_check.sh OUTDIR [--quick|--dry-run]    # everything that needs a GPU, in one run

Modules: ``model`` (the one FLOP/byte model and the roofline floor), ``suites``
(layer shapes), ``timing`` (timers and measured peaks), ``providers`` (what is
timed: fastconv backends, eager, torch.compile), ``harness`` (runs a suite),
``report`` (JSON, Markdown, plot, printed table), ``autotable`` (the table
``auto`` reads).
"""
