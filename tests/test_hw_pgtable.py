"""kaiser_edu.hw.pgtable: building paging structures (SDM 4.5 Tables 4-14..4-19) the way
Linux does (arch/x86/include/asm/pgtable_types.h: _PAGE_TABLE / _KERNPG_TABLE for tables;
mm/memory.c, arch/x86/mm/pgtable.c for map/unmap/protect)."""

import pytest
from hw_helpers import KERNEL_VA, USER_VA, machine

from kaiser_edu.errors import KaiserEduError, MappingError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.pgtable import PageTables

K4, M2, G1 = 4096, 2 << 20, 1 << 30
LEAF_LEVEL = {K4: 1, M2: 2, G1: 3}
# canonical, size-aligned user and kernel addresses for 4- and 5-level paging
VAS = {
    4: [0x0000_7F00_0000_0000, 0xFFFF_C000_0000_0000],
    5: [0x00FF_0000_0000_0000, 0xFF80_0000_0000_0000],
}


def snapshot(m):
    return m.mem.nonzero_qwords(), m.alloc.frames_allocated, m.mem.frames_in_use


def test_mapping_error_is_a_kaiser_edu_error():
    assert issubclass(MappingError, KaiserEduError)


@pytest.mark.parametrize("levels", [4, 5])
@pytest.mark.parametrize("size", [K4, M2, G1])
@pytest.mark.parametrize("half", [0, 1])
def test_map_translate_unmap(levels, size, half):
    m = machine(levels)
    va = VAS[levels][half]
    pa = 3 * G1  # aligned for every size
    flags = b.PAGE_SHARED if half == 0 else b.PAGE_KERNEL
    m.pt.map(va, pa, size=size, flags=flags)
    entries = list(m.pt.entries(va))
    assert [e.level for e in entries] == list(range(levels, LEAF_LEVEL[size] - 1, -1))
    leaf = m.pt.leaf(va)
    assert leaf == entries[-1] and leaf.is_leaf and leaf.level == LEAF_LEVEL[size]
    ps = b.PAGE_PSE if size > K4 else 0
    assert leaf.value == pa | flags | b.PAGE_PRESENT | ps
    # every byte of the page translates, the next page does not
    assert m.pt.translate(va) == pa
    assert m.pt.translate(va + size - 8) == pa + size - 8
    assert m.pt.translate(va + size) is None
    assert m.pt.leaf(va + size) is None
    old = m.pt.unmap(va)
    assert old == leaf.value
    assert m.pt.leaf(va) is None and m.pt.translate(va) is None
    # tables are kept after unmap (Linux frees them only in free_pgtables())
    assert len(list(m.pt.entries(va))) == len(entries)


@pytest.mark.parametrize("levels", [4, 5])
def test_table_entries_get_linux_table_flags(levels):
    m = machine(levels)
    m.pt.map(USER_VA, 0x5000, flags=b.PAGE_SHARED)
    kva = VAS[levels][1]
    m.pt.map(kva, 0x6000, flags=b.PAGE_KERNEL)
    for e in list(m.pt.entries(USER_VA))[:-1]:
        assert e.value & 0xFFF == b.PAGE_TABLE  # _PAGE_TABLE: P|RW|USER|A|D
        assert e.value & b.PAGE_NX == 0
    for e in list(m.pt.entries(kva))[:-1]:
        assert e.value & 0xFFF == b.KERNPG_TABLE  # _KERNPG_TABLE: P|RW|A|D
    # each table entry points at a distinct, page-aligned, allocated table
    tables = [e.value & b.phys_addr_mask(52) for e in m.pt.entries(USER_VA)][:-1]
    assert len(set(tables)) == len(tables) and all(t % K4 == 0 for t in tables)


def test_user_leaf_under_kernel_tables_gets_user_access_upstream():
    # U is ANDed across levels (SDM 4.6.1): a user leaf needs U=1 in every table entry
    m = machine()
    m.pt.map(0x1000_0000, 0x5000, flags=b.KERNPG_TABLE)  # kernel 4K page, kernel tables
    m.pt.map(0x1000_1000, 0x6000, flags=b.PAGE_SHARED)  # user page, same tables
    for e in list(m.pt.entries(0x1000_1000))[:-1]:
        assert e.value & b.PAGE_USER
    assert not m.pt.leaf(0x1000_0000).value & b.PAGE_USER


def test_custom_table_flags():
    m = machine()
    m.pt.map(USER_VA, 0x5000, flags=b.PAGE_SHARED, table_flags=b.PAGE_PRESENT | b.PAGE_USER)
    for e in list(m.pt.entries(USER_VA))[:-1]:
        assert e.value & 0xFFF == b.PAGE_PRESENT | b.PAGE_USER


