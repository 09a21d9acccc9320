"""The processor state that paging reads: CR0, CR3, CR4, IA32_EFER, PKRU and MAXPHYADDR.

The simulator models IA-32e paging only (CR0.PG=1, CR4.PAE=1, EFER.LME=1: 64-bit mode), with
4 levels, or 5 when CR4.LA57=1. Registers are kept as whole register values, so ``cr4 &
X86_CR4_SMEP`` reads exactly as it does in arch/x86; the properties give the same bits by
name for readers who prefer ``regs.smep``.

Per-access state (CPL and RFLAGS.AC) is not here: it travels with each access.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b

_LONG_MODE_CR0 = b.X86_CR0_PE | b.X86_CR0_PG
_LONG_MODE_EFER = b.EFER_LME | b.EFER_LMA


@dataclass(frozen=True)
class Registers:
    """A consistent set of paging registers. Build one with :meth:`long_mode`."""

    cr0: int
    cr3: int
    cr4: int
    efer: int
    pkru: int = 0
    maxphyaddr: int = b.MAX_PHYADDR_BITS

    @classmethod
    def long_mode(
        cls,
        cr3: int = 0,
        *,
        levels: int = 4,
        wp: bool = True,
        smep: bool = False,
        smap: bool = False,
        nxe: bool = True,
        pke: bool = False,
        pge: bool = True,
        pcide: bool = False,
        pkru: int = 0,
        maxphyaddr: int = b.MAX_PHYADDR_BITS,
    ) -> Registers:
        """Registers of a 64-bit CPU with the named features switched on or off."""
        if levels not in (4, 5):
            raise KaiserEduError(f"levels must be 4 or 5 (5 = CR4.LA57), got {levels!r}")
        cr0 = _LONG_MODE_CR0 | (b.X86_CR0_WP if wp else 0)
        cr4 = b.X86_CR4_PAE
        for on, bit in (
            (levels == 5, b.X86_CR4_LA57),
            (smep, b.X86_CR4_SMEP),
            (smap, b.X86_CR4_SMAP),
            (pke, b.X86_CR4_PKE),
            (pge, b.X86_CR4_PGE),
            (pcide, b.X86_CR4_PCIDE),
        ):
            if on:
                cr4 |= bit
        efer = _LONG_MODE_EFER | (b.EFER_NXE if nxe else 0)
        regs = cls(cr0=cr0, cr3=cr3, cr4=cr4, efer=efer, pkru=pkru, maxphyaddr=maxphyaddr)
        regs.validate()
        return regs

    def validate(self) -> None:
        """Refuse states a real CPU would not be in (it would have raised #GP on the MOV)."""
        if not 32 <= self.maxphyaddr <= b.MAX_PHYADDR_BITS:
            raise KaiserEduError(
                f"maxphyaddr must be between 32 and 52 bits, got {self.maxphyaddr!r}"
            )
        for name in ("cr0", "cr3", "cr4", "efer", "pkru"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < 1 << 64:
                raise KaiserEduError(f"{name} must be an integer in [0, 2**64), got {value!r}")
        if self.pkru >= 1 << 32:
            raise KaiserEduError(f"pkru is a 32-bit register, got {self.pkru:#x}")
        missing = [
            name
            for name, ok in (
                ("CR0.PG", self.cr0 & b.X86_CR0_PG),
                ("CR4.PAE", self.cr4 & b.X86_CR4_PAE),
                ("EFER.LME", self.efer & b.EFER_LME),
            )
            if not ok
        ]
        if missing:
            raise KaiserEduError(
                "only IA-32e (64-bit) paging is simulated; these must be set: "
                + ", ".join(missing)
            )
        check_cr3(self.cr3, self.maxphyaddr)

    # Named bits, for readability in lessons and in the reference walk.
    @property
    def levels(self) -> int:
        return 5 if self.cr4 & b.X86_CR4_LA57 else 4

    @property
    def wp(self) -> bool:
        return bool(self.cr0 & b.X86_CR0_WP)

    @property
    def pge(self) -> bool:
        return bool(self.cr4 & b.X86_CR4_PGE)

    @property
    def pcide(self) -> bool:
        return bool(self.cr4 & b.X86_CR4_PCIDE)

    @property
    def smep(self) -> bool:
        return bool(self.cr4 & b.X86_CR4_SMEP)

    @property
    def smap(self) -> bool:
        return bool(self.cr4 & b.X86_CR4_SMAP)

    @property
    def pke(self) -> bool:
        return bool(self.cr4 & b.X86_CR4_PKE)

    @property
    def nxe(self) -> bool:
        return bool(self.efer & b.EFER_NXE)

    @property
    def pgd_pa(self) -> int:
        """Physical address of the top-level table (PML4, or PML5 with LA57)."""
        return self.cr3 & b.phys_addr_mask(self.maxphyaddr)

    @property
    def pcid(self) -> int:
        """The current PCID: CR3[11:0] with CR4.PCIDE=1, otherwise always 0 (SDM 4.10.1)."""
        return self.cr3 & b.X86_CR3_PCID_MASK if self.pcide else 0

    def with_cr3(self, cr3: int) -> Registers:
        check_cr3(cr3, self.maxphyaddr)
        return replace(self, cr3=cr3)


def check_cr3(value: int, maxphyaddr: int) -> None:
    """Reject a CR3 value with reserved bits set (bits 62:MAXPHYADDR; bit 63 is NOFLUSH,
    which the CPU consumes on the MOV and never stores)."""
    reserved = ((1 << 63) - 1) & ~((1 << maxphyaddr) - 1)
    if value & reserved:
        raise KaiserEduError(
            f"cr3 {value:#x} sets reserved bits {value & reserved:#x}: with MAXPHYADDR="
            f"{maxphyaddr} only bits {maxphyaddr - 1}:12 (table address) and 11:0 "
            "(PCID or PWT/PCD) may be set"
        )
    if value >> 63:
        raise KaiserEduError(
            f"cr3 {value:#x} has bit 63 set: that is the NOFLUSH hint of MOV to CR3, "
            "not a CR3 bit; pass it to mov_cr3() instead"
        )
