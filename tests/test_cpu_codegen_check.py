"""The CPU code-generation check (fastconv/backends/_cpu_codegen_check.py) on the built library:
every ISA copy of the row kernels is found, and none that must keep its inner loops in vector
registers spills them."""
import platform

import pytest

from fastconv.backends import _cpu_codegen_check as check

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                                reason="the ISA copies are x86-64 code")


def test_no_spills_in_the_inner_loops(capsys):
    rc = check.main(["--all"])
    out = capsys.readouterr()
    if rc == check.EXIT_UNAVAILABLE:
        pytest.skip(out.err.strip())
    assert rc == 0, out.out
    assert "96 kernel copies (32 avx512, 32 avx2, 32 base)" in out.out
    assert " 0 spilling vector registers" in out.out


def test_a_spill_is_counted(monkeypatch):
    """The counter itself: a whole-vector stack access in an innermost loop is a spill, a scalar
    read of a stack buffer is not."""
    insns = [(0x10, "vmovups", "%ymm0,0x40(%rsp)"), (0x14, "vaddss", "0x88(%rsp),%xmm0,%xmm0"),
             (0x18, "mov", "0x8(%rsp),%rax"), (0x1c, "jne", "10 <f+0x10>")]
    assert check.inner_loops(insns, 0x0, 0x40) == [(0x10, 0x1c)]
    k = check.Kernel("avx2", "fwd_row", "float, 1, false", 0x0, 0x40)
    monkeypatch.setattr(check, "disassemble", lambda so, kk: insns)  # no library needed
    check.analyse(None, k)
    assert (k.loops, k.insns, k.spills, k.stack) == (1, 4, 1, 2)
