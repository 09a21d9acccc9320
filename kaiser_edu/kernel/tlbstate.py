"""The kernel's side of the TLB: ASIDs, PCIDs and the CR3 values (arch/x86/mm/tlb.c).

Linux does not give every process its own PCID. Each CPU keeps a tiny cache of the last
``TLB_NR_DYN_ASIDS`` = 6 address spaces it ran (``cpu_tlbstate.ctxs``). An address space
that is still in the cache gets its old slot back, and keeps its TLB entries only if they
are current: choose_new_asid() compares the slot's ``tlb_gen`` with the mm's and asks for a
flush when the mm's page tables changed (a flush was requested) since the slot last saw it.
One that is not in the cache takes the next slot round-robin and starts with a flush. Slot
``asid`` runs with

* kernel PCID ``kern_pcid(asid) = asid + 1`` (PCID 0 is left to code that knows no PCIDs),
* user PCID ``user_pcid(asid) = kern_pcid(asid) | 1 << 11`` (PTI only: the user half of the
  8 KiB PGD pair gets its own TLB tag, so a kernel entry and exit need not flush).

Flushing the user PCID is deferred: ``invalidate_user_asid()`` only sets a bit in
``user_pcid_flush_mask``, and the exit to user space (SWITCH_TO_USER_CR3 in
arch/x86/entry/calling.h) clears it and writes CR3 without the NOFLUSH bit. That way a flush
requested while running in the kernel costs nothing until user space actually runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kaiser_edu.hw import bits as b

TLB_NR_DYN_ASIDS = 6  # "6 should be plenty and struct tlb_state will fit in two cache lines"
X86_CR3_PTI_PCID_USER_BIT = 11
PTI_USER_PCID_MASK = 1 << X86_CR3_PTI_PCID_USER_BIT
PTI_USER_PGTABLE_BIT = b.PAGE_SHIFT  # 12: the user PGD is the upper 4 KiB of the pair
PTI_USER_PGTABLE_MASK = 1 << PTI_USER_PGTABLE_BIT
PTI_USER_PGTABLE_AND_PCID_MASK = PTI_USER_PGTABLE_MASK | PTI_USER_PCID_MASK
CR3_NOFLUSH = b.X86_CR3_PCID_NOFLUSH
TLB_SINGLE_PAGE_FLUSH_CEILING = 33  # flush_tlb_mm_range(): more pages -> flush everything


def kern_pcid(asid: int) -> int:
    return asid + 1


def user_pcid(asid: int) -> int:
    return kern_pcid(asid) | PTI_USER_PCID_MASK


@dataclass
class TlbContext:
    """One slot of cpu_tlbstate.ctxs: which mm it holds and how up to date its TLB is."""

    ctx_id: int = 0
    tlb_gen: int = 0


@dataclass
class CpuTlbState:
    """struct tlb_state for one CPU."""

    pcid: bool  # the CPU has PCIDs and the kernel uses them (CR4.PCIDE=1)
    pti: bool  # X86_FEATURE_PTI: a user PCID exists and user flushes are deferred
    invpcid: bool
    loaded_mm_asid: int = 0
    next_asid: int = 1
    ctxs: list[TlbContext] = field(default_factory=lambda: [TlbContext() for _ in range(6)])
    user_pcid_flush_mask: int = 0  # bit kern_pcid(asid): flush that user PCID at exit
    invalidate_other: bool = False

    def build_cr3(self, pgd_pa: int, asid: int, noflush: bool = False) -> int:
        """build_cr3()/build_cr3_noflush(): the kernel CR3 of an address space."""
        if not self.pcid:
            return pgd_pa
        return pgd_pa | kern_pcid(asid) | (CR3_NOFLUSH if noflush else 0)

    def choose_new_asid(self, ctx_id: int, tlb_gen: int) -> tuple[int, bool]:
        """choose_new_asid(): reuse the slot that still holds this mm, else take the next
        one round-robin. Returns (asid, need_flush)."""
        if not self.pcid:
            return 0, True
        if self.invalidate_other:
            self.clear_asid_other()
        for asid, ctx in enumerate(self.ctxs):
            if ctx.ctx_id == ctx_id:
                return asid, ctx.tlb_gen < tlb_gen
        asid = self.next_asid
        self.next_asid += 1
        if asid >= TLB_NR_DYN_ASIDS:
            asid, self.next_asid = 0, 1
        return asid, True

    def clear_asid_other(self) -> None:
        """Forget every slot but the current one, so each gets a flush when next used
        (kernel mappings are non-global under PTI: other PCIDs may hold stale ones)."""
        for asid, ctx in enumerate(self.ctxs):
            if asid != self.loaded_mm_asid:
                ctx.ctx_id = 0
        self.invalidate_other = False

    def invalidate_user_asid(self, asid: int) -> None:
        """Ask for the user PCID of ``asid`` to be flushed at the next exit to user space."""
        if self.pcid and self.pti:
            self.user_pcid_flush_mask |= 1 << kern_pcid(asid)

    def switch_to_kernel_cr3(self, cr3: int) -> int:
        """SWITCH_TO_KERNEL_CR3: the kernel half of the pair and the kernel PCID. With PCIDs
        the write never flushes (kernel entries are kept up to date explicitly)."""
        cr3 &= ~PTI_USER_PGTABLE_AND_PCID_MASK
        return cr3 | CR3_NOFLUSH if self.pcid else cr3

    def switch_to_user_cr3(self, cr3: int) -> int:
        """SWITCH_TO_USER_CR3 (arch/x86/entry/calling.h): the user half and the user PCID;
        NOFLUSH unless this ASID's user PCID has a flush pending, in which case the bit is
        consumed. The SYSRET exit invokes the macro through SWITCH_TO_USER_CR3_STACK
        scratch_reg=%rdi, which saves %rax as the second scratch register; the IRET exit
        calls it directly."""
        cr3 &= ~CR3_NOFLUSH
        if self.pcid:
            kpcid = cr3 & 0x7FF
            noflush = True
            if self.user_pcid_flush_mask & (1 << kpcid):
                self.user_pcid_flush_mask &= ~(1 << kpcid)
                noflush = False
            cr3 |= PTI_USER_PCID_MASK | (CR3_NOFLUSH if noflush else 0)
        return cr3 | PTI_USER_PGTABLE_MASK
