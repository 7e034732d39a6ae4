"""The ``fastconv`` command: ``fastconv info``, ``fastconv train ...``."""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="fastconv", description="Fused CNN kernels for PyTorch.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_info = sub.add_parser("info", help="versions, GPUs, extension build state and backends")
    p_info.add_argument("--json", action="store_true", help="print the report as JSON")
    sub.add_parser("train", help="train the reference CNN (fastconv train --help)", add_help=False)
    if argv and argv[0] == "train":
        from .train.cli import main as train_main

        return train_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "info":
        from .info import format_info, info

        d = info()
        print(json.dumps(d, indent=2, default=str) if args.json else format_info(d))
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
