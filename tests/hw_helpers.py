"""Shared builders for the hardware-model tests (tests/test_hw_*.py).

``Machine`` bundles memory, allocator and one page-table tree; ``both()`` runs one access
through the reference walk (kaiser_edu/hw/walk.py, the specification) and through the numba
MMU without a TLB on a deep copy of the same memory, and asserts that the two agree on the
outcome, the #PF error code, the physical address, the page size and on every A/D bit they
leave in memory.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from kaiser_edu.hw import bits as b
from kaiser_edu.hw.mmu import MMU
from kaiser_edu.hw.mmu_kernels import frame_hash
from kaiser_edu.hw.pgtable import PageTables
from kaiser_edu.hw.physmem import FrameAllocator, PhysMem
from kaiser_edu.hw.regs import Registers
from kaiser_edu.hw.walk import WalkResult, walk

# Addresses used throughout (Linux x86-64 layout, Documentation/arch/x86/x86_64/mm.rst).
USER_VA = 0x0000_0000_0040_0000  # a user text/data address (lower half)
KERNEL_VA = 0xFFFF_8880_0000_0000  # start of the direct map, PML4 index 273
KTEXT_VA = 0xFFFF_FFFF_8100_0000  # kernel text (__START_KERNEL_map + 16 MiB)

A = b.PAGE_ACCESSED
D = b.PAGE_DIRTY


@dataclass
class Machine:
    mem: PhysMem
    alloc: FrameAllocator
    pt: PageTables

    def regs(self, **kw) -> Registers:
        """Registers.long_mode() pointing at this tree; keyword args override features."""
        kw.setdefault("levels", self.pt.levels)
        kw.setdefault("maxphyaddr", self.mem.maxphyaddr)
        cr3 = kw.pop("cr3", self.pt.cr3())
        return Registers.long_mode(cr3=cr3, **kw)

    def entry_pa(self, va: int, level: int) -> int:
        """Physical address of the entry of ``level`` (5..1) that a walk for va reads."""
        for e in self.pt.entries(va):
            if e.level == level:
                return e.pa
        raise AssertionError(f"walk for {va:#x} does not reach level {level}")

    def entry(self, va: int, level: int) -> int:
        return self.mem.read_qword(self.entry_pa(va, level))

    def set_bits(self, va: int, level: int, set_bits: int = 0, clear_bits: int = 0) -> None:
        """Edit one entry of va's walk in memory (raw, no checks: exotic tables)."""
        pa = self.entry_pa(va, level)
        self.mem.write_qword(pa, (self.mem.read_qword(pa) | set_bits) & ~clear_bits)

    def clear_ad(self, va: int) -> None:
        """Clear A and D in every entry of va's walk."""
        for e in list(self.pt.entries(va)):
            self.mem.write_qword(e.pa, e.value & ~(A | D))


def machine(levels: int = 4, maxphyaddr: int = b.MAX_PHYADDR_BITS) -> Machine:
    mem = PhysMem(maxphyaddr=maxphyaddr)
    alloc = FrameAllocator(mem, ram_bytes=min(64 << 30, 1 << maxphyaddr))
    return Machine(mem, alloc, PageTables(mem, alloc, levels=levels))


def both(mem: PhysMem, regs: Registers, va: int, kind: str = "read", cpl: int = 3,
         ac: bool = False) -> WalkResult:
    """Reference walk on ``mem`` and MMU(tlb=None) on a copy: assert they agree."""
    mem2 = copy.deepcopy(mem)
    w = walk(mem, regs, va, kind, cpl, ac)
    mmu = MMU(mem2, regs, tlb=None)
    r = mmu.access(va, kind, cpl, ac)
    where = f"{kind} {va:#x} cpl={cpl} ac={ac}"
    assert r.outcome == w.outcome, f"{where}: walk outcome {w.outcome}, MMU {r.outcome}"
    if w.outcome == b.OUTCOME_PF:
        assert r.error_code == w.error_code, (
            f"{where}: walk error code {w.error_code:#x}, MMU {r.error_code:#x}")
    if w.outcome == b.OUTCOME_OK:
        assert (r.pa, r.page_size) == (w.pa, w.page_size), where
    assert r.tlb == "walk"
    assert mem2.nonzero_qwords() == mem.nonzero_qwords(), f"{where}: A/D updates differ"
    c = mmu.counters
    assert c["walk_reads"] == len(w.steps), where
    assert c["ad_writes"] == len(w.ad_updates), where
    assert (c["page_faults"], c["general_protection"]) == (
        int(w.outcome == b.OUTCOME_PF), int(w.outcome == b.OUTCOME_GP)), where
    return w


def expect_pf(w: WalkResult, error_code: int) -> None:
    assert w.outcome == b.OUTCOME_PF, w.summary()
    assert w.error_code == error_code, (
        f"error code {w.error_code:#x} ({b.describe_error_code(w.error_code)}), "
        f"expected {error_code:#x} ({b.describe_error_code(error_code)})")
    assert w.cr2 == w.va


def expect_ok(w: WalkResult, pa: int | None = None) -> None:
    assert w.outcome == b.OUTCOME_OK, w.summary()
    if pa is not None:
        assert w.pa == pa, f"{w.pa:#x} != {pa:#x}"


def ht_lookup(mem: PhysMem, pfn: int) -> int | None:
    """Probe the numpy hash table exactly as the numba walk does (mmu_kernels.run_trace)."""
    h = getattr(frame_hash, "py_func", frame_hash)
    i = int(h(np.uint64(pfn), np.uint64(mem.ht_bits)))
    mask = (1 << mem.ht_bits) - 1
    for _ in range(1 << mem.ht_bits):
        key = int(mem.ht[2 * i])
        if key == pfn + 1:
            return int(mem.ht[2 * i + 1])
        if key == 0:
            return None
        i = (i + 1) & mask
    raise AssertionError("hash table is full")
