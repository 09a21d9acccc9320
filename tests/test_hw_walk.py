"""The reference walk (kaiser_edu/hw/walk.py), one test per rule of the Intel SDM Vol. 3A
chapter 4, and for every case the numba MMU without a TLB must agree with it (outcome, #PF
error code, physical address, page size and the A/D bits left in memory): see
hw_helpers.both().

Error-code shorthand (SDM 4.7, Linux trap_pf.h): P=0x1 W=0x2 U=0x4 RSVD=0x8 ID (I/D)=0x10 PK=0x20.
"""

import copy

import pytest
from hw_helpers import KERNEL_VA, KTEXT_VA, USER_VA, A, D, both, expect_ok, expect_pf, machine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.address import canonicalize, table_index
from kaiser_edu.hw.mmu import MMU
from kaiser_edu.hw.physmem import PhysMem
from kaiser_edu.hw.regs import Registers
from kaiser_edu.hw.walk import walk

P, W, U, RSVD, ID, PK = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20
KINDS = ["read", "write", "fetch"]
USER_PA = 0x5000
KERNEL_PA = 0x9000
# A user page every access kind may use (P|RW|US|A, executable): faults come only from
# what each test changes.
USER_RWX = b.PAGE_PRESENT | b.PAGE_RW | b.PAGE_USER | b.PAGE_ACCESSED
KERNEL_RWX = b.PAGE_KERNEL_EXEC


def base_error(kind, cpl, smep=False, nxe=True):
    """W, U and I/D bits of the error code for an access (SDM 4.7)."""
    return ((W if kind == "write" else 0) | (U if cpl == 3 else 0)
            | (ID if kind == "fetch" and (smep or nxe) else 0))


def user_machine(levels=4, flags=USER_RWX, **kw):
    m = machine(levels, **kw)
    m.pt.map(USER_VA, USER_PA, flags=flags)
    return m


def kernel_va(levels):
    return KERNEL_VA if levels == 4 else 0xFF11_0000_0000_0000


# --- rule 1: non-canonical -> #GP before any table is read (SDM 3.3.7.1, 6.15) --------------
@pytest.mark.parametrize("va", [0x0000_8000_0000_0000, 0xFFFF_7FFF_FFFF_F000,
                                0x8000_0000_0000_0000, 0x1234_5678_9ABC_D000])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cpl", [0, 3])
def test_non_canonical_is_gp_not_pf_4_level(va, kind, cpl):
    m = user_machine()
    before = m.mem.nonzero_qwords()
    w = both(m.mem, m.regs(), va, kind, cpl)
    assert w.outcome == b.OUTCOME_GP
    assert w.steps == [] and w.error_code is None and w.cr2 is None and w.ad_updates == []
    assert m.mem.nonzero_qwords() == before
    assert "not canonical" in w.summary()


def test_non_canonical_5_level():
    m = user_machine(levels=5)
    w = both(m.mem, m.regs(), 0x0100_0000_0000_0000)
    assert w.outcome == b.OUTCOME_GP and w.steps == []
    # bit 47 set is canonical with LA57: a walk happens (and finds nothing)
    w = both(m.mem, m.regs(), 0x0000_8000_0000_0000)
    expect_pf(w, U)
    assert [s.level for s in w.steps] == [5, 4]


# --- rule 2: each level reads table | index << 3 (SDM 4.5) ---------------------------------
@pytest.mark.parametrize("levels", [4, 5])
def test_walk_reads_one_entry_per_level(levels):
    m = user_machine(levels)
    va = USER_VA + 0x123
    w = both(m.mem, m.regs(), va)
    expect_ok(w, USER_PA + 0x123)
    assert w.page_size == 4096
    assert [s.level for s in w.steps] == list(range(levels, 0, -1))
    assert w.steps[0].entry_pa == m.pt.pgd_pa | table_index(va, levels) << 3
    for upper, lower in zip(w.steps, w.steps[1:]):
        assert lower.entry_pa == (upper.entry & b.phys_addr_mask(52)) | table_index(va, lower.level) << 3
    assert [s.entry_pa for s in w.steps] == [e.pa for e in m.pt.entries(va)]