def test_cr3_with_pcid():
    m = machine()
    assert m.pt.cr3() == m.pt.pgd_pa and m.pt.pgd_pa % K4 == 0
    assert m.pt.cr3(5) == m.pt.pgd_pa | 5
    for bad in (-1, 4096):
        with pytest.raises(MappingError, match=rf"pcid must be in 0..4095, got {bad}"):
            m.pt.cr3(bad)


def test_levels_must_be_4_or_5():
    m = machine()
    with pytest.raises(MappingError, match="levels must be 4 or 5, got 3"):
        PageTables(m.mem, m.alloc, levels=3)


def test_existing_pgd_can_be_adopted():
    m = machine()
    m.pt.map(USER_VA, 0x5000)
    other = PageTables(m.mem, m.alloc, pgd_pa=m.pt.pgd_pa)
    assert other.translate(USER_VA + 0x10) == 0x5010


def test_entry_str_names_level_and_bits():
    m = machine()
    m.pt.map(USER_VA, 0x1234000, flags=b.PAGE_USER_EXEC)
    text = str(m.pt.leaf(USER_VA))
    assert text.startswith("PTE @ 0x") and text.endswith("P US A pfn=0x1234")
    assert str(next(m.pt.entries(USER_VA))).startswith("PML4E @ ")


@pytest.mark.parametrize("levels, level", [(4, 4), (5, 5), (5, 4)])
def test_ps_in_pml4e_or_pml5e_is_not_a_leaf(levels, level):
    # PS is reserved above the PDPT: no 512 GiB pages (SDM Table 4-15; Linux p4d_leaf()
    # "No 512 GiB pages yet"), so a software lookup must not report a 512 GiB leaf
    m = machine(levels)
    m.pt.map(USER_VA, 0x5000)
    m.set_bits(USER_VA, level, set_bits=b.PAGE_PSE)
    leaf = m.pt.leaf(USER_VA)
    assert leaf is None or leaf.level <= 3
    assert m.pt.translate(USER_VA) in (None, 0x5000)


# --- refusals (and nothing changes) -------------------------------------------------------
@pytest.mark.parametrize("size, va, pa, msg", [
    (M2, 0x1000, 0, r"virtual address 0x1000 is not aligned to 2 MiB"),
    (G1, M2, 0, r"virtual address 0x200000 is not aligned to 1 GiB"),
    (K4, 0x1008, 0, r"virtual address 0x1008 is not aligned to 4 KiB"),
    (M2, 0, 0x1000, r"physical address 4096 must be 2 MiB-aligned"),
    (G1, 0, M2, r"physical address 2097152 must be 1 GiB-aligned"),
    (K4, 0, 0x10, r"must be 4 KiB-aligned"),
    (K4, 0, -4096, r"physical address -4096 must be"),
    (K4, 0, 1 << 52, r"below 2\*\*52 \(MAXPHYADDR\)"),
    (8192, 0, 0, r"page size must be 4096, 2097152 or 1073741824, got 8192"),
    (K4, 0x0000_8000_0000_0000, 0, r"0x800000000000 is not canonical for 4-level"),
])
def test_map_refuses_bad_geometry(size, va, pa, msg):
    m = machine()
    before = snapshot(m)
    # a non-canonical va is refused by address.check_va (KaiserEduError), the rest by
    # pgtable itself (MappingError, a KaiserEduError)
    with pytest.raises(KaiserEduError, match=msg):
        m.pt.map(va, pa, size=size)
    assert snapshot(m) == before


def test_map_refuses_pa_above_maxphyaddr():
    m = machine(maxphyaddr=40)
    with pytest.raises(MappingError, match=r"below 2\*\*40"):
        m.pt.map(0, 1 << 40)
    m.pt.map(0, (1 << 40) - K4)  # the last frame is fine


def test_map_5_level_address_refused_with_4_levels():
    m = machine(4)
    with pytest.raises(KaiserEduError, match="not canonical for 4-level paging"):
        m.pt.map(0x00FF_0000_0000_0000, 0)
    m5 = machine(5)
    m5.pt.map(0x00FF_0000_0000_0000, 0)
    with pytest.raises(KaiserEduError, match="not canonical for 5-level paging"):
        m5.pt.map(0x0100_0000_0000_0000, 0)


@pytest.mark.parametrize("size", [K4, M2, G1])
def test_map_over_existing_mapping_refused(size):
    m = machine()
    m.pt.map(0, 0, size=size)
    before = snapshot(m)
    with pytest.raises(MappingError, match=r"cannot map at 0x0: already mapped \(P RW US A.*unmap it first"):
        m.pt.map(0, G1, size=size)
    assert snapshot(m) == before


