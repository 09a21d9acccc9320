"""The per-process LDT and its PTI remap (arch/x86/kernel/ldt.c).

A process may install its own segment descriptors with ``modify_ldt(2)``. The CPU reads a
descriptor whenever user code loads a selector with TI=1 (``mov %ax, %ds``): an *implicit
supervisor* access, made in user mode, under whatever CR3 is loaded - the user PGD under
PTI. So the LDT must be mapped in the user page tables, and since every process has its
own, it cannot be cloned once at boot like the cpu_entry_area.

Linux's answer (map_ldt_struct()): reserve one PGD slot, ``LDT_BASE_ADDR``, and map each
process's LDT there in *its own* page tables, read-only ("so the easy to find address is not
a primary target via some kernel interface which misses a permission check") and non-global
(the slot means something different in every address space). The first time, the kernel
PGD entry of the slot is copied into the user PGD (map_ldt_struct_to_user()); both then
share the lower tables, so later LDTs show up in both. A new LDT goes into the other of two
slots (``LDT_SLOT_STRIDE`` apart) so that other CPUs keep using the old one until
install_ldt() switches them; then the old slot's PTEs are cleared and flushed
(unmap_ldt_struct()). Without PTI none of this happens: the LDT is just kernel memory,
reached through the direct map. KAISER in 2017 had no remap slot: Hansen's
series mapped each LDT where it was allocated with kaiser_add_mapping() ("x86, kaiser: map
dynamically-allocated LDTs") into the shadow's kernel half, which every process shares, and
removed it with kaiser_remove_mapping() when the LDT was freed.
"""

from __future__ import annotations

from dataclasses import dataclass

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.address import table_index
from kaiser_edu.kernel import layout as L

LDT_ENTRY_SIZE = 8
LDT_ENTRIES = 8192  # arch/x86/include/uapi/asm/ldt.h
LDT_SLOT_STRIDE = LDT_ENTRIES * LDT_ENTRY_SIZE  # 64 KiB: room for the largest LDT
# __PAGE_KERNEL_RO & ~_PAGE_GLOBAL: "Treat the PTI LDT range as a *userspace* range."
LDT_PTE_PROT = b.PAGE_KERNEL_RO & ~b.PAGE_GLOBAL