def test_pcid_bits_of_cr3_are_not_part_of_the_table_address():
    m = user_machine()
    w = both(m.mem, m.regs(cr3=m.pt.cr3(0x7FF), pcide=True), USER_VA + 8)
    expect_ok(w, USER_PA + 8)


def test_cr3_pwt_pcd_bits_ignored_for_table_address():
    m = user_machine()
    w = both(m.mem, m.regs(cr3=m.pt.cr3() | b.X86_CR3_PWT | b.X86_CR3_PCD), USER_VA)
    expect_ok(w, USER_PA)


# --- rule 3a: not present at each level -> P=0 (SDM 4.7) ------------------------------------
@pytest.mark.parametrize("levels, level", [(4, 4), (4, 3), (4, 2), (4, 1),
                                           (5, 5), (5, 4), (5, 1)])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cpl", [0, 3])
def test_not_present_at_each_level(levels, level, kind, cpl):
    m = user_machine(levels)
    m.set_bits(USER_VA, level, clear_bits=b.PAGE_PRESENT)
    w = both(m.mem, m.regs(), USER_VA + 0x10, kind, cpl)
    expect_pf(w, base_error(kind, cpl))
    assert not w.error_code & P
    assert [s.level for s in w.steps] == list(range(levels, level - 1, -1))


def test_not_present_ignores_all_other_bits():
    # P=0: "the processor ignores the rest of the entry" - reserved bits too (SDM 4.5)
    m = user_machine(maxphyaddr=40)
    m.mem.write_qword(m.entry_pa(USER_VA, 1), (1 << 45) | b.PAGE_PSE | b.PAGE_NX | 0xFFE)
    w = both(m.mem, m.regs(nxe=False), USER_VA)
    expect_pf(w, U)


def test_unmapped_address_reads_zero_table():
    m = machine()
    w = both(m.mem, m.regs(), 0x7FFF_FFFF_F000, "write", 3)
    expect_pf(w, W | U)
    assert len(w.steps) == 1 and w.steps[0].entry == 0


@pytest.mark.parametrize("smep, nxe, reported", [
    (False, False, False), (False, True, True), (True, False, True), (True, True, True),
])
def test_id_bit_reported_only_with_smep_or_nxe(smep, nxe, reported):
    m = machine()
    for cpl in (0, 3):
        w = both(m.mem, m.regs(smep=smep, nxe=nxe), USER_VA, "fetch", cpl)
        expect_pf(w, (U if cpl == 3 else 0) | (ID if reported else 0))
    # never for data accesses
    w = both(m.mem, m.regs(smep=smep, nxe=nxe), USER_VA, "read", 3)
    expect_pf(w, U)


# --- rule 3b: reserved bits -> P|RSVD (SDM 4.5 Tables 4-14..4-19, 4.7) ----------------------
@pytest.mark.parametrize("level", [4, 3, 2, 1])
@pytest.mark.parametrize("kind", ["read", "write"])
def test_rsvd_bit_above_maxphyaddr(level, kind):
    m = user_machine(maxphyaddr=40)
    m.set_bits(USER_VA, level, set_bits=1 << 45)
    w = both(m.mem, m.regs(), USER_VA, kind, 3)
    expect_pf(w, P | RSVD | U | (W if kind == "write" else 0))
    assert w.steps[-1].level == level


def test_bits_below_maxphyaddr_are_address_not_reserved():
    m = machine(maxphyaddr=46)
    m.pt.map(USER_VA, (1 << 45) | 0x3000, flags=USER_RWX)
    expect_ok(both(m.mem, m.regs(), USER_VA + 4), (1 << 45) | 0x3004)


@pytest.mark.parametrize("levels, level", [(4, 4), (5, 5), (5, 4)])
def test_rsvd_ps_in_pml4e_and_pml5e(levels, level):
    # no 512 GiB (or 256 TiB) pages: PS is reserved there (Linux p4d_leaf: "No 512 GiB pages")
    m = user_machine(levels)
    m.set_bits(USER_VA, level, set_bits=b.PAGE_PSE)
    w = both(m.mem, m.regs(), USER_VA, "read", 0)
    expect_pf(w, P | RSVD)
    assert w.steps[-1].level == level


