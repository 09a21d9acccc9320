"""Getting the numba MMU kernel ready: compiled now, loaded from numba's cache, or warm.

The simulator's inner loop, :func:`kaiser_edu.hw.mmu_kernels.run_trace`, is compiled to
machine code by numba the first time it is called in a process, in two variants: one that
records every op's result, one that keeps counters only (run_trace's docstring). With ``cache=True`` numba
saves the result in its cache directory (``NUMBA_CACHE_DIR``), so the *first* run on a
computer pays the whole compile (tens of seconds on a small laptop) and later processes load
it in well under a second. Every other part of the simulator (the kernel model, the widgets,
the labs) goes through that one kernel, so running both variants once is the whole warm-up.

:func:`load_mmu_kernel` does that with the smallest possible machine (one page mapped, one
access recorded, one counted) and says which of the three cases happened, and whether the
answer was right.
``kaiser-edu doctor`` and the lessons' first cell (:func:`kaiser_edu.widgets.warm_up`) both
use it, each with its own words around it.

>>> load_mmu_kernel().ok
True
"""

from __future__ import annotations

from dataclasses import dataclass

COMPILED, CACHED, WARM, NO_JIT = "compiled", "cache", "warm", "nojit"

#: What each case means, in the words the doctor and the lessons print.
HOW = {
    COMPILED: "compiled now and saved to numba's cache: the next start loads it in well "
              "under a second",
    CACHED: "loaded from numba's cache",
    WARM: "already compiled in this Python process",
    NO_JIT: "numba's JIT is disabled (NUMBA_DISABLE_JIT=1): the kernels run as plain "
            "Python, correct but far too slow for the labs",
}


@dataclass(frozen=True)
class KernelStatus:
    """How the MMU kernel became ready (:data:`COMPILED`, :data:`CACHED`, :data:`WARM` or
    :data:`NO_JIT`), and whether its first translation was right (``problem`` says what
    went wrong otherwise)."""

    how: str
    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem

    @property
    def explanation(self) -> str:
        return HOW[self.how]


def load_mmu_kernel() -> KernelStatus:
    """Run one user-mode write on a one-page machine through the numba MMU kernel, once
    recorded and once counted.

    The calls compile both variants of :func:`~kaiser_edu.hw.mmu_kernels.run_trace` (or load
    them from the cache); the dispatcher's signatures before the calls and its cache
    statistics after them tell which (compiled if either was). Exceptions from numba
    propagate: a broken installation must be seen.
    """
    from numba.core import config

    from kaiser_edu.hw import bits
    from kaiser_edu.hw import mmu_kernels as kernels
    from kaiser_edu.hw.mmu import MMU, Trace
    from kaiser_edu.hw.pgtable import PageTables
    from kaiser_edu.hw.physmem import FrameAllocator, PhysMem
    from kaiser_edu.hw.regs import Registers

    dispatcher = kernels.run_trace
    warm = len(getattr(dispatcher, "signatures", ())) >= 2
    mem = PhysMem()
    tables = PageTables(mem, FrameAllocator(mem))
    tables.map(0x400000, 0x5000, flags=bits.PAGE_SHARED)
    mmu = MMU(mem, Registers.long_mode(cr3=tables.cr3()), tlb=None)
    result = mmu.access(0x400123, "write", cpl=3)
    counted = mmu.run(Trace.accesses([0x400123], "write", cpl=3), record=False).counters
    problem = "" if result.pa == 0x5123 else \
        f"wrong translation on a one-page machine: {result} (expected pa 0x5123)"
    if not problem and (counted["accesses"], counted["walks"]) != (1, 1):
        problem = f"wrong counters on a one-page machine: {counted} (expected 1 access, 1 walk)"
    if config.DISABLE_JIT:
        return KernelStatus(NO_JIT, problem)
    if warm:
        return KernelStatus(WARM, problem)
    stats = getattr(dispatcher, "stats", None)
    misses = sum(stats.cache_misses.values()) if stats else 1
    return KernelStatus(COMPILED if misses else CACHED, problem)