@dataclass
class LdtStruct:
    """struct ldt_struct: ``nr_entries`` descriptors in contiguous frames at ``pa``;
    ``slot`` is the PTI remap slot (0 or 1), -1 if not remapped (PTI off)."""

    pa: int
    nr_entries: int
    slot: int = -1

    @property
    def nr_pages(self) -> int:
        return -(-self.nr_entries * LDT_ENTRY_SIZE // b.PAGE_SIZE)


def ldt_slot_va(slot: int) -> int:
    """Where LDT slot 0 or 1 is mapped: LDT_BASE_ADDR + slot * LDT_SLOT_STRIDE."""
    return L.LDT_BASE_ADDR + slot * LDT_SLOT_STRIDE


def _pti(k) -> bool:
    """boot_cpu_has(X86_FEATURE_PTI): only Linux PTI remaps the LDT."""
    return k.isolation.name == "pti"


def _kaiser(k) -> bool:
    return k.isolation.name == "kaiser"


def alloc_ldt_struct(k, nr_entries: int) -> LdtStruct:
    """Zeroed frames for ``nr_entries`` descriptors (Linux vzallocs more than a page; the
    simulator takes contiguous frames, reachable through the direct map either way)."""
    ldt = LdtStruct(pa=0, nr_entries=nr_entries)
    ldt.pa = k.alloc.alloc_contig(ldt.nr_pages)
    if _kaiser(k):
        k.isolation.kaiser_add_mapping(k.layout.direct_map(ldt.pa), ldt.nr_pages * b.PAGE_SIZE,
                                       b.PAGE_KERNEL, "LDT")
    return ldt


def free_ldt_struct(k, ldt: LdtStruct | None) -> None:
    if ldt is None:
        return
    if _kaiser(k):
        k.isolation.kaiser_remove_mapping(k.layout.direct_map(ldt.pa),
                                          ldt.nr_pages * b.PAGE_SIZE)
    for i in range(ldt.nr_pages):
        k.alloc.free(ldt.pa + i * b.PAGE_SIZE)


def _copy_entries(k, src: LdtStruct, dst: LdtStruct) -> None:
    for i in range(src.nr_entries):
        k.mem.write_qword(dst.pa + i * LDT_ENTRY_SIZE, k.mem.read_qword(src.pa + i * LDT_ENTRY_SIZE))


def map_ldt_struct(k, mm, ldt: LdtStruct, slot: int) -> None:
    """Map ``ldt`` read-only, non-global at its slot in ``mm``'s tables; the first time,
    copy the slot's PGD entry into the user PGD so both share what lies below it."""
    if not _pti(k):
        return
    first = mm.ldt is None
    va = ldt_slot_va(slot)
    for i in range(ldt.nr_pages):
        mm.tables.map(va + i * b.PAGE_SIZE, ldt.pa + i * b.PAGE_SIZE, b.PAGE_SIZE,
                      LDT_PTE_PROT)
    if first:  # map_ldt_struct_to_user()
        pgdp = mm.pgd | table_index(L.LDT_BASE_ADDR, 4) << 3
        k.mem.write_qword(mm.user_pgd | table_index(L.LDT_BASE_ADDR, 4) << 3,
                          k.mem.read_qword(pgdp))
    ldt.slot = slot


def unmap_ldt_struct(k, mm, ldt: LdtStruct | None) -> None:
    """Clear the old LDT's PTEs and flush them from this mm's TLB entries."""
    if ldt is None or not _pti(k):
        return
    va = ldt_slot_va(ldt.slot)
    for i in range(ldt.nr_pages):
        mm.tables.unmap(va + i * b.PAGE_SIZE)
    k.flush_tlb_mm_range(mm, va, va + ldt.nr_pages * b.PAGE_SIZE)


def write_ldt(k, mm, entry_number: int, desc: int) -> LdtStruct:
    """modify_ldt(0x11, ...): a new LDT with one more (or one changed) descriptor, mapped
    in the slot the current one does not use, installed, and the old one unmapped."""
    if not isinstance(entry_number, int) or not 0 <= entry_number < LDT_ENTRIES:
        raise KaiserEduError(
            f"modify_ldt: entry_number must be in 0..{LDT_ENTRIES - 1}, got {entry_number!r} "
            "(Linux returns -EINVAL)")
    if not isinstance(desc, int) or isinstance(desc, bool) or not 0 <= desc < 1 << 64:
        raise KaiserEduError(f"modify_ldt: a descriptor is a 64-bit integer, got {desc!r}")
    old = mm.ldt
    nr_entries = max(entry_number + 1, old.nr_entries if old else 0)
    new = alloc_ldt_struct(k, nr_entries)
    if old is not None:
        _copy_entries(k, old, new)
    k.mem.write_qword(new.pa + entry_number * LDT_ENTRY_SIZE, desc)
    map_ldt_struct(k, mm, new, 1 - old.slot if old is not None and old.slot >= 0 else 0)
    mm.ldt = new  # install_ldt()
    unmap_ldt_struct(k, mm, old)
    free_ldt_struct(k, old)
    return new


def ldt_dup_context(k, old_mm, mm) -> None:
    """fork: the child gets a copy of the parent's LDT, mapped in its own slot 0."""
    old = old_mm.ldt
    if old is None:
        return
    new = alloc_ldt_struct(k, old.nr_entries)
    _copy_entries(k, old, new)
    map_ldt_struct(k, mm, new, 0)
    mm.ldt = new


def free_ldt_pgtables(k, mm) -> None:
    """exec (and exit): forget the LDT and the slot's page tables. Linux frees the whole
    mm; the simulator reuses it across execve, so both PGD copies of the slot are cleared
    here and the slot's TLB entries flushed."""
    if mm.ldt is None:
        return
    index = table_index(L.LDT_BASE_ADDR, 4)
    if _pti(k):
        k.mem.write_qword(mm.pgd | index << 3, 0)
        k.mem.write_qword(mm.user_pgd | index << 3, 0)
        k.flush_tlb_mm_range(mm, ldt_slot_va(0), ldt_slot_va(2))
    free_ldt_struct(k, mm.ldt)
    mm.ldt = None


def ldt_base(k, mm) -> int | None:
    """The linear address LDTR points at while ``mm`` runs (load_mm_ldt()/set_ldt()): the
    remap slot under PTI, else the LDT's direct-map address; None without an LDT."""
    ldt = mm.ldt
    if ldt is None:
        return None
    if ldt.slot >= 0:
        return ldt_slot_va(ldt.slot)
    return k.layout.direct_map(ldt.pa)