@pytest.mark.parametrize("bit", [13, 16, 20])
def test_rsvd_bits_20_13_of_2m_leaf(bit):
    m = machine()
    m.pt.map(USER_VA, 0x4000_0000, size=2 << 20, flags=USER_RWX)
    m.set_bits(USER_VA, 2, set_bits=1 << bit)
    w = both(m.mem, m.regs(), USER_VA + 0x1234, "write", 3)
    expect_pf(w, P | RSVD | W | U)


@pytest.mark.parametrize("bit", [13, 21, 29])
def test_rsvd_bits_29_13_of_1g_leaf(bit):
    m = machine()
    m.pt.map(1 << 39, 1 << 31, size=1 << 30, flags=USER_RWX)
    m.set_bits(1 << 39, 3, set_bits=1 << bit)
    w = both(m.mem, m.regs(), (1 << 39) + 0x1234, "read", 3)
    expect_pf(w, P | RSVD | U)


@pytest.mark.parametrize("size, level, addr_bit", [(2 << 20, 2, 21), (1 << 30, 3, 30)])
def test_pat_and_address_bits_of_huge_leaf_are_not_reserved(size, level, addr_bit):
    m = machine()
    va = 1 << 39
    m.pt.map(va, 1 << 32, size=size, flags=USER_RWX)
    m.set_bits(va, level, set_bits=b.PAGE_PAT_LARGE | 1 << addr_bit)
    w = both(m.mem, m.regs(), va + 0x1234, "read", 3)
    expect_ok(w, (1 << 32 | 1 << addr_bit) + 0x1234)  # bit 12 (PAT) is not address


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_rsvd_nx_with_nxe_0(level):
    # XD is reserved while IA32_EFER.NXE=0 (SDM 4.5): P|RSVD, and no I/D bit (SMEP=0, NXE=0)
    m = user_machine()
    m.set_bits(USER_VA, level, set_bits=b.PAGE_NX)
    for kind in KINDS:
        w = both(m.mem, m.regs(nxe=False), USER_VA, kind, 3)
        expect_pf(w, P | RSVD | U | (W if kind == "write" else 0))


def test_nxe_0_everything_is_executable():
    m = user_machine()
    expect_ok(both(m.mem, m.regs(nxe=False), USER_VA, "fetch", 3), USER_PA)


def test_rsvd_takes_precedence_over_rights():
    # the walk stops at the bad entry: no U/S check of a supervisor page happens first
    m = machine(maxphyaddr=40)
    m.pt.map(USER_VA, USER_PA, flags=b.PAGE_KERNEL)
    m.set_bits(USER_VA, 1, set_bits=1 << 41)
    expect_pf(both(m.mem, m.regs(), USER_VA, "write", 3), P | RSVD | W | U)


def test_ignored_bits_are_ignored():
    # bits 11:9 and 58:52 are ignored; pkey bits 62:59 are ignored in non-leaf entries
    m = user_machine()
    for level in (4, 3, 2, 1):
        m.set_bits(USER_VA, level, set_bits=0xE00 | (0x7F << 52))
    for level in (4, 3, 2):
        m.set_bits(USER_VA, level, set_bits=b.PKEY_MASK)
    expect_ok(both(m.mem, m.regs(), USER_VA, "write", 3), USER_PA)


# --- rule 4: PS ends the walk: 2 MiB and 1 GiB pages (SDM 4.5 Tables 4-16/4-18) -------------
@pytest.mark.parametrize("levels", [4, 5])
def test_2m_translation(levels):
    m = machine(levels)
    va = 0x4000_0000
    m.pt.map(va, 0x8020_0000, size=2 << 20, flags=USER_RWX | b.PAGE_PAT_LARGE)
    w = both(m.mem, m.regs(), va + 0x1F_2345, "write", 3)
    expect_ok(w, 0x8020_0000 + 0x1F_2345)  # offset = va bits 20:0; bit 12 (PAT) not address
    assert w.page_size == 2 << 20
    assert [s.level for s in w.steps] == list(range(levels, 1, -1))


