"""The CPU code-generation check: stack traffic in the inner loops of every ISA copy of the hot
C++ kernels, read from ``objdump -d`` of the built ``_C.so`` (x86-64; every copy, whatever the
host runs).

    python -m fastconv.backends._cpu_codegen_check [--so PATH] [--all]

For each kernel (``isa_<avx512|avx2|base>::<row kernel><T, ...>``, csrc/cpu/*_kernel.h) it finds
the innermost loops (a backward branch to an address inside the function closes a loop; a loop
holding no other loop is innermost) and counts, in them, the instructions that read or write a
stack slot (an ``(%rsp)`` / ``(%rbp)`` memory operand): whole-vector ones (an xmm / ymm / zmm
register moved or used whole, not a scalar ``ss`` / ``sd`` / broadcast access) are *spills* -- a register tile that does not fit the ISA's vector registers (16 ymm for AVX2,
32 zmm for AVX-512) keeps its accumulators there -- and scalar ones (a pointer or a counter
reloaded) are listed. It prints a table and exits 1 if a kernel copy that must keep its inner
loops in vector registers (MUST_NOT_SPILL: the AVX2 and AVX-512 copies of the row kernels; the
portable copy, 16 xmm for a 64-byte channel block of 4, is reported) spills, 3 if the library or
objdump is missing. CI runs it (tests/test_cpu_codegen_check.py).
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# The row kernels whose inner loops are the whole cost of a call: the small-C direct conv
# (forward, backward), the ATen-core path's pooled epilogue / unpool prologue, and the standalone
# max_pool2d's forward row (csrc/cpu/max_pool2d_kernel.h).
KERNELS = ("fwd_row", "bwd_row", "pool_row", "unpool_row", "pool_fwd_row")
MUST_NOT_SPILL = {("fwd_row", "avx512"), ("fwd_row", "avx2"), ("bwd_row", "avx512"), ("bwd_row", "avx2"),
                  ("pool_row", "avx512"), ("pool_row", "avx2"), ("unpool_row", "avx2"),
                  ("pool_fwd_row", "avx512")}
ISAS = ("avx512", "avx2", "base")
EXIT_UNAVAILABLE = 3

_SYM = re.compile(r"^([0-9a-f]+) ([0-9a-f]+) [tTwW] (.*isa_(avx512|avx2|base)::(\w+)<([^>]*)>.*)$")
_INSN = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$")
_BRANCH = re.compile(r"^j\w*$")
_STACK = re.compile(r"\((%rsp|%rbp)[),]")
_VREG = re.compile(r"%[xyz]mm\d")
# one element moved or used: a scalar read of a stack buffer (a scatter through a local array, a
# spilled scalar), not a vector register spilled
_SCALAR_OP = re.compile(r"(ss|sd|broadcast\w*|insert\w*|extract\w*|cvtsi2\w*)$")


@dataclass
class Kernel:
    isa: str
    name: str
    args: str
    addr: int
    size: int
    loops: int = 0
    insns: int = 0
    spills: int = 0  # vector instructions with a stack operand
    stack: int = 0   # scalar ones

    @property
    def label(self) -> str:
        return f"isa_{self.isa}::{self.name}<{self.args}>"


def find_library() -> Path | None:
    from fastconv import _ext

    if not _ext.load():
        return None
    return Path(_ext.status()["path"])


def kernels(so: Path) -> list[Kernel]:
    out = subprocess.run(["nm", "-C", "-S", "--defined-only", str(so)], capture_output=True, text=True,
                         check=True).stdout
    found = []
    for line in out.splitlines():
        m = _SYM.match(line)
        if m and m.group(5) in KERNELS:
            found.append(Kernel(m.group(4), m.group(5), m.group(6), int(m.group(1), 16), int(m.group(2), 16)))
    return sorted(found, key=lambda k: (KERNELS.index(k.name), ISAS.index(k.isa), k.args))


def disassemble(so: Path, k: Kernel) -> list[tuple[int, str, str]]:
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--start-address={k.addr:#x}",
                          f"--stop-address={k.addr + k.size:#x}", str(so)], capture_output=True, text=True,
                         check=True).stdout
    insns = []
    for line in out.splitlines():
        m = _INSN.match(line)
        if m:
            insns.append((int(m.group(1), 16), m.group(2), m.group(3)))
    return insns


def inner_loops(insns, lo: int, hi: int) -> list[tuple[int, int]]:
    """[start, end] address ranges of the innermost loops: backward branches inside [lo, hi)."""
    loops = []
    for addr, op, rest in insns:
        if _BRANCH.match(op):
            t = re.match(r"([0-9a-f]+)", rest)
            if t:
                target = int(t.group(1), 16)
                if lo <= target <= addr:
                    loops.append((target, addr))
    return [a for a in loops if not any(b != a and a[0] <= b[0] and b[1] <= a[1] for b in loops)]


def analyse(so: Path, k: Kernel) -> Kernel:
    insns = disassemble(so, k)
    loops = inner_loops(insns, k.addr, k.addr + k.size)
    k.loops = len(loops)
    for start, end in loops:
        body = [(op, rest) for addr, op, rest in insns if start <= addr <= end]
        k.insns += len(body)
        for op, rest in body:
            if _STACK.search(rest) and not op.startswith(("lea", "prefetch")):
                if _VREG.search(rest) and not _SCALAR_OP.search(op):
                    k.spills += 1
                else:
                    k.stack += 1
    return k


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--so", type=Path, help="the library to read (default: the built fastconv._C)")
    ap.add_argument("--all", action="store_true", help="list every kernel, not only those with stack traffic")
    args = ap.parse_args(argv)
    if shutil.which("objdump") is None or shutil.which("nm") is None:
        print("cpu codegen check: objdump / nm not found (binutils)", file=sys.stderr)
        return EXIT_UNAVAILABLE
    so = args.so or find_library()
    if so is None or not so.is_file():
        print(f"cpu codegen check: no built library ({so})", file=sys.stderr)
        return EXIT_UNAVAILABLE
    ks = [analyse(so, k) for k in kernels(so)]
    if not ks:
        print(f"cpu codegen check: no ISA kernel copies in {so} (not an x86-64 build?)", file=sys.stderr)
        return EXIT_UNAVAILABLE
    bad = [k for k in ks if k.spills and (k.name, k.isa) in MUST_NOT_SPILL]
    print(f"{'kernel':<44} {'inner loops':>11} {'insns':>6} {'spills':>7} {'scalar':>7}  verdict")
    for k in ks:
        if args.all or k.spills:
            verdict = "SPILLS" if k in bad else ("spills (reported)" if k.spills else "ok")
            print(f"{k.label:<44} {k.loops:>11} {k.insns:>6} {k.spills:>7} {k.stack:>7}  {verdict}")
    per_isa = {isa: sum(1 for k in ks if k.isa == isa) for isa in ISAS}
    print(f"{len(ks)} kernel copies ({', '.join(f'{n} {isa}' for isa, n in per_isa.items())}) in {so}; "
          f"{len(bad)} spilling vector registers in an inner loop that must keep them")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
