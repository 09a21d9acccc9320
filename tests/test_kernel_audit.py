"""kaiser_edu.kernel.audit: mapped ranges of a page-table tree and the PTI isolation invariants
(arch/x86/mm/pti.c; Documentation/arch/x86/pti.rst).

The page tables are built by hand with kaiser_edu.hw: an 8 KiB-aligned PGD pair (kernel PGD
first, user PGD at +4096, as PGD_ALLOCATION_ORDER = 1 gives), user PGD entries mirrored the
way __pti_set_user_pgtbl() does it, and the kernel-half clones pti_init() makes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import FrameAllocator, PageTables, PhysMem, Registers, walk
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.address import table_index
from kaiser_edu.kernel.audit import (
    INVARIANTS,
    MappedRange,
    audit_report,
    check_isolation,
    kernel_visible_ranges,
    mapped_ranges,
    normalize_allowed,
    split_by_allowed,
    translate,
)

K4, M2, G1 = b.PAGE_SIZE, b.PMD_SIZE, b.PUD_SIZE
NX, G, U, RW, P, A = b.PAGE_NX, b.PAGE_GLOBAL, b.PAGE_USER, b.PAGE_RW, b.PAGE_PRESENT, \
    b.PAGE_ACCESSED

# Linux x86-64 4-level layout (Documentation/arch/x86/x86_64/mm.rst)
DIRECT_MAP = 0xFFFF_8880_0000_0000
CEA = 0xFFFF_FE00_0000_0000  # cpu_entry_area, a whole PGD slot
KTEXT = 0xFFFF_FFFF_8100_0000
ENTRY_TEXT = 0xFFFF_FFFF_81A0_0000  # a 2 MiB PMD of the kernel image holding entry text
VSYSCALL = 0xFFFF_FFFF_FF60_0000
TSS_VA = DIRECT_MAP + 0x0010_0000  # a per-CPU cpu_tss_rw page
USER_TEXT, USER_DATA, USER_STACK = 0x40_0000, 0x60_0000, 0x7FFF_FFFD_E000
NOG = ~G  # under PTI kernel mappings are non-global (pti.rst, _PAGE_GLOBAL)

ALLOWED = [
    (CEA, CEA + (1 << 39), "cpu_entry_area"),
    (ENTRY_TEXT, ENTRY_TEXT + M2, "entry text"),
    (TSS_VA, TSS_VA + K4, "percpu TSS"),
    (VSYSCALL, VSYSCALL + K4, "vsyscall"),
]


# --- builders -----------------------------------------------------------------------------
def tree(levels: int = 4) -> tuple[PhysMem, FrameAllocator, PageTables]:
    mem = PhysMem()
    alloc = FrameAllocator(mem)
    return mem, alloc, PageTables(mem, alloc, levels=levels)


@dataclass
class Pair:
    """A process under PTI: kernel PGD at ``pair``, user PGD at ``pair + 4096``."""

    mem: PhysMem
    alloc: FrameAllocator
    kpt: PageTables
    upt: PageTables

    @property
    def kpgd(self) -> int:
        return self.kpt.pgd_pa

    @property
    def upgd(self) -> int:
        return self.upt.pgd_pa

    def k_entry_pa(self, index: int) -> int:
        return self.kpgd | index << 3

    def u_entry_pa(self, index: int) -> int:
        return self.upgd | index << 3

    def pti_set_user_pgtbl(self) -> None:
        """Mirror the user half as __pti_set_user_pgtbl() does: the unmodified value into
        the user copy, NX added to the kernel copy if the entry has _PAGE_USER."""
        for i in range(256):
            k = self.mem.read_qword(self.k_entry_pa(i))
            if not k & P:
                continue
            orig = k & ~NX if k & U else k
            self.mem.write_qword(self.u_entry_pa(i), orig)
            self.mem.write_qword(self.k_entry_pa(i), orig | NX if orig & U else orig)

    def clone_pgd_entry(self, va: int) -> None:
        """pti_clone_p4d(): share a whole top-level slot with the user PGD."""
        i = table_index(va, 4)
        self.mem.write_qword(self.u_entry_pa(i), self.mem.read_qword(self.k_entry_pa(i)))

    def check(self, allowed=ALLOWED, **kw):
        return check_isolation(self.mem, self.kpgd, self.upgd, allowed, **kw)


def pti_pair() -> Pair:
    """A small but complete PTI address space whose invariants all hold."""
    mem = PhysMem()
    alloc = FrameAllocator(mem)
    pair = alloc.alloc_contig(2, align=8192)
    kpt = PageTables(mem, alloc, pgd_pa=pair)
    upt = PageTables(mem, alloc, pgd_pa=pair + K4)
    p = Pair(mem, alloc, kpt, upt)
    # user space, mapped in the kernel PGD as usual
    kpt.map_range(USER_TEXT, 0x4000_0000, 3, flags=b.PAGE_USER_EXEC)
    kpt.map_range(USER_DATA, 0x4010_0000, 2, flags=b.PAGE_SHARED)
    kpt.map(USER_STACK, 0x4020_0000, flags=b.PAGE_SHARED)
    p.pti_set_user_pgtbl()
    # the kernel: direct map (2 MiB, non-global), kernel text, cpu_entry_area, vsyscall
    for i in range(8):
        kpt.map(DIRECT_MAP + i * M2, i * M2, size=M2, flags=b.PAGE_KERNEL & NOG)
    for i in range(6):
        kpt.map(KTEXT + i * M2, 0x0100_0000 + i * M2, size=M2,
                flags=b.PAGE_KERNEL_EXEC & NOG)
    kpt.map(CEA, 0x0200_0000, flags=b.PAGE_KERNEL_RO)  # RO IDT, global: in both copies
    kpt.map_range(CEA + K4, 0x0200_1000, 4, flags=b.PAGE_KERNEL)  # GDT, entry stack, ...
    kpt.map(VSYSCALL, 0x0300_0000, flags=b.PAGE_USER_EXEC | G)
    # the user PGD's kernel half: clones made by pti_init()
    p.clone_pgd_entry(CEA)  # pti_clone_user_shared(): the whole CEA slot
    upt.map(ENTRY_TEXT, 0x0100_0000 + (ENTRY_TEXT - KTEXT), size=M2,
            flags=b.PAGE_KERNEL_RX)  # pti_clone_entry_text(), PMD level, global in both
    upt.map(TSS_VA, 0x0010_0000, flags=b.PAGE_KERNEL & NOG)  # per-CPU cpu_tss_rw
    upt.map(VSYSCALL, 0x0300_0000, flags=b.PAGE_USER_EXEC | G)  # pti_setup_vsyscall()
    return p


def invariants(violations) -> list[str]:
    return [v.invariant for v in violations]


# --- mapped_ranges ------------------------------------------------------------------------
def test_4k_runs_merge_and_split_on_rights_and_holes():
    mem, _, pt = tree()
    base = 0x1000_0000
    pt.map_range(base, 0x20_0000, 8, flags=b.PAGE_SHARED)
    pt.protect(base + 3 * K4, clear_bits=RW)  # one read-only page in the middle
    pt.map_range(base + 10 * K4, 0x30_0000, 2, flags=b.PAGE_SHARED)  # after a 2-page hole
    rs = mapped_ranges(mem, pt.pgd_pa, half="user")
    assert [(r.start - base, r.end - base, r.writable) for r in rs] == [
        (0, 3 * K4, True), (3 * K4, 4 * K4, False), (4 * K4, 8 * K4, True),
        (10 * K4, 12 * K4, True),
    ]
    assert all(r.user and r.nx and not r.global_ and r.page_sizes == (K4,) for r in rs)
    assert [r.entries for r in rs] == [3, 1, 4, 2]
    assert rs[0].phys_start == 0x20_0000 and rs[2].phys_start == 0x20_4000
    assert rs.anomalies == []


def test_runs_merge_across_page_tables_and_record_scattered_frames():
    mem, _, pt = tree()
    base = 0x20_0000 - 2 * K4  # straddles two page tables
    pt.map_range(base, 0x100_0000, 4, flags=b.PAGE_SHARED)
    pt.map(base + 4 * K4, 0x900_0000, flags=b.PAGE_SHARED)  # same rights, frame elsewhere
    (r,) = mapped_ranges(mem, pt.pgd_pa, half="user")
    assert (r.start, r.end, r.entries) == (base, base + 5 * K4, 5)
    assert r.phys_start == 0x100_0000 and not r.phys_contiguous
    assert "(scattered)" in r.describe()
    pt.unmap(base + 4 * K4)
    (r,) = mapped_ranges(mem, pt.pgd_pa, half="user")
    assert r.phys_contiguous and r.size == 4 * K4


def test_2m_and_1g_leaves_are_single_ranges_and_merge_when_adjacent():
    mem, _, pt = tree()
    pt.map(DIRECT_MAP, 0, size=G1, flags=b.PAGE_KERNEL)
    pt.map(DIRECT_MAP + G1, G1, size=M2, flags=b.PAGE_KERNEL)
    pt.map(DIRECT_MAP + G1 + M2, G1 + M2, size=M2, flags=b.PAGE_KERNEL_RO)
    pt.map_range(DIRECT_MAP + G1 + 2 * M2, G1 + 2 * M2, 3, flags=b.PAGE_KERNEL_RO)
    rs = mapped_ranges(mem, pt.pgd_pa)
    assert [(r.start, r.end, r.page_sizes, r.writable) for r in rs] == [
        (DIRECT_MAP, DIRECT_MAP + G1 + M2, (M2, G1), True),
        (DIRECT_MAP + G1 + M2, DIRECT_MAP + G1 + 2 * M2 + 3 * K4, (K4, M2), False),
    ]
    assert rs[0].phys_start == 0 and rs[0].phys_contiguous and rs[0].entries == 2
    assert rs[0].page_size is None and rs[0].global_ and rs[0].nx


def test_single_huge_page_describe_line():
    mem, _, pt = tree()
    pt.map(CEA, 0x4000_0000, size=M2, flags=b.PAGE_KERNEL_RO)
    (r,) = mapped_ranges(mem, pt.pgd_pa)
    assert r.page_size == M2 and r.size == M2
    assert r.describe() == (
        "0xfffffe0000000000-0xfffffe0000200000  2 MiB         kernel RO NX G  "
        "-> phys 0x40000000"
    )
    assert str(r) == r.describe() and r.contains(CEA + 5) and not r.contains(CEA + M2)


def test_rights_combine_across_levels():
    """SDM 4.6.1: U/S and R/W are ANDed over the walk, XD is ORed; G comes from the leaf."""
    mem, _, pt = tree()
    va = 0x7F00_0000_0000
    pt.map(va, 0x5000, flags=P | RW | U | A)  # user RWX leaf
    (r,) = mapped_ranges(mem, pt.pgd_pa, half="user")
    assert (r.user, r.writable, r.nx, r.global_) == (True, True, False, False)
    entries = {e.level: e for e in pt.entries(va)}
    mem.write_qword(entries[2].pa, entries[2].value & ~RW)  # PDE read-only
    mem.write_qword(entries[4].pa, entries[4].value | NX)  # PML4E no-execute
    (r,) = mapped_ranges(mem, pt.pgd_pa, half="user")
    assert (r.user, r.writable, r.nx) == (True, False, True)
    mem.write_qword(entries[3].pa, entries[3].value & ~U | G)  # PDPTE supervisor; G ignored
    (r,) = mapped_ranges(mem, pt.pgd_pa, half="user")
    assert (r.user, r.global_) == (False, False)
    pt.protect(va, set_bits=G)
    (r,) = mapped_ranges(mem, pt.pgd_pa, half="user")
    assert r.global_ and r.rights() == "kernel RO NX G"


def test_halves_are_canonical_and_never_merge_across_the_hole():
    mem, _, pt = tree()
    last_user = (1 << 47) - K4
    first_kernel = 0xFFFF_8000_0000_0000
    flags = P | RW | A  # same rights on both sides
    pt.map(last_user, 0x1000_0000, flags=flags)
    pt.map(first_kernel, 0x1000_1000, flags=flags)
    both = mapped_ranges(mem, pt.pgd_pa, half="all")
    assert [(r.start, r.end) for r in both] == [
        (last_user, 1 << 47), (first_kernel, first_kernel + K4)]
    assert [r.start for r in mapped_ranges(mem, pt.pgd_pa, half="user")] == [last_user]
    assert [r.start for r in mapped_ranges(mem, pt.pgd_pa, half="kernel")] == [first_kernel]
    pt.map(0xFFFF_FFFF_FFFF_F000, 0x2000_0000, flags=flags)  # the very top page
    assert mapped_ranges(mem, pt.pgd_pa)[-1].end == 1 << 64


def test_five_level_tree():
    mem, _, pt = tree(levels=5)
    va = 0xFF11_0000_0000_0000
    pt.map(va, 0x4000_0000, size=G1, flags=b.PAGE_KERNEL)
    pt.map(0x00FF_0000_0000_0000, 0x8000_0000, flags=b.PAGE_SHARED)
    (k,) = mapped_ranges(mem, pt.pgd_pa, levels=5)
    assert (k.start, k.end, k.page_size) == (va, va + G1, G1)
    (u,) = mapped_ranges(mem, pt.pgd_pa, levels=5, half="user")
    assert u.start == 0x00FF_0000_0000_0000 and u.user


def test_ps_in_pml4e_and_reserved_bits_are_anomalies_not_mappings():
    mem, alloc, pt = tree()
    mem.write_qword(pt.pgd_pa | 300 << 3, 0x4000_0000 | P | RW | b.PAGE_PSE)
    mem2 = PhysMem(maxphyaddr=40)
    alloc2 = FrameAllocator(mem2, ram_bytes=1 << 32)
    pt2 = PageTables(mem2, alloc2)
    pt2.map_range(DIRECT_MAP, 0, 3, flags=b.PAGE_KERNEL)
    pte_pa = pt2.leaf(DIRECT_MAP + K4).pa
    mem2.write_qword(pte_pa, mem2.read_qword(pte_pa) | 1 << 45)  # above MAXPHYADDR=40
    rs = mapped_ranges(mem, pt.pgd_pa)
    assert list(rs) == [] and len(rs.anomalies) == 1
    a = rs.anomalies[0]
    assert a.level == 4 and a.va == 0xFFFF_9600_0000_0000 and "PS" in a.reason
    assert "PML4E" in str(a)
    rs2 = mapped_ranges(mem2, pt2.pgd_pa)
    assert [(r.start, r.end) for r in rs2] == [
        (DIRECT_MAP, DIRECT_MAP + K4), (DIRECT_MAP + 2 * K4, DIRECT_MAP + 3 * K4)]
    assert [(x.level, x.va) for x in rs2.anomalies] == [(1, DIRECT_MAP + K4)]
    assert "anomaly" in rs2.describe()


def test_huge_leaf_with_reserved_low_bits_is_an_anomaly():
    mem, _, pt = tree()
    pt.map(DIRECT_MAP, 0, size=M2, flags=b.PAGE_KERNEL)
    leaf = pt.leaf(DIRECT_MAP)
    mem.write_qword(leaf.pa, leaf.value | 1 << 14)  # bits 20:13 of a 2 MiB leaf
    rs = mapped_ranges(mem, pt.pgd_pa)
    assert list(rs) == [] and rs.anomalies[0].level == 2


def test_walking_does_not_change_memory():
    mem, _, pt = tree()
    pt.map_range(DIRECT_MAP, 0, 5, flags=b.PAGE_KERNEL)
    before = (mem.nonzero_qwords(), mem.frames_in_use)
    mapped_ranges(mem, pt.pgd_pa, half="all")
    mapped_ranges(mem, 0x7770_0000)  # a PGD frame never written: nothing mapped
    assert (mem.nonzero_qwords(), mem.frames_in_use) == before


def test_a_direct_map_of_1_gib_in_4k_pages_is_fast():
    mem, _, pt = tree()
    pt.map_range(DIRECT_MAP, 0, G1 // K4, flags=b.PAGE_KERNEL & NOG)
    for i in range(32):
        pt.map(DIRECT_MAP + G1 + i * M2, G1 + i * M2, size=M2, flags=b.PAGE_KERNEL & NOG)
    t0 = time.perf_counter()
    (r,) = mapped_ranges(mem, pt.pgd_pa)
    elapsed = time.perf_counter() - t0
    assert (r.start, r.end, r.entries) == (DIRECT_MAP, DIRECT_MAP + G1 + 32 * M2, 262144 + 32)
    assert r.phys_contiguous and r.page_sizes == (K4, M2)
    assert elapsed < 2.0, f"mapped_ranges took {elapsed:.2f} s"


def test_a_table_loop_is_refused():
    mem, _, pt = tree()
    mem.write_qword(pt.pgd_pa | 256 << 3, pt.pgd_pa | P | RW)  # points back at itself
    mem.write_qword(pt.pgd_pa | 257 << 3, pt.pgd_pa | P | RW)
    with pytest.raises(KaiserEduError, match="loop"):
        mapped_ranges(mem, pt.pgd_pa)
    mem2, _, pt2 = tree()
    pt2.map_range(DIRECT_MAP, 0, 4, flags=b.PAGE_KERNEL)
    pt2.map_range(DIRECT_MAP + G1, 0, 4, flags=b.PAGE_KERNEL)
    with pytest.raises(KaiserEduError, match="max_tables"):
        mapped_ranges(mem2, pt2.pgd_pa, max_tables=5)
    assert len(mapped_ranges(mem2, pt2.pgd_pa, max_tables=6)) == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"half": "upper"}, "half must be one of"), ({"levels": 3}, "levels must be 4 or 5"),
     ({"pgd_pa": 0x1234}, "4 KiB-aligned")],
)
def test_bad_arguments_are_explained(kwargs, match):
    mem, _, pt = tree()
    args = {"mem": mem, "pgd_pa": pt.pgd_pa, **kwargs}
    with pytest.raises(KaiserEduError, match=match):
        mapped_ranges(**args)


def test_translate_helper():
    mem, _, pt = tree()
    pt.map(DIRECT_MAP, 0x4000_0000, size=M2, flags=b.PAGE_KERNEL)
    assert translate(mem, pt.pgd_pa, DIRECT_MAP + 0x1234) == 0x4000_1234
    assert translate(mem, pt.pgd_pa, DIRECT_MAP + M2) is None


# --- allowed ranges -----------------------------------------------------------------------
def test_allowed_ranges_are_checked_and_accept_layout_order():
    assert normalize_allowed([("espfix", 0x20, 0x30), (0x10, 0x20, "LDT")]) == [
        (0x10, 0x20, "LDT"), (0x20, 0x30, "espfix")]
    assert normalize_allowed(None) == []
    with pytest.raises(KaiserEduError, match="start < end"):
        normalize_allowed([(0x30, 0x20, "backwards")])
    with pytest.raises(KaiserEduError, match=r"\(start, end, name\)"):
        normalize_allowed([(1, 2)])


def test_split_by_allowed():
    allowed = normalize_allowed([(10, 20, "a"), (20, 30, "b"), (40, 50, "c")])
    assert split_by_allowed(5, 45, allowed) == [
        (5, 10, None), (10, 20, "a"), (20, 30, "b"), (30, 40, None), (40, 45, "c")]
    assert split_by_allowed(12, 15, allowed) == [(12, 15, "a")]
    assert split_by_allowed(60, 70, allowed) == [(60, 70, None)]


# --- check_isolation ----------------------------------------------------------------------
def test_intact_pair_has_no_violations():
    p = pti_pair()
    assert p.check() == []
    assert p.check(check_global=True) == []


def test_intact_pair_still_passes_after_the_cpu_sets_accessed_bits():
    """Each copy is a separate PGD entry the CPU marks on its own walks: A may differ."""
    p = pti_pair()
    for pa in (p.u_entry_pa(0), p.k_entry_pa(0)):
        p.mem.write_qword(pa, p.mem.read_qword(pa) & ~A)
    assert walk(p.mem, Registers.long_mode(cr3=p.kpgd), USER_DATA, "write", cpl=0).ok
    k, u = p.mem.read_qword(p.k_entry_pa(0)), p.mem.read_qword(p.u_entry_pa(0))
    assert k & A and not u & A  # only the copy the walk used is marked
    assert p.check() == []
    assert walk(p.mem, Registers.long_mode(cr3=p.upgd), USER_TEXT, "fetch", cpl=3).ok


def test_the_shadow_maps_what_was_cloned_and_nothing_else():
    p = pti_pair()
    visible = kernel_visible_ranges(p.mem, p.upgd, ALLOWED)
    assert [(r.start, name) for r, name in visible] == [
        (TSS_VA, "percpu TSS"), (CEA, "cpu_entry_area"), (CEA + K4, "cpu_entry_area"),
        (ENTRY_TEXT, "entry text"), (VSYSCALL, "vsyscall")]


def test_user_half_rights_differ_only_in_nx_between_copies():
    p = pti_pair()
    ku = mapped_ranges(p.mem, p.kpgd, half="user")
    uu = mapped_ranges(p.mem, p.upgd, half="user")
    assert [(r.start, r.end, r.writable) for r in ku] != []
    assert [(r.start, r.end, r.writable, r.user) for r in ku] == [
        (r.start, r.end, r.writable, r.user) for r in uu]
    assert all(r.nx for r in ku)  # the kernel copy: nothing of user space is executable
    assert not uu[0].nx  # the user copy: user text runs
    # a missed switch back to the user CR3: the first user instruction fetch faults (NX)
    on_kernel_cr3 = walk(p.mem, Registers.long_mode(cr3=p.kpgd), USER_TEXT, "fetch", cpl=3)
    assert not on_kernel_cr3.ok and on_kernel_cr3.error_code == 0x15


def test_a_extra_kernel_mapping_in_the_shadow():
    p = pti_pair()
    p.upt.map(DIRECT_MAP + 5 * M2, 5 * M2, size=M2, flags=b.PAGE_KERNEL & NOG)
    (v,) = p.check()
    assert v.invariant == "kernel_mapped_in_user_pgd" and v.letter == "a"
    assert (v.start, v.end) == (DIRECT_MAP + 5 * M2, DIRECT_MAP + 6 * M2)
    assert v.pgd_index == 273
    assert v.user_entry == p.mem.read_qword(p.u_entry_pa(273))
    assert v.kernel_entry == p.mem.read_qword(p.k_entry_pa(273))
    assert "Meltdown" in v.explanation
    assert "PGD[273] 0xffff888000a00000-0xffff888000c00000" in v.describe()


def test_a_cloning_the_whole_direct_map_slot_is_reported_as_one_range():
    p = pti_pair()
    p.clone_pgd_entry(DIRECT_MAP)  # now the TSS page is shadowed by the whole direct map
    vs = p.check()
    assert invariants(vs) == ["kernel_mapped_in_user_pgd"] * 2
    assert [(v.start, v.end) for v in vs] == [
        (DIRECT_MAP, TSS_VA), (TSS_VA + K4, DIRECT_MAP + 8 * M2)]


def test_a_allowed_range_only_covering_part_of_a_mapping():
    p = pti_pair()
    allowed = [r for r in ALLOWED if r[2] != "entry text"]
    allowed.append((ENTRY_TEXT, ENTRY_TEXT + M2 // 2, "entry text"))
    (v,) = p.check(allowed)
    assert (v.start, v.end) == (ENTRY_TEXT + M2 // 2, ENTRY_TEXT + M2)


def test_b_kernel_copy_of_a_user_entry_without_nx():
    p = pti_pair()
    k = p.mem.read_qword(p.k_entry_pa(0))
    p.mem.write_qword(p.k_entry_pa(0), k & ~NX)
    (v,) = p.check()
    assert v.invariant == "kernel_copy_lacks_nx" and v.letter == "b"
    assert (v.pgd_index, v.start, v.end) == (0, 0, 1 << 39)
    assert v.kernel_entry == k & ~NX and v.user_entry == p.mem.read_qword(p.u_entry_pa(0))
    assert "missed switch back to the user CR3" in v.explanation


def test_b_nx_wrongly_added_to_the_user_copy():
    p = pti_pair()
    i = table_index(USER_STACK, 4)
    u = p.mem.read_qword(p.u_entry_pa(i))
    p.mem.write_qword(p.u_entry_pa(i), u | NX)
    (v,) = p.check()
    assert v.invariant == "user_copy_has_nx" and v.pgd_index == i
    assert v.user_entry == u | NX


def test_b_entries_without_user_bit_need_no_nx():
    """pti_set_user_pgtbl() leaves e.g. executable EFI mappings (no _PAGE_USER) alone."""
    p = pti_pair()
    efi = 0x0000_7F00_0000_0000 - (1 << 39)
    p.kpt.map(efi, 0x0500_0000, flags=b.PAGE_KERNEL_EXEC & NOG)
    p.pti_set_user_pgtbl()
    assert not p.mem.read_qword(p.k_entry_pa(table_index(efi, 4))) & NX
    assert invariants(p.check()) == []


def test_c_divergent_lower_table():
    p = pti_pair()
    u = p.mem.read_qword(p.u_entry_pa(0))
    table = u & b.phys_addr_mask(p.mem.maxphyaddr)
    copy_pa = p.alloc.alloc()  # a private copy of the PDPT: same contents, different table
    for j in range(512):
        p.mem.write_qword(copy_pa | j << 3, p.mem.read_qword(table | j << 3))
    p.mem.write_qword(p.u_entry_pa(0), copy_pa | (u & 0xFFF))
    (v,) = p.check()
    assert v.invariant == "user_half_diverges" and v.letter == "c" and v.pgd_index == 0
    assert "different next-level tables" in v.explanation
    assert "accessed/dirty" in v.explanation


def test_c_entry_missing_from_one_copy_or_with_other_flags():
    p = pti_pair()
    i = table_index(USER_STACK, 4)
    u = p.mem.read_qword(p.u_entry_pa(i))
    p.mem.write_qword(p.u_entry_pa(i), 0)
    (v,) = p.check()
    assert v.invariant == "user_half_diverges" and "only in the kernel copy" in v.explanation
    p.mem.write_qword(p.u_entry_pa(i), u & ~RW)
    (v,) = p.check()
    assert "RW" in v.explanation
    p.mem.write_qword(p.u_entry_pa(i), u)
    p.mem.write_qword(p.u_entry_pa(5), u)  # a slot the kernel copy does not have
    (v,) = p.check()
    assert v.pgd_index == 5 and "only in the user copy" in v.explanation


def test_d_user_accessible_kernel_page():
    p = pti_pair()
    p.kpt.protect(CEA + K4, set_bits=U)  # the leaf, in the shared CEA tables
    cea_pml4e = p.mem.read_qword(p.u_entry_pa(table_index(CEA, 4)))
    assert cea_pml4e == p.mem.read_qword(p.k_entry_pa(table_index(CEA, 4)))
    for e in list(p.kpt.entries(CEA + K4))[:-1]:  # open the path: U=1 at every level
        p.mem.write_qword(e.pa, e.value | U)
    p.clone_pgd_entry(CEA)  # the top-level entry is per copy: clone it again
    (v,) = p.check()
    assert v.invariant == "user_accessible_kernel" and v.letter == "d"
    assert (v.start, v.end) == (CEA + K4, CEA + 2 * K4)
    assert "plain load" in v.explanation


def test_d_vsyscall_may_be_user_accessible_only_when_allowed():
    p = pti_pair()
    assert p.check() == []  # the vsyscall page is U=1, but allowed
    no_vsyscall = [r for r in ALLOWED if r[2] != "vsyscall"]
    assert invariants(p.check(no_vsyscall)) == [
        "kernel_mapped_in_user_pgd", "user_accessible_kernel"]


def test_reserved_entry_in_the_shadow_is_reported():
    p = pti_pair()
    p.mem.write_qword(p.u_entry_pa(400), 0x0600_0000 | P | RW | b.PAGE_PSE)
    (v,) = p.check()
    assert v.invariant == "reserved_entry" and v.pgd_index == 400


def test_e_global_kernel_mapping_only_with_check_global():
    p = pti_pair()
    p.kpt.protect(DIRECT_MAP + 3 * M2, set_bits=G)
    assert p.check() == []
    (v,) = p.check(check_global=True)
    assert v.invariant == "global_kernel_mapping" and v.start == DIRECT_MAP + 3 * M2


def test_several_violations_come_in_invariant_order():
    p = pti_pair()
    p.mem.write_qword(p.k_entry_pa(0), p.mem.read_qword(p.k_entry_pa(0)) & ~NX)
    p.upt.map(KTEXT, 0x0100_0000, size=M2, flags=b.PAGE_KERNEL_EXEC & NOG)
    vs = p.check()
    assert invariants(vs) == ["kernel_mapped_in_user_pgd", "kernel_copy_lacks_nx"]
    assert set(INVARIANTS) >= set(invariants(vs))


def test_check_isolation_validates_input():
    p = pti_pair()
    with pytest.raises(KaiserEduError, match="user_pgd_pa"):
        check_isolation(p.mem, p.kpgd, p.upgd + 8, ALLOWED)
    with pytest.raises(KaiserEduError, match="levels"):
        check_isolation(p.mem, p.kpgd, p.upgd, ALLOWED, levels=6)


def test_five_level_pair():
    mem = PhysMem()
    alloc = FrameAllocator(mem)
    pair = alloc.alloc_contig(2, align=8192)
    kpt = PageTables(mem, alloc, levels=5, pgd_pa=pair)
    upt = PageTables(mem, alloc, levels=5, pgd_pa=pair + K4)
    p = Pair(mem, alloc, kpt, upt)
    kpt.map(USER_TEXT, 0x4000_0000, flags=b.PAGE_USER_EXEC)
    p.pti_set_user_pgtbl()
    kpt.map(0xFF11_0000_0000_0000, 0, size=G1, flags=b.PAGE_KERNEL & NOG)
    assert check_isolation(mem, p.kpgd, p.upgd, [], levels=5) == []
    mem.write_qword(p.u_entry_pa(0), mem.read_qword(p.u_entry_pa(0)) | NX)
    assert invariants(check_isolation(mem, p.kpgd, p.upgd, [], levels=5)) == [
        "user_copy_has_nx"]


# --- the report ---------------------------------------------------------------------------
def test_report_of_an_intact_pair():
    p = pti_pair()
    text = audit_report(p.mem, p.kpgd, p.upgd, ALLOWED)
    assert "[cpu_entry_area]" in text and "[entry text]" in text and "[vsyscall]" in text
    assert "NOT ALLOWED" not in text
    assert "Isolation holds" in text
    assert text.count(" ok") == len(INVARIANTS) - 1  # (e) only with check_global
    assert "user RO X" in text  # user text in the user half


def test_report_names_violations():
    p = pti_pair()
    p.upt.map(DIRECT_MAP + 6 * M2, 6 * M2, size=M2, flags=b.PAGE_KERNEL & NOG)
    text = audit_report(p.mem, p.kpgd, p.upgd, ALLOWED, check_global=True)
    assert "[NOT ALLOWED]" in text
    assert "1 violation(s)" in text and "Violations:" in text
    assert "kernel_mapped_in_user_pgd" in text and "global kernel" in text


def test_mapped_range_is_a_value():
    r = MappedRange(0, K4, True, True, False, False, (K4,), 0x1000)
    assert r.size == K4 and r.page_size == K4 and r.rights() == "user RW X"
    with pytest.raises(AttributeError):
        r.start = 5  # frozen