@pytest.mark.parametrize("levels", [4, 5])
def test_1g_translation(levels):
    m = machine(levels)
    va = kernel_va(levels) + (5 << 30)
    m.pt.map(va, 0x1_4000_0000, size=1 << 30, flags=b.PAGE_KERNEL | b.PAGE_PAT_LARGE)
    w = both(m.mem, m.regs(), va + 0x3ABC_DEF0, "read", 0)
    expect_ok(w, 0x1_4000_0000 + 0x3ABC_DEF0)  # offset = va bits 29:0
    assert w.page_size == 1 << 30
    assert [s.level for s in w.steps] == list(range(levels, 2, -1))


def test_5_level_translation_of_a_57_bit_address():
    m = machine(5)
    va = 0x00AB_CDEF_1234_5000
    m.pt.map(va, 0x7000, flags=USER_RWX)
    expect_ok(both(m.mem, m.regs(), va + 0xFFF, "read", 3), 0x7FFF)
    # the same low 48 bits in another PML5 slot are not mapped
    expect_pf(both(m.mem, m.regs(), va ^ (1 << 50), "read", 3), U)


# --- rule 5: U/S and R/W are ANDed, XD is ORed across levels (SDM 4.6.1) --------------------
@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_user_supervisor_and_across_levels(level):
    m = user_machine()
    m.set_bits(USER_VA, level, clear_bits=b.PAGE_USER)
    expect_pf(both(m.mem, m.regs(), USER_VA, "read", 3), P | U)
    expect_pf(both(m.mem, m.regs(), USER_VA, "write", 3), P | W | U)
    expect_pf(both(m.mem, m.regs(), USER_VA, "fetch", 3), P | U | ID)
    # now a supervisor-mode address: SMAP and SMEP no longer apply to it
    r = m.regs(smap=True, smep=True)
    for kind in KINDS:
        expect_ok(both(m.mem, r, USER_VA, kind, 0), USER_PA)


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_read_write_and_across_levels(level):
    m = user_machine()
    m.set_bits(USER_VA, level, clear_bits=b.PAGE_RW)
    expect_pf(both(m.mem, m.regs(), USER_VA, "write", 3), P | W | U)
    expect_ok(both(m.mem, m.regs(), USER_VA, "read", 3), USER_PA)
    expect_ok(both(m.mem, m.regs(), USER_VA, "fetch", 3), USER_PA)
    expect_pf(both(m.mem, m.regs(wp=True), USER_VA, "write", 0), P | W)
    expect_ok(both(m.mem, m.regs(wp=False), USER_VA, "write", 0), USER_PA)


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_nx_or_across_levels(level):
    m = user_machine()
    m.set_bits(USER_VA, level, set_bits=b.PAGE_NX)
    expect_pf(both(m.mem, m.regs(), USER_VA, "fetch", 3), P | U | ID)
    expect_pf(both(m.mem, m.regs(), USER_VA, "fetch", 0), P | ID)
    expect_ok(both(m.mem, m.regs(), USER_VA, "read", 3), USER_PA)
    expect_ok(both(m.mem, m.regs(), USER_VA, "write", 3), USER_PA)


def test_nx_only_on_pml4e_blocks_kernel_fetch():
    # what PTI does to the kernel copy of user PGD entries (pti_set_user_pgtbl): _PAGE_NX
    # on the top level alone makes everything below non-executable
    m = machine()
    m.pt.map(KTEXT_VA, 0x100_0000, flags=KERNEL_RWX)
    expect_ok(both(m.mem, m.regs(), KTEXT_VA, "fetch", 0))
    m.set_bits(KTEXT_VA, 4, set_bits=b.PAGE_NX)
    expect_pf(both(m.mem, m.regs(), KTEXT_VA, "fetch", 0), P | ID)


# --- rule 6: access rights (SDM 4.6) -------------------------------------------------------
@pytest.mark.parametrize("cpl", [0, 1, 2])
def test_cr0_wp_supervisor_write_to_read_only(cpl):
    m = machine()
    m.pt.map(KERNEL_VA, KERNEL_PA, flags=b.PAGE_KERNEL_RO)
    expect_pf(both(m.mem, m.regs(wp=True), KERNEL_VA, "write", cpl), P | W)
    expect_ok(both(m.mem, m.regs(wp=False), KERNEL_VA, "write", cpl), KERNEL_PA)