@pytest.mark.parametrize("big, small", [(M2, K4), (G1, K4), (G1, M2)])
def test_smaller_page_under_existing_huge_page_refused(big, small):
    m = machine()
    m.pt.map(KERNEL_VA, 0, size=big, flags=b.PAGE_KERNEL)
    before = snapshot(m)
    inside = KERNEL_VA + big - small
    name = b.size_name(big)
    with pytest.raises(MappingError, match=rf"cannot map at {inside:#x}: the {name} page at {KERNEL_VA:#x} already covers it"):
        m.pt.map(inside, 0, size=small, flags=b.PAGE_KERNEL)
    assert snapshot(m) == before


@pytest.mark.parametrize("small, big", [(K4, M2), (K4, G1), (M2, G1)])
def test_huge_page_over_existing_smaller_pages_refused(small, big):
    m = machine()
    m.pt.map(KERNEL_VA + big - small, 0, size=small, flags=b.PAGE_KERNEL)
    before = snapshot(m)
    with pytest.raises(MappingError, match=rf"cannot map a {b.size_name(big)} page at {KERNEL_VA:#x}: smaller pages are already mapped"):
        m.pt.map(KERNEL_VA, 0, size=big, flags=b.PAGE_KERNEL)
    assert snapshot(m) == before


@pytest.mark.parametrize("size, flags", [
    (K4, b.PAGE_SHARED | 0x1000),  # bit 12 is address in a PTE
    (K4, b.PAGE_SHARED | (1 << 51)),
    (M2, b.PAGE_SHARED | (1 << 13)),  # 20:13 of a 2 MiB leaf are reserved
    (M2, b.PAGE_SHARED | (1 << 21)),
    (G1, b.PAGE_SHARED | (1 << 29)),
    (M2, b.PAGE_SHARED | b.PAGE_PSE),  # set by map() itself for huge pages
    (K4, -1),
    (K4, 1 << 64),
])
def test_flags_overlapping_address_field_refused(size, flags):
    m = machine()
    before = snapshot(m)
    with pytest.raises(MappingError, match=r"overlap the frame address or reserved bits"):
        m.pt.map(0, 0, size=size, flags=flags)
    assert snapshot(m) == before


def test_flags_with_reserved_bits_above_maxphyaddr_refused():
    m = machine(maxphyaddr=40)
    with pytest.raises(MappingError, match="overlap the frame address or reserved bits"):
        m.pt.map(0, 0, flags=b.PAGE_SHARED | (1 << 45))


@pytest.mark.parametrize("size, extra", [
    (K4, b.PAGE_PAT),  # bit 7 is PAT in a PTE
    (M2, b.PAGE_PAT_LARGE),  # bit 12 is PAT in a 2 MiB / 1 GiB leaf
    (G1, b.PAGE_PAT_LARGE),
    (K4, b.PAGE_GLOBAL | b.PAGE_PCD | b.PAGE_PWT | b.PAGE_SOFTW1 | b.PKEY_MASK | b.PAGE_NX),
])
def test_flags_allowed_in_leaf(size, extra):
    m = machine()
    m.pt.map(0, G1, size=size, flags=b.PAGE_SHARED | extra)
    assert m.pt.leaf(0).value & extra == extra
    assert m.pt.translate(0x18) == G1 + 0x18  # PAT bit 12 is not part of the address


# --- map_range ----------------------------------------------------------------------------
def test_map_range_crosses_page_table_boundaries():
    m = machine()
    va = 0x7F00_001F_E000  # two pages before a 2 MiB boundary
    m.pt.map_range(va, 0x4000_0000, 1030, flags=b.PAGE_SHARED)
    for i in (0, 1, 2, 511, 512, 1029):
        assert m.pt.translate(va + i * K4 + 8) == 0x4000_0000 + i * K4 + 8
        assert m.pt.leaf(va + i * K4).value == (0x4000_0000 + i * K4) | b.PAGE_SHARED
    assert m.pt.leaf(va + 1030 * K4) is None
    assert m.pt.leaf(va - K4) is None
    for e in list(m.pt.entries(va + 600 * K4))[:-1]:
        assert e.value & 0xFFF == b.PAGE_TABLE


def test_map_range_kernel_tables_get_kernpg_table():
    m = machine()
    m.pt.map_range(KERNEL_VA, 0, 3, flags=b.PAGE_KERNEL)
    for e in list(m.pt.entries(KERNEL_VA))[:-1]:
        assert e.value & 0xFFF == b.KERNPG_TABLE


