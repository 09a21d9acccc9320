"""The hardware model: x86-64 paging as the Intel SDM Vol. 3A chapter 4 describes it.

- :mod:`~kaiser_edu.hw.bits`: names and decoders for entry bits, control registers, #PF codes
- :mod:`~kaiser_edu.hw.address`: canonical addresses and index fields
- :mod:`~kaiser_edu.hw.regs`: the paging registers (CR0, CR3, CR4, EFER, PKRU)
- :mod:`~kaiser_edu.hw.physmem`: sparse physical memory and a frame allocator
- :mod:`~kaiser_edu.hw.pgtable`: building page tables (map / unmap / protect)
- :mod:`~kaiser_edu.hw.walk`: the readable reference walk (the specification)
- :mod:`~kaiser_edu.hw.mmu`: the fast MMU (numba walk + TLB) driven by traces
- :mod:`~kaiser_edu.hw.scenario`: the JSON scenario format of ``kaiser-edu walk``

Nothing here knows about Linux or KAISER: the simulated kernel builds on this package.
"""

from kaiser_edu.hw import bits
from kaiser_edu.hw.address import canonicalize, is_canonical, split
from kaiser_edu.hw.mmu import MMU, AccessResult, TLBConfig, Trace, TraceBuilder, TraceResult
from kaiser_edu.hw.pgtable import Entry, PageTables
from kaiser_edu.hw.physmem import FrameAllocator, PhysMem
from kaiser_edu.hw.regs import Registers
from kaiser_edu.hw.walk import WalkResult, WalkStep, walk

__all__ = [
    "MMU", "AccessResult", "Entry", "FrameAllocator", "PageTables", "PhysMem", "Registers",
    "TLBConfig", "Trace", "TraceBuilder", "TraceResult", "WalkResult", "WalkStep", "bits",
    "canonicalize", "is_canonical", "split", "walk",
]