def test_cr0_wp_supervisor_write_to_read_only_user_page():
    m = user_machine(flags=b.PAGE_READONLY)
    expect_pf(both(m.mem, m.regs(wp=True), USER_VA, "write", 0), P | W)
    expect_ok(both(m.mem, m.regs(wp=False), USER_VA, "write", 0), USER_PA)
    # WP never lets user mode write
    expect_pf(both(m.mem, m.regs(wp=False), USER_VA, "write", 3), P | W | U)


def test_smep_blocks_supervisor_fetch_from_user_page():
    m = user_machine()
    expect_ok(both(m.mem, m.regs(smep=False), USER_VA, "fetch", 0), USER_PA)
    expect_pf(both(m.mem, m.regs(smep=True), USER_VA, "fetch", 0), P | ID)
    # with NXE=0 the I/D bit is still reported because SMEP=1
    expect_pf(both(m.mem, m.regs(smep=True, nxe=False), USER_VA, "fetch", 0), P | ID)
    # SMEP is about fetches only, and only supervisor ones
    expect_ok(both(m.mem, m.regs(smep=True), USER_VA, "read", 0), USER_PA)
    expect_ok(both(m.mem, m.regs(smep=True), USER_VA, "fetch", 3), USER_PA)


def test_smep_allows_fetch_from_kernel_page():
    m = machine()
    m.pt.map(KTEXT_VA, 0x100_0000, flags=KERNEL_RWX)
    expect_ok(both(m.mem, m.regs(smep=True), KTEXT_VA, "fetch", 0))


@pytest.mark.parametrize("kind, err", [("read", P), ("write", P | W)])
def test_smap_blocks_supervisor_data_access_unless_ac(kind, err):
    m = user_machine()
    expect_ok(both(m.mem, m.regs(smap=False), USER_VA, kind, 0), USER_PA)
    expect_pf(both(m.mem, m.regs(smap=True), USER_VA, kind, 0, ac=False), err)
    expect_ok(both(m.mem, m.regs(smap=True), USER_VA, kind, 0, ac=True), USER_PA)
    # SMAP does not apply to user-mode accesses (AC is irrelevant there)
    expect_ok(both(m.mem, m.regs(smap=True), USER_VA, kind, 3, ac=False), USER_PA)


def test_smap_does_not_apply_to_fetches_or_supervisor_pages():
    m = user_machine()
    expect_ok(both(m.mem, m.regs(smap=True, smep=False), USER_VA, "fetch", 0), USER_PA)
    m.pt.map(KERNEL_VA, KERNEL_PA, flags=b.PAGE_KERNEL)
    expect_ok(both(m.mem, m.regs(smap=True), KERNEL_VA, "read", 0), KERNEL_PA)


def test_smap_with_ac_still_honours_wp():
    m = user_machine(flags=b.PAGE_READONLY)
    expect_pf(both(m.mem, m.regs(smap=True), USER_VA, "write", 0, ac=True), P | W)


@pytest.mark.parametrize("kind, err", [("read", P | U), ("write", P | W | U), ("fetch", P | U | ID)])
def test_user_access_to_supervisor_page(kind, err):
    m = machine()
    m.pt.map(KTEXT_VA, 0x100_0000, flags=KERNEL_RWX)
    expect_pf(both(m.mem, m.regs(), KTEXT_VA, kind, 3), err)
    for cpl in (0, 1, 2):  # CPL < 3 is supervisor mode
        expect_ok(both(m.mem, m.regs(), KTEXT_VA, kind, cpl), 0x100_0000)


# --- protection keys (SDM 4.6.2; Linux Documentation/core-api/protection-keys.rst) ----------
def pkey_machine(key, flags=b.PAGE_SHARED):
    m = machine()
    m.pt.map(USER_VA, USER_PA, flags=flags | key << b.PKEY_SHIFT)
    m.pt.map(USER_VA + 0x1000, USER_PA + 0x1000, flags=flags)  # key 0
    return m


@pytest.mark.parametrize("key", [1, 7, 15])
def test_pkru_ad_blocks_user_read_and_write(key):
    m = pkey_machine(key)
    r = m.regs(pke=True, pkru=1 << (2 * key))
    expect_pf(both(m.mem, r, USER_VA, "read", 3), P | U | PK)
    expect_pf(both(m.mem, r, USER_VA, "write", 3), P | W | U | PK)
    expect_ok(both(m.mem, r, USER_VA + 0x1000, "read", 3))  # other keys unaffected
    # PKE=0: PKRU is not consulted
    expect_ok(both(m.mem, m.regs(pke=False, pkru=1 << (2 * key)), USER_VA, "read", 3))


