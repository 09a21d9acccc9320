"""kaiser_edu.hw.bits: architectural constants (checked against Linux's values) and decoders.

Sources: Linux arch/x86/include/asm/pgtable_types.h (_PAGE_*), arch/x86/include/asm/trap_pf.h
(X86_PF_*), arch/x86/include/uapi/asm/processor-flags.h (X86_CR*), msr-index.h (EFER_*),
arch/x86/include/asm/pgtable_64_types.h (*_SHIFT); Intel SDM Vol. 3A Tables 4-14..4-19 and 4.7.
"""

import pytest

from kaiser_edu.hw import bits as b


# --- pgtable_types.h: _PAGE_BIT_* ---------------------------------------------------------
@pytest.mark.parametrize(
    "name, bit",
    [
        ("PAGE_PRESENT", 0), ("PAGE_RW", 1), ("PAGE_USER", 2), ("PAGE_PWT", 3),
        ("PAGE_PCD", 4), ("PAGE_ACCESSED", 5), ("PAGE_DIRTY", 6), ("PAGE_PSE", 7),
        ("PAGE_PAT", 7), ("PAGE_GLOBAL", 8), ("PAGE_SOFTW1", 9), ("PAGE_PAT_LARGE", 12),
        ("PAGE_NX", 63),
    ],
)
def test_page_bits_match_linux_pgtable_types_h(name, bit):
    assert getattr(b, name) == 1 << bit


def test_page_nx_is_bit_63():
    assert b.PAGE_NX == 1 << 63 == 0x8000_0000_0000_0000


def test_pkey_bits_62_to_59_pgtable_types_h():
    # _PAGE_BIT_PKEY_BIT0..3 = 59..62
    assert b.PKEY_SHIFT == 59
    assert b.PKEY_MASK == sum(1 << i for i in range(59, 63))


@pytest.mark.parametrize(
    "name, value",
    [
        # _PAGE_TABLE = P|RW|USER|A|D ; _KERNPG_TABLE = P|RW|A|D
        ("PAGE_TABLE", 0x67),
        ("KERNPG_TABLE", 0x63),
        # __PAGE_KERNEL = P|RW|A|NX|D|G ; __PAGE_KERNEL_RO = P|A|NX|D|G
        ("PAGE_KERNEL", 0x8000_0000_0000_0163),
        ("PAGE_KERNEL_RO", 0x8000_0000_0000_0161),
        ("PAGE_KERNEL_EXEC", 0x163),
        ("PAGE_KERNEL_RX", 0x161),
        # PAGE_SHARED = P|RW|USER|A|NX ; PAGE_READONLY = P|USER|A|NX ; PAGE_READONLY_EXEC
        ("PAGE_SHARED", 0x8000_0000_0000_0027),
        ("PAGE_READONLY", 0x8000_0000_0000_0025),
        ("PAGE_USER_EXEC", 0x25),
    ],
)
def test_composite_protections_match_linux(name, value):
    assert getattr(b, name) == value


def test_shifts_and_sizes_match_pgtable_64_types_h():
    assert (b.PAGE_SHIFT, b.PMD_SHIFT, b.PUD_SHIFT, b.P4D_SHIFT) == (12, 21, 30, 39)
    assert (b.PAGE_SIZE, b.PMD_SIZE, b.PUD_SIZE) == (4096, 2 << 20, 1 << 30)
    assert b.PTRS_PER_TABLE == 512
    assert b.MAX_PHYADDR_BITS == 52


@pytest.mark.parametrize("name, bit", [
    ("X86_CR0_PE", 0), ("X86_CR0_WP", 16), ("X86_CR0_PG", 31),
    ("X86_CR3_PWT", 3), ("X86_CR3_PCD", 4), ("X86_CR3_PCID_NOFLUSH", 63),
    ("X86_CR4_PSE", 4), ("X86_CR4_PAE", 5), ("X86_CR4_PGE", 7), ("X86_CR4_LA57", 12),
    ("X86_CR4_PCIDE", 17), ("X86_CR4_SMEP", 20), ("X86_CR4_SMAP", 21), ("X86_CR4_PKE", 22),
    ("EFER_LME", 8), ("EFER_LMA", 10), ("EFER_NXE", 11),
    ("X86_EFLAGS_AC", 18),
])
def test_control_register_bits_match_processor_flags_h(name, bit):
    assert getattr(b, name) == 1 << bit


def test_cr4_pcide_is_bit_17_and_pcid_mask():
    assert b.X86_CR4_PCIDE == 1 << 17
    assert b.X86_CR3_PCID_MASK == 0xFFF  # X86_CR3_PCID_BITS = 12


@pytest.mark.parametrize("name, value", [
    ("X86_PF_PROT", 0x1), ("X86_PF_WRITE", 0x2), ("X86_PF_USER", 0x4),
    ("X86_PF_RSVD", 0x8), ("X86_PF_INSTR", 0x10), ("X86_PF_PK", 0x20),
])
def test_pf_error_code_bits_match_trap_pf_h(name, value):
    assert getattr(b, name) == value


