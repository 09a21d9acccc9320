"""Transient execution on the simulated MMU: what a faulting user load forwards.

Meltdown's step 1 (Lipp et al., USENIX Security 2018, section 5): user code loads from a
kernel address. Architecturally the load faults; on an affected CPU the value still reaches
the dependent instructions before the fault retires. What decides whether there is a value
to forward is the *translation*, not the data: the CPU must have found a physical address.
So this module asks the MMU, the same TLB and page walk every other access uses, under the
CR3 that is active at that moment:

* the load succeeds (a user page): the value is simply read, nothing transient about it;
* #PF with P=1 in the error code and no RSVD: the walk found P=1 at every level (or the TLB
  had the translation) and only the rights check failed (U/S=0). On a CPU with
  ``meltdown=True`` the value at the translated physical address is forwarded;
* #PF with P=0 (a not-present entry: under KAISER/PTI the kernel is simply absent from the
  user PGD), a reserved-bit #PF, or #GP (non-canonical): there is no physical address, and
  nothing is forwarded, on any CPU.

The physical address of a protection fault is not an architectural result (the MMU reports
none for a faulting access), so it is recovered the way the hardware found it: where the
MMU says the access hit the TLB, from that TLB entry (read before the batch runs, since the
fault then drops it: a stale entry forwards the *old* frame's data); where it walked, by
:func:`kaiser_edu.hw.walk.walk`, the readable walk the numba MMU is tested against, from
the same registers: the leaf entry that refused the access names the frame. Nothing here
knows where any secret is.

What stops forwarding besides the translation is timing: the value must arrive before the
fault retires, which in practice means it must be in the L1 data cache (the paper keeps the
kernel secret cached with a syscall that touches it). :data:`P_FORWARD_CACHED` and
:data:`P_FORWARD_UNCACHED` are the chances that one attempt wins that race; both are
assumed values, not measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kaiser_edu.hw import bits as b
from kaiser_edu.hw.mmu import Trace
from kaiser_edu.hw.walk import walk

P_FORWARD_CACHED = 0.97  # assumed: a cached secret wins the race almost every time
P_FORWARD_UNCACHED = 0.02  # assumed: from DRAM the fault usually retires first

# Why a byte was (not) forwarded: codes of TransientLoads.reason.
FORWARDED = 0  # protection fault on a vulnerable CPU: the value was forwarded
ARCHITECTURAL = 1  # no fault at all (a user page): the load simply returned it
NOT_AFFECTED = 2  # protection fault, but the CPU does not forward (not Meltdown-affected)
NOT_PRESENT = 3  # #PF with P=0: no translation in the active page tables
RESERVED = 4  # #PF with RSVD: no valid translation
NON_CANONICAL = 5  # #GP: no translation attempted
REASONS = ("forwarded past a protection fault", "no fault (user-accessible)",
           "protection fault, CPU not affected", "not present in the active page tables",
           "reserved bit set: no valid translation", "non-canonical address (#GP)")


@dataclass
class TransientLoads:
    """Per byte: was a value forwarded, which, from where, and why (or why not)."""

    va: np.ndarray  # uint64
    forwarded: np.ndarray  # bool
    value: np.ndarray  # uint8 (0 where not forwarded)
    pa: np.ndarray  # uint64 physical address (0 where there is no translation)
    reason: np.ndarray  # uint8 codes into REASONS
    tlb: np.ndarray  # uint8: 0 walk, 1 L1 hit, 2 L2 hit (from the MMU)

    def summary(self) -> str:
        """The reasons and how many bytes each covers, most common first."""
        codes, counts = np.unique(self.reason, return_counts=True)
        order = np.argsort(-counts)
        return "; ".join(f"{REASONS[codes[i]]}: {counts[i]}" for i in order)


def transient_loads(kernel, vas: np.ndarray) -> TransientLoads:
    """Run one user-mode (CPL 3) byte load per address through ``kernel``'s MMU, under the
    current CR3, and decide what each forwards on ``kernel.cpu``. One batch for all bytes."""
    vas = np.ascontiguousarray(vas, dtype=np.uint64)
    tlb = kernel.mmu.tlb_entries()  # before the faults drop the entries they hit
    res = kernel.mmu.run(Trace.accesses(vas, "read", cpl=3))
    n = len(vas)
    reason = np.full(n, NOT_PRESENT, np.uint8)
    pa = np.zeros(n, np.uint64)
    ok = res.outcome == b.OUTCOME_OK
    reason[ok] = ARCHITECTURAL
    pa[ok] = res.pa[ok]
    reason[res.outcome == b.OUTCOME_GP] = NON_CANONICAL
    pf = res.outcome == b.OUTCOME_PF
    err = res.error_code.astype(np.int64)
    reason[pf & ((err & b.X86_PF_RSVD) != 0)] = RESERVED
    prot = pf & ((err & b.X86_PF_PROT) != 0) & ((err & b.X86_PF_RSVD) == 0)
    reason[prot] = FORWARDED if kernel.cpu.meltdown else NOT_AFFECTED
    if prot.any():
        regs = kernel.mmu.regs
        pcid = regs.cr3 & 0xFFF if regs.pcide else 0
        frames: dict[int, int] = {}
        for i in np.flatnonzero(prot):
            va = int(vas[i])
            page = va & ~(b.PAGE_SIZE - 1)
            if res.where[i]:  # a TLB hit: the cached translation, even if the tables changed
                frame = _tlb_frame(tlb, page, pcid)
            else:
                if page not in frames:
                    frames[page] = _faulting_frame(kernel.mem, regs, page)
                frame = frames[page]
            pa[i] = frame | (va & (b.PAGE_SIZE - 1))
    forwarded = (reason == FORWARDED) | (reason == ARCHITECTURAL)
    value = read_bytes(kernel.mem, pa, forwarded)
    return TransientLoads(vas, forwarded, value, pa, reason, res.where.copy())


def _tlb_frame(entries: list[dict], page: int, pcid: int) -> int:
    """The frame a usable TLB entry (global, or of the current PCID) gives ``page``."""
    for e in entries:
        if e["va"] <= page < e["va"] + e["page_size"] and (e["global"] or e["pcid"] == pcid):
            return e["pa"] + (page - e["va"])
    raise AssertionError(f"the MMU reported a TLB hit for {page:#x} but no entry matches")


def _faulting_frame(mem, regs, page: int) -> int:
    """The 4 KiB frame the walk reached for a protection-faulting user read of ``page``:
    the leaf's frame plus the page's offset inside a 2 MiB or 1 GiB page."""
    result = walk(mem, regs, page, "read", cpl=3, set_ad=False)
    leaf = result.steps[-1]
    size = 1 << b.level_shift(leaf.level)
    return (leaf.entry & b.phys_addr_mask(regs.maxphyaddr) & ~(size - 1)) | (page & (size - 1))


def read_bytes(mem, pa: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The byte at each physical address where ``mask`` is set (0 elsewhere), read a qword
    at a time from simulated physical memory."""
    out = np.zeros(len(pa), np.uint8)
    qwords: dict[int, int] = {}
    for i in np.flatnonzero(mask):
        p = int(pa[i])
        q = p & ~7
        if q not in qwords:
            qwords[q] = mem.read_qword(q)
        out[i] = qwords[q] >> (8 * (p & 7)) & 0xFF
    return out