@pytest.mark.parametrize("key", [0, 3, 15])
def test_pkru_wd_blocks_user_write_only(key):
    m = pkey_machine(key)
    r = m.regs(pke=True, pkru=2 << (2 * key))
    expect_pf(both(m.mem, r, USER_VA, "write", 3), P | W | U | PK)
    expect_ok(both(m.mem, r, USER_VA, "read", 3), USER_PA)


def test_pkru_wd_blocks_supervisor_write_only_with_wp():
    m = pkey_machine(2)
    pkru = 2 << 4
    expect_pf(both(m.mem, m.regs(pke=True, pkru=pkru, wp=True), USER_VA, "write", 0), P | W | PK)
    expect_ok(both(m.mem, m.regs(pke=True, pkru=pkru, wp=False), USER_VA, "write", 0), USER_PA)
    expect_ok(both(m.mem, m.regs(pke=True, pkru=pkru, wp=True), USER_VA, "read", 0), USER_PA)


def test_pkru_ad_applies_to_supervisor_reads_of_user_pages():
    m = pkey_machine(2)
    expect_pf(both(m.mem, m.regs(pke=True, pkru=1 << 4), USER_VA, "read", 0), P | PK)


def test_pkeys_never_apply_to_fetches():
    m = pkey_machine(4, flags=b.PAGE_USER_EXEC)
    r = m.regs(pke=True, pkru=0xFFFF_FFFF)
    expect_ok(both(m.mem, r, USER_VA, "fetch", 3), USER_PA)
    expect_pf(both(m.mem, r, USER_VA, "read", 3), P | U | PK)


def test_pkeys_never_apply_to_supervisor_pages():
    m = machine()
    m.pt.map(KERNEL_VA, KERNEL_PA, flags=b.PAGE_KERNEL | 5 << b.PKEY_SHIFT)
    r = m.regs(pke=True, pkru=0xFFFF_FFFF)
    expect_ok(both(m.mem, r, KERNEL_VA, "read", 0), KERNEL_PA)
    expect_ok(both(m.mem, r, KERNEL_VA, "write", 0), KERNEL_PA)
    # a user page made supervisor by U=0 in an upper level is not subject to pkeys either
    m2 = pkey_machine(5)
    m2.set_bits(USER_VA, 3, clear_bits=b.PAGE_USER)
    expect_ok(both(m2.mem, m2.regs(pke=True, pkru=0xFFFF_FFFF), USER_VA, "write", 0), USER_PA)


def test_pkey_comes_from_the_leaf_only():
    m = pkey_machine(0)
    m.set_bits(USER_VA, 2, set_bits=3 << b.PKEY_SHIFT)  # ignored in a PDE
    expect_ok(both(m.mem, m.regs(pke=True, pkru=1 << 6), USER_VA, "read", 3), USER_PA)


# --- rule 7: A and D (SDM 4.8) and the documented leaf-on-fault decision --------------------
def _diff(before, after):
    keys = set(before) | set(after)
    return {k: (before.get(k, 0), after.get(k, 0)) for k in keys if before.get(k, 0) != after.get(k, 0)}


def check_ad_updates(m, w, before):
    """ad_updates lists exactly the memory changes, as (pa, old, new)."""
    diff = _diff(before, m.mem.nonzero_qwords())
    assert {pa: (old, new) for pa, old, new in w.ad_updates} == diff
    assert len(w.ad_updates) == len(diff)
    for _pa, old, new in w.ad_updates:
        assert new & ~old & ~(A | D) == 0  # only A and D are ever set by hardware
        assert old & ~new == 0  # and nothing is cleared


@pytest.mark.parametrize("levels", [4, 5])
def test_read_sets_a_everywhere_and_no_d(levels):
    m = user_machine(levels)
    m.clear_ad(USER_VA)
    before = m.mem.nonzero_qwords()
    w = both(m.mem, m.regs(), USER_VA, "read", 3)
    expect_ok(w)
    check_ad_updates(m, w, before)
    assert len(w.ad_updates) == levels
    for e in m.pt.entries(USER_VA):
        assert e.value & A and not e.value & D