def test_access_kinds_and_outcomes_are_consistent():
    assert b.ACCESS_KINDS == {"read": 0, "write": 1, "fetch": 2}
    assert b.ACCESS_NAMES == {0: "read", 1: "write", 2: "fetch"}
    assert len({b.OUTCOME_OK, b.OUTCOME_PF, b.OUTCOME_GP}) == 3


# --- masks ----------------------------------------------------------------------------------
def test_phys_addr_mask_52_is_linux_pte_pfn_mask():
    # PTE_PFN_MASK with __PHYSICAL_MASK_SHIFT 52: bits 51:12
    assert b.phys_addr_mask(52) == 0x000F_FFFF_FFFF_F000
    assert b.phys_addr_mask(40) == 0x0000_00FF_FFFF_F000


def test_reserved_mask_is_bits_51_to_maxphyaddr_sdm_4_5():
    assert b.reserved_mask(52) == 0
    assert b.reserved_mask(40) == 0x000F_FF00_0000_0000
    assert b.reserved_mask(46) == sum(1 << i for i in range(46, 52))
    # address bits and reserved bits partition 51:12
    for m in (32, 39, 46, 52):
        assert b.phys_addr_mask(m) & b.reserved_mask(m) == 0
        assert b.phys_addr_mask(m) | b.reserved_mask(m) == 0x000F_FFFF_FFFF_F000


def test_level_shift_and_names():
    assert [b.level_shift(lv) for lv in (1, 2, 3, 4, 5)] == [12, 21, 30, 39, 48]
    assert b.LEVEL_SDM_NAMES == {5: "PML5E", 4: "PML4E", 3: "PDPTE", 2: "PDE", 1: "PTE"}
    # Linux folds the p4d into the pgd with 4 levels
    assert b.linux_level_name(4, 4) == "pgd"
    assert b.linux_level_name(4, 5) == "p4d"
    assert b.linux_level_name(5, 5) == "pgd"
    assert [b.linux_level_name(lv, 4) for lv in (3, 2, 1)] == ["pud", "pmd", "pte"]


def test_size_name():
    assert [b.size_name(s) for s in b.PAGE_SIZES] == ["4 KiB", "2 MiB", "1 GiB"]


# --- describe_entry ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, level, kw, text",
    [
        (0x8000000000001067, 1, {}, "P RW US A D NX pfn=0x1"),
        (0x80000E3, 2, {}, "P RW A D PS pfn=0x8000 (2 MiB page)"),
        (0, 1, {}, "not present"),
        (0x1234_5000, 1, {}, "not present (software bits 0x12345000)"),
        # bit 7 in a PTE is PAT, in a PDE it is PS (SDM Table 4-19 vs 4-18)
        (0x2000 | 0x81, 1, {}, "P PAT pfn=0x2"),
        (0x2000 | 0x81, 3, {}, "P PS pfn=0x0 (1 GiB page)"),
        (0x4000_0000 | 0x81, 3, {}, "P PS pfn=0x40000 (1 GiB page)"),
        # bit 12 of a huge leaf is PAT, not part of the frame (SDM Table 4-18)
        (0x20_0000 | 0x1000 | 0x81, 2, {}, "P PS PAT pfn=0x200 (2 MiB page)"),
        (0x163 | (1 << 63) | 0x5000, 1, {}, "P RW A D G NX pfn=0x5"),
        (0x25 | (0xB << 59) | 0x7000, 1, {}, "P US A PKEY=11 pfn=0x7"),
        (0x1B | 0x3000, 4, {}, "P RW PWT PCD pfn=0x3"),
        # bits above MAXPHYADDR are not part of the frame number
        ((1 << 45) | 0x1000 | 1, 1, {"maxphyaddr": 40}, "P pfn=0x1"),
        ((1 << 45) | 0x1000 | 1, 1, {}, f"P pfn={((1 << 45) | 0x1000) >> 12:#x}"),
    ],
)
def test_describe_entry(value, level, kw, text):
    assert b.describe_entry(value, level, **kw) == text


def test_describe_entry_ps_in_pml4e_is_named_but_not_a_page():
    # PS is reserved in a PML4E (no 512 GiB pages): named, but no page size claimed
    text = b.describe_entry(0x1000 | 0x83, level=4)
    assert text == "P RW PS pfn=0x1"


# --- describe_error_code ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "code, text",
    [
        (0x0, "supervisor-mode read from a not-present page"),
        (0x2, "supervisor-mode write to a not-present page"),
        (0x4, "user-mode read from a not-present page"),
        (0x7, "user-mode write to a present page (protection violation)"),
        (0x10, "supervisor-mode instruction fetch from a not-present page"),
        (0x14, "user-mode instruction fetch from a not-present page"),
        (0x15, "user-mode instruction fetch from a present page (protection violation)"),
        (0x11, "supervisor-mode instruction fetch from a present page (protection violation)"),
        (0xD, "user-mode read from a present page (reserved bit set in a paging-structure entry)"),
        (0x9, "supervisor-mode read from a present page (reserved bit set in a paging-structure entry)"),
        (0x25, "user-mode read from a present page (protection-key violation)"),
        (0x27, "user-mode write to a present page (protection-key violation)"),
    ],
)
def test_describe_error_code(code, text):
    assert b.describe_error_code(code) == text
