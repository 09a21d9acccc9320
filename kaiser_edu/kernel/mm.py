"""Address spaces: ``struct mm_struct`` with its PGD (or 8 KiB PGD pair) and its VMAs.

Every top-level entry the kernel writes goes through :meth:`KernelPageTables.set_entry`,
which hands it to the isolation mode's ``set_pgd`` (Linux's native_set_p4d(), where
pti_set_user_pgtbl() mirrors user-half entries into the user PGD). Lower levels are
written directly: they are shared by both PGDs, which is the whole point of the design.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.pgtable import PageTables
from kaiser_edu.hw.physmem import FrameAllocator, PhysMem

if TYPE_CHECKING:
    from kaiser_edu.kernel.ldt import LdtStruct

# VMA permission bits (include/linux/mm.h VM_READ/VM_WRITE/VM_EXEC) and PROT_* values.
VM_READ, VM_WRITE, VM_EXEC = 1, 2, 4
PROT_NONE, PROT_READ, PROT_WRITE, PROT_EXEC = 0, 1, 2, 4

_ctx_ids = itertools.count(1)  # mm->context.ctx_id: unique, never reused (tlb.c)


def vm_page_prot(prot: int) -> int:
    """The leaf flags of a user page with these VM_* permissions (protection_map[])."""
    if prot == PROT_NONE:
        return 0  # not present: any access faults, and the fault handler refuses it
    flags = b.PAGE_PRESENT | b.PAGE_USER
    if prot & VM_WRITE:
        flags |= b.PAGE_RW
    if not prot & VM_EXEC:
        flags |= b.PAGE_NX
    return flags


@dataclass
class Vma:
    """struct vm_area_struct: [start, end) with VM_* permissions."""

    start: int
    end: int
    prot: int
    name: str = "[anon]"

    def __contains__(self, va: int) -> bool:
        return self.start <= va < self.end

    def allows(self, access: str) -> bool:
        """access_error() in arch/x86/mm/fault.c, inverted: a write needs VM_WRITE, a fetch
        VM_EXEC, and a read any access at all (vma_is_accessible(): x86 pages that can be
        written or executed can also be read, there is no write-only PTE)."""
        if access == "read":
            return bool(self.prot & (VM_READ | VM_WRITE | VM_EXEC))
        return bool(self.prot & {"write": VM_WRITE, "fetch": VM_EXEC}[access])


class KernelPageTables(PageTables):
    """Page tables whose top-level writes go through ``set_pgd(entry_pa, value)``."""

    def __init__(self, mem: PhysMem, alloc: FrameAllocator, pgd_pa: int,
                 set_pgd: Callable[[int, int], None], levels: int = 4):
        super().__init__(mem, alloc, levels=levels, pgd_pa=pgd_pa)
        self._set_pgd = set_pgd

    def set_entry(self, level: int, entry_pa: int, value: int) -> None:
        if level == self.levels:
            self._set_pgd(entry_pa, value)
        else:
            self.mem.write_qword(entry_pa, value)


@dataclass
class MmStruct:
    """One address space. ``pgd`` is the kernel PGD; with KAISER/PTI the user PGD is
    ``pgd + 4096`` (the upper half of the order-1 allocation)."""

    pgd: int
    pgd_pair: bool
    tables: KernelPageTables
    vmas: list[Vma] = field(default_factory=list)
    start_brk: int = 0
    brk: int = 0
    mmap_base: int = 0x7F00_0000_0000
    ctx_id: int = field(default_factory=lambda: next(_ctx_ids))
    tlb_gen: int = 1
    ldt: LdtStruct | None = None  # modify_ldt(2)'s descriptors (kernel/ldt.py)

    @property
    def user_pgd(self) -> int | None:
        return self.pgd + b.PAGE_SIZE if self.pgd_pair else None

    def find_vma(self, va: int) -> Vma | None:
        for vma in self.vmas:
            if va in vma:
                return vma
        return None

    def add_vma(self, vma: Vma) -> Vma:
        if vma.start >= vma.end or vma.start & 0xFFF or vma.end & 0xFFF:
            raise KaiserEduError(f"bad VMA [{vma.start:#x}, {vma.end:#x}): page-aligned, non-empty")
        for other in self.vmas:
            if vma.start < other.end and other.start < vma.end:
                raise KaiserEduError(
                    f"[{vma.start:#x}, {vma.end:#x}) overlaps {other.name} "
                    f"[{other.start:#x}, {other.end:#x})"
                )
        self.vmas.append(vma)
        self.vmas.sort(key=lambda v: v.start)
        return vma

    def get_unmapped_area(self, length: int) -> int:
        """Top-down search below mmap_base, like arch_get_unmapped_area_topdown()."""
        top = self.mmap_base
        for vma in sorted(self.vmas, key=lambda v: -v.start):
            if vma.start >= top:
                continue
            if vma.end <= top - length:
                break
            top = vma.start
        return top - length