@pytest.mark.parametrize("size, leaf_level", [(4096, 1), (2 << 20, 2), (1 << 30, 3)])
def test_write_sets_d_on_the_leaf_only(size, leaf_level):
    m = machine()
    m.pt.map(1 << 39, 1 << 32, size=size, flags=USER_RWX)
    m.clear_ad(1 << 39)
    before = m.mem.nonzero_qwords()
    w = both(m.mem, m.regs(), (1 << 39) + 8, "write", 3)
    expect_ok(w)
    check_ad_updates(m, w, before)
    for e in m.pt.entries(1 << 39):
        assert e.value & A
        assert bool(e.value & D) == (e.level == leaf_level), e


def test_no_ad_writes_when_already_set():
    m = user_machine(flags=USER_RWX | D)
    w = both(m.mem, m.regs(), USER_VA, "write", 3)
    assert w.ad_updates == []


def test_protection_fault_sets_a_in_tables_but_not_in_leaf():
    m = user_machine(flags=b.PAGE_READONLY)
    m.clear_ad(USER_VA)
    before = m.mem.nonzero_qwords()
    w = both(m.mem, m.regs(), USER_VA, "write", 3)
    expect_pf(w, P | W | U)
    check_ad_updates(m, w, before)
    entries = list(m.pt.entries(USER_VA))
    assert all(e.value & A for e in entries[:-1])
    assert not entries[-1].value & (A | D)


@pytest.mark.parametrize("fault_level", [3, 2, 1])
@pytest.mark.parametrize("how", ["not-present", "reserved"])
def test_fault_sets_a_only_above_the_failing_level(fault_level, how):
    m = user_machine(maxphyaddr=40)
    m.clear_ad(USER_VA)
    if how == "not-present":
        m.set_bits(USER_VA, fault_level, clear_bits=b.PAGE_PRESENT)
    else:
        m.set_bits(USER_VA, fault_level, set_bits=1 << 44)
    before = m.mem.nonzero_qwords()
    w = both(m.mem, m.regs(), USER_VA, "read", 3)
    expect_pf(w, U if how == "not-present" else P | RSVD | U)
    check_ad_updates(m, w, before)
    assert [pa for pa, _, _ in w.ad_updates] == [s.entry_pa for s in w.steps[:-1]]
    assert not m.mem.read_qword(w.steps[-1].entry_pa) & A


def test_set_ad_false_leaves_memory_alone():
    m = user_machine()
    m.clear_ad(USER_VA)
    before = m.mem.nonzero_qwords()
    w = walk(m.mem, m.regs(), USER_VA, "write", 3, set_ad=False)
    expect_ok(w, USER_PA)
    assert w.ad_updates == [] and m.mem.nonzero_qwords() == before


def test_steps_record_values_before_ad_update():
    m = user_machine()
    m.clear_ad(USER_VA)
    w = walk(m.mem, m.regs(), USER_VA, "write", 3)
    assert all(not s.entry & (A | D) for s in w.steps)


# --- input checking and presentation -------------------------------------------------------
def test_walk_refuses_bad_inputs():
    m = user_machine()
    r = m.regs()
    with pytest.raises(KaiserEduError, match=r"access kind must be one of read, write, fetch; got 'exec'"):
        walk(m.mem, r, USER_VA, "exec")
    with pytest.raises(KaiserEduError, match=r"cpl must be 0, 1, 2 or 3; got 4"):
        walk(m.mem, r, USER_VA, "read", 4)
    with pytest.raises(KaiserEduError, match=r"va must be an integer in \[0, 2\*\*64\), got -1"):
        walk(m.mem, r, -1)
    mmu = MMU(m.mem, r, tlb=None)
    with pytest.raises(KaiserEduError, match=r"access kind must be one of read, write, fetch; got 'exec'"):
        mmu.access(USER_VA, "exec")
    with pytest.raises(KaiserEduError, match=r"cpl must be 0, 1, 2 or 3; got 7"):
        mmu.access(USER_VA, "read", 7)


def test_mmu_refuses_maxphyaddr_mismatch():
    m = machine()
    with pytest.raises(KaiserEduError, match=r"registers say MAXPHYADDR=40 but the memory has 52 bits"):
        MMU(m.mem, Registers.long_mode(cr3=m.pt.cr3(), maxphyaddr=40))