def test_map_range_partially_mapped_refused_without_any_change():
    m = machine()
    va = 0x7F00_0000_0000
    m.pt.map(va + 700 * K4, 0x9000)  # in the second page table of the range
    before = snapshot(m)
    with pytest.raises(MappingError, match=rf"cannot map 4 KiB page at {va + 700 * K4:#x}: already mapped"):
        m.pt.map_range(va, 0x4000_0000, 1000)
    assert snapshot(m) == before
    assert m.pt.leaf(va) is None


def test_map_range_over_huge_page_refused_without_any_change():
    m = machine()
    va = 0x7F00_0000_0000
    m.pt.map(va + M2, 0, size=M2)  # the second 2 MiB of the range is a huge page
    before = snapshot(m)
    with pytest.raises(MappingError, match="already covers it"):
        m.pt.map_range(va + M2 - 2 * K4, 0x4000_0000, 4)
    assert snapshot(m) == before


def test_map_range_refusals():
    m = machine()
    before = snapshot(m)
    with pytest.raises(MappingError, match="n_pages must be at least 1, got 0"):
        m.pt.map_range(0, 0, 0)
    with pytest.raises(KaiserEduError, match="not canonical"):
        m.pt.map_range(0x7FFF_FFFF_F000, 0, 2)  # the second page is non-canonical
    with pytest.raises(MappingError, match="physical address"):
        m.pt.map_range(0, (1 << 52) - K4, 2)  # the frames would pass MAXPHYADDR
    with pytest.raises(MappingError, match="not aligned"):
        m.pt.map_range(0x800, 0, 2)
    with pytest.raises(MappingError, match="overlap"):
        m.pt.map_range(0, 0, 2, flags=b.PAGE_SHARED | 0x1000)
    assert snapshot(m) == before


# --- unmap / protect ------------------------------------------------------------------------
def test_unmap_refusals():
    m = machine()
    with pytest.raises(MappingError, match=r"cannot unmap 0x400000: it is not mapped"):
        m.pt.unmap(USER_VA)
    m.pt.map(USER_VA, 0, size=M2)
    before = snapshot(m)
    with pytest.raises(MappingError, match=r"cannot unmap 0x401000: it is inside a 2 MiB page starting at 0x400000"):
        m.pt.unmap(USER_VA + K4)
    assert snapshot(m) == before


def test_protect_sets_and_clears_flag_bits():
    m = machine()
    m.pt.map(USER_VA, 0x5000, flags=b.PAGE_SHARED)
    new = m.pt.protect(USER_VA, clear_bits=b.PAGE_RW)
    assert new == (0x5000 | b.PAGE_SHARED) & ~b.PAGE_RW
    assert m.pt.leaf(USER_VA).value == new
    new = m.pt.protect(USER_VA, set_bits=b.PAGE_RW | b.PAGE_DIRTY, clear_bits=b.PAGE_NX)
    assert new == 0x5000 | b.PAGE_PRESENT | b.PAGE_RW | b.PAGE_USER | b.PAGE_ACCESSED | b.PAGE_DIRTY
    # clearing P makes the page not present (the leaf disappears for lookups)
    m.pt.protect(USER_VA, clear_bits=b.PAGE_PRESENT)
    assert m.pt.leaf(USER_VA) is None


@pytest.mark.parametrize("size, bits", [
    (K4, 0x1000), (K4, 1 << 40), (M2, b.PAGE_PSE), (G1, b.PAGE_PSE), (M2, 1 << 30),
])
def test_protect_refuses_frame_and_ps_bits(size, bits):
    m = machine()
    m.pt.map(0, G1, size=size)
    before = snapshot(m)
    with pytest.raises(MappingError, match=r"protect\(\) changes flag bits only; .* touches the frame address or PS"):
        m.pt.protect(0, set_bits=bits)
    with pytest.raises(MappingError, match="flag bits only"):
        m.pt.protect(0, clear_bits=bits)
    assert snapshot(m) == before


def test_protect_allows_pat_large_on_huge_pages():
    m = machine()
    m.pt.map(0, G1, size=M2)
    assert m.pt.protect(0, set_bits=b.PAGE_PAT_LARGE) & b.PAGE_PAT_LARGE
    assert m.pt.translate(0) == G1


def test_protect_allows_pat_bit_7_on_4k_pages():
    # In a PTE bit 7 is PAT, a flag (SDM Table 4-19); map() accepts it, so protect() must too.
    m = machine()
    m.pt.map(0, 0x5000)
    assert m.pt.protect(0, set_bits=b.PAGE_PAT) & b.PAGE_PAT


def test_protect_unmapped_refused():
    m = machine()
    with pytest.raises(MappingError, match=r"cannot protect 0x400000: it is not mapped"):
        m.pt.protect(USER_VA, set_bits=b.PAGE_RW)