def test_walk_result_text():
    m = user_machine(flags=b.PAGE_READONLY)
    w = walk(m.mem, m.regs(), USER_VA + 4, "write", 3)
    assert w.summary() == ("#PF error code 0x7: user-mode write to a present page (protection "
                           "violation); CR2=0x400004")
    text = str(w)
    assert text.splitlines()[0] == "write of 0x400004 at CPL 3"
    assert "PML4E " in text and "PTE " in text and text.endswith(w.summary())
    ok = walk(m.mem, m.regs(), USER_VA + 4, "read", 3)
    assert ok.summary() == "0x400004 -> 0x5004 (4 KiB page)"


# --- property: random tables, random registers, random access -------------------------------
_ODD_BITS = [0] * 36 + [1 << 12, 1 << 13, 1 << 20, 1 << 29, 1 << 45, 0x7F << 52]


@st.composite
def exotic_case(draw):
    """Mostly plausible entries with now and then an odd bit (reserved, PS where it is
    reserved, ignored bits, pkeys), random registers and a few accesses."""
    levels = draw(st.sampled_from([4, 5]))
    maxphy = draw(st.sampled_from([40, 46, 52]))
    raw = draw(st.integers(0, (1 << 64) - 1))
    va = canonicalize(raw, levels)
    if draw(st.integers(0, 15)) == 0:
        va ^= 1 << 60  # non-canonical for both 4 and 5 levels
    entries = []
    for level in range(levels, 0, -1):
        flags = draw(st.integers(0, 0x1FF)) & ~b.PAGE_PSE | draw(st.sampled_from(_ODD_BITS))
        if draw(st.integers(0, 7 if level >= 4 else 2)) == 0:
            flags |= b.PAGE_PSE
        flags |= draw(st.integers(0, 15)) << 59
        if draw(st.integers(0, 3)):  # mostly user, writable entries: more rights checks
            flags |= b.PAGE_USER | b.PAGE_RW
        if draw(st.integers(0, 7)) == 0:
            flags |= b.PAGE_NX
        if draw(st.integers(0, 15)):
            flags |= b.PAGE_PRESENT
        entries.append(flags)
        if level == 1 or (level <= 3 and flags & b.PAGE_PSE):
            break
    frame = draw(st.integers(0, (1 << 28) - 1)) << 12  # below 2**40
    regs_kw = dict(
        wp=draw(st.booleans()), smep=draw(st.booleans()), smap=draw(st.booleans()),
        nxe=draw(st.booleans()), pke=draw(st.booleans()), pkru=draw(st.integers(0, 0xFFFF_FFFF)),
        pcide=draw(st.booleans()),
    )
    accesses = draw(st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 3), st.booleans()),
                             min_size=1, max_size=3))
    return levels, maxphy, va, entries, frame, regs_kw, accesses


@pytest.mark.property
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(exotic_case())
def test_reference_walk_and_numba_walk_agree_on_exotic_tables(case):
    levels, maxphy, va, entries, frame, regs_kw, accesses = case
    mem = PhysMem(maxphyaddr=maxphy)
    table = 0x10_0000  # tables at 1 MiB, 2 MiB, ...: distinct frames below every MAXPHYADDR
    cr3 = table | (0x5 if regs_kw["pcide"] else 0)
    for i, flags in enumerate(entries):
        level = levels - i
        leaf = level == 1 or (level <= 3 and flags & b.PAGE_PSE)
        nxt = frame & ~((1 << b.level_shift(level)) - 1) if leaf else table + 0x10_0000
        value = (flags | nxt) & ((1 << 64) - 1)
        mem.write_qword(table | table_index(va, level) << 3, value)
        table = nxt
    regs = Registers.long_mode(cr3=cr3, levels=levels, maxphyaddr=maxphy, **regs_kw)
    snapshot = copy.deepcopy(mem)
    for kind, cpl, ac in accesses:  # repeated accesses see the A/D bits set by earlier ones
        both(mem, regs, va, kind, cpl, ac)
    assert snapshot.nonzero_qwords().keys() == mem.nonzero_qwords().keys()
