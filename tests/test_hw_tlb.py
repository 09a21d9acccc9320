"""The MMU's TLB (kaiser_edu/hw/mmu.py, mmu_kernels.py): a 2-level, PCID-tagged TLB with
global entries, and the instructions that invalidate it (Intel SDM Vol. 3A 4.10.2-4.10.4;
INVLPG and INVPCID in SDM Vol. 2; Linux arch/x86/mm/tlb.c, arch/x86/include/asm/invpcid.h).
"""

import copy
import dataclasses

import pytest
from hw_helpers import KERNEL_VA, USER_VA, machine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.mmu import MMU, TLBConfig, Trace, TraceBuilder
from kaiser_edu.hw.pgtable import PageTables
from kaiser_edu.hw.walk import walk

USER_PA = 0x5000
KERNEL_PA = 0x9000
X = USER_VA  # non-global user page
Y = USER_VA + 0x1000  # another one
G = KERNEL_VA  # global kernel page (PAGE_KERNEL has G)
OK, PF, GP = b.OUTCOME_OK, b.OUTCOME_PF, b.OUTCOME_GP


DEFAULT_TLB = TLBConfig()


def setup(pcid=0, pcide=False, pge=True, tlb=DEFAULT_TLB, user_flags=b.PAGE_SHARED, **kw):
    m = machine()
    m.pt.map(X, USER_PA, flags=user_flags)
    m.pt.map(Y, USER_PA + 0x1000, flags=user_flags)
    m.pt.map(G, KERNEL_PA, flags=b.PAGE_KERNEL)
    mmu = MMU(m.mem, m.regs(cr3=m.pt.cr3(pcid), pcide=pcide, pge=pge, **kw), tlb=tlb)
    return m, mmu


def where(mmu, va, kind="read", cpl=None, ac=False):
    if cpl is None:
        cpl = 0 if va >> 63 else 3
    r = mmu.access(va, kind, cpl, ac)
    assert r.outcome == OK, str(r)
    return r.tlb


def cached(mmu):
    """{(va, pcid or 'G')} of the usable TLB entries (L1 and L2 together)."""
    return {(e["va"], "G" if e["global"] else e["pcid"]) for e in mmu.tlb_entries()}


# --- hits ----------------------------------------------------------------------------------
def test_second_access_hits_l1():
    m, mmu = setup()
    r1 = mmu.access(X + 0x10, "read", 3)
    r2 = mmu.access(X + 0x10, "read", 3)
    r3 = mmu.access(X + 0xFF8, "read", 3)  # same page, other offset
    assert (r1.tlb, r2.tlb, r3.tlb) == ("walk", "L1", "L1")
    assert (r1.pa, r2.pa, r3.pa) == (USER_PA + 0x10, USER_PA + 0x10, USER_PA + 0xFF8)
    assert r2.page_size == 4096
    assert where(mmu, Y) == "walk"  # another page misses
    c = mmu.counters
    assert (c["accesses"], c["walks"], c["l1_hits"], c["l2_hits"]) == (4, 2, 2, 0)


def test_mmu_without_tlb_always_walks():
    m, mmu = setup(tlb=None)
    for _ in range(5):
        assert where(mmu, X) == "walk"
        assert where(mmu, G) == "walk"
    assert mmu.tlb_entries() == []
    c = mmu.counters
    assert c["l1_hits"] == c["l2_hits"] == 0 and c["walks"] == 10
    res = mmu.run(Trace.accesses([X, X, X, Y], "read", cpl=3))
    assert list(res.where) == [0, 0, 0, 0]


# --- stale translations and invalidation (SDM 4.10.4) ---------------------------------------
def test_stale_translation_until_invlpg():
    m, mmu = setup()
    assert mmu.access(X, "read", 3).pa == USER_PA
    m.pt.unmap(X)
    m.pt.map(X, 0x8000)  # the PTE now points elsewhere; no INVLPG yet
    r = mmu.access(X + 4, "read", 3)
    assert (r.pa, r.tlb) == (USER_PA + 4, "L1")  # the TLB still has the old translation
    assert mmu.invlpg(X).outcome == OK
    r = mmu.access(X + 4, "read", 3)
    assert (r.pa, r.tlb) == (0x8004, "walk")
    assert mmu.counters["invlpg"] == 1


def test_stale_translation_of_an_unmapped_page():
    m, mmu = setup()
    where(mmu, X)
    m.pt.unmap(X)
    assert where(mmu, X) == "L1"
    mmu.invlpg(X + 0x123)  # any address inside the page
    r = mmu.access(X, "read", 3)
    assert (r.outcome, r.error_code) == (PF, 0x4)


def test_invlpg_drops_other_pages_nothing():
    m, mmu = setup()
    where(mmu, X)
    where(mmu, Y)
    mmu.invlpg(X)
    assert where(mmu, Y) == "L1"
    assert where(mmu, X) == "walk"


@pytest.mark.parametrize("alias", [0xF000_0000_0040_0000, 0x0000_8000_0040_0000,
                                   0x8000_0000_0040_0000])
def test_invlpg_non_canonical_is_a_nop(alias):
    # SDM INVLPG: "If the memory operand is a non-canonical address, INVLPG is a NOP" (no #GP).
    # 0xF000_0000_0040_0000 differs from X only in bits 63:60.
    m, mmu = setup()
    where(mmu, X)
    r = mmu.invlpg(alias)
    assert r.outcome == OK
    assert mmu.counters["general_protection"] == 0
    assert where(mmu, X) == "L1"


def test_invlpg_drops_global_entries_too():
    # INVLPG invalidates the page's global entries whatever their PCID (SDM 4.10.4.1)
    m, mmu = setup(pcid=1, pcide=True)
    where(mmu, G)
    mmu.invlpg(G)
    assert where(mmu, G) == "walk"


def test_invlpg_only_affects_the_current_pcid():
    # INVLPG invalidates entries "associated with the current PCID": the reason Linux PTI
    # flushes the user PCID separately (invalidate_user_asid / INVPCID, arch/x86/mm/tlb.c)
    m, mmu = setup(pcid=1, pcide=True)
    where(mmu, X)
    mmu.mov_cr3(m.pt.cr3(2), noflush=True)
    where(mmu, X)
    mmu.mov_cr3(m.pt.cr3(1), noflush=True)
    mmu.invlpg(X)
    assert cached(mmu) >= {(X, 2)} and (X, 1) not in cached(mmu)


def test_invlpg_inside_a_2m_page_drops_it():
    m, mmu = setup()
    m.pt.map(1 << 39, 1 << 32, size=2 << 20)
    where(mmu, 1 << 39)
    mmu.invlpg((1 << 39) + 0x15_0000)
    assert where(mmu, 1 << 39) == "walk"


# --- #PF drops the entry; spurious faults (SDM 4.10.4.1, 4.10.4.3) -------------------------
@pytest.mark.parametrize("dirty", [False, True], ids=["D=0", "D=1"])
def test_page_fault_drops_stale_read_only_entry(dirty):
    """Make a read-only page writable in memory without INVLPG: the CPU may still use the
    cached read-only rights, so the first write takes a spurious #PF (SDM 4.10.4.3); the
    #PF invalidates the entry (SDM 4.10.4.1) and the retried write walks and succeeds.
    Linux relies on this: it does not flush after upgrading a PTE (spurious_kernel_fault)."""
    flags = b.PAGE_READONLY | (b.PAGE_DIRTY if dirty else 0)
    m, mmu = setup(user_flags=flags)
    assert where(mmu, X) == "walk"
    m.pt.protect(X, set_bits=b.PAGE_RW)  # R/W 0 -> 1, no invalidation
    first = mmu.access(X, "write", 3)
    assert (first.outcome, first.error_code) == (PF, 0x7), str(first)
    assert X not in {va for va, _ in cached(mmu)}
    second = mmu.access(X, "write", 3)
    assert (second.outcome, second.tlb, second.pa) == (OK, "walk", USER_PA)


def test_page_fault_from_tlb_hit_for_rights_the_walk_would_also_deny():
    # a cached supervisor-only translation refuses user mode straight from the TLB
    m, mmu = setup()
    where(mmu, G)  # filled by a supervisor read
    r = mmu.access(G, "read", 3)
    assert (r.outcome, r.error_code) == (PF, 0x5)
    assert mmu.counters["page_faults"] == 1
    assert G not in {va for va, _ in cached(mmu)}  # the #PF dropped the entry


def test_faulting_walk_caches_nothing():
    m, mmu = setup()
    for _ in range(2):
        r = mmu.access(0x7000_0000, "read", 3)
        assert (r.outcome, r.tlb) == (PF, "walk")
    assert mmu.tlb_entries() == []


# --- MOV to CR3 (SDM 4.10.4.1) ---------------------------------------------------------------
def test_mov_cr3_pcide0_flushes_non_global_keeps_global():
    m, mmu = setup(pge=True)
    where(mmu, X)
    where(mmu, G)
    r = mmu.mov_cr3(m.pt.cr3())
    assert r.outcome == OK and mmu.counters["cr3_writes"] == 1
    assert where(mmu, G) == "L1"  # global (G=1 in the PTE and CR4.PGE=1) survives
    assert where(mmu, X) == "walk"


def test_mov_cr3_pcide0_without_pge_flushes_g_pages_too():
    m, mmu = setup(pge=False)
    where(mmu, G)
    assert cached(mmu) == {(G, 0)}  # G is ignored while CR4.PGE=0
    mmu.mov_cr3(m.pt.cr3())
    assert where(mmu, G) == "walk"


def test_mov_cr3_switches_tables():
    m, mmu = setup()
    pt2 = PageTables(m.mem, m.alloc)  # a second tree in the same memory
    pt2.map(X, 0x77000)
    where(mmu, X)
    mmu.mov_cr3(pt2.cr3())
    assert mmu.regs.cr3 == pt2.cr3()
    r = mmu.access(X, "read", 3)
    assert (r.pa, r.tlb) == (0x77000, "walk")


def test_pcid_entries_are_per_pcid_and_noflush_keeps_them():
    m, mmu = setup(pcid=1, pcide=True)
    assert where(mmu, X) == "walk"
    mmu.mov_cr3(m.pt.cr3(2), noflush=True)
    assert mmu.regs.pcid == 2
    assert where(mmu, X) == "walk"  # PCID 1's entry is not used for PCID 2
    assert where(mmu, X) == "L1"
    mmu.mov_cr3(m.pt.cr3(1), noflush=True)
    assert where(mmu, X) == "L1"  # PCID 1's entry survived the round trip A -> B -> A
    assert cached(mmu) >= {(X, 1), (X, 2)}


def test_mov_cr3_without_noflush_flushes_only_the_new_pcid():
    m, mmu = setup(pcid=1, pcide=True)
    where(mmu, X)
    where(mmu, G)
    mmu.mov_cr3(m.pt.cr3(2), noflush=True)
    where(mmu, X)
    mmu.mov_cr3(m.pt.cr3(1))  # bit 63 clear: flush PCID 1's non-global entries
    assert cached(mmu) == {(X, 2), (G, "G")}
    assert where(mmu, X) == "walk"
    assert where(mmu, G) == "L1"  # globals are not flushed
    mmu.mov_cr3(m.pt.cr3(2), noflush=True)
    assert where(mmu, X) == "L1"  # PCID 2 untouched


def test_global_entry_matches_every_pcid():
    m, mmu = setup(pcid=1, pcide=True)
    where(mmu, G)
    mmu.mov_cr3(m.pt.cr3(9), noflush=True)
    assert where(mmu, G) == "L1"


def test_noflush_bit_is_not_stored_in_cr3():
    m, mmu = setup(pcid=1, pcide=True)
    mmu.mov_cr3(m.pt.cr3(3), noflush=True)
    assert mmu.regs.cr3 == m.pt.cr3(3)


def test_cr3_bit_63_with_pcide0_is_gp_and_changes_nothing():
    m, mmu = setup(pcide=False)
    where(mmu, X)
    cr3 = mmu.regs.cr3
    r = mmu.mov_cr3(m.pt.cr3(), noflush=True)
    assert r.outcome == GP
    assert mmu.regs.cr3 == cr3
    c = mmu.counters
    assert (c["general_protection"], c["cr3_writes"], c["flushes"]) == (1, 0, 0)
    assert where(mmu, X) == "L1"


def test_cr3_reserved_bits_gp():
    m = machine(maxphyaddr=40)
    m.pt.map(X, USER_PA)
    mmu = MMU(m.mem, m.regs())
    where(mmu, X)
    r = mmu.mov_cr3((1 << 45) | m.pt.cr3())
    assert r.outcome == GP and mmu.regs.cr3 == m.pt.cr3()
    assert where(mmu, X) == "L1"


# --- INVPCID (SDM Vol. 2 INVPCID; Linux invpcid.h) ------------------------------------------
def invpcid_setup():
    """PCIDE=1, current PCID 1; cached: X and Y in PCID 1, X in PCID 2, global G."""
    m, mmu = setup(pcid=1, pcide=True)
    where(mmu, X)
    where(mmu, Y)
    where(mmu, G)
    mmu.mov_cr3(m.pt.cr3(2), noflush=True)
    where(mmu, X)
    mmu.mov_cr3(m.pt.cr3(1), noflush=True)
    assert cached(mmu) == {(X, 1), (Y, 1), (X, 2), (G, "G")}
    return m, mmu


@pytest.mark.parametrize("args, left", [
    # type 0 INVPCID_TYPE_INDIV_ADDR: one address in one PCID, never globals
    ((0, 1, X), {(Y, 1), (X, 2), (G, "G")}),
    ((0, 2, X), {(X, 1), (Y, 1), (G, "G")}),  # another PCID than the current one
    ((0, 1, G), {(X, 1), (Y, 1), (X, 2), (G, "G")}),
    # type 1 INVPCID_TYPE_SINGLE_CTXT: all non-global entries of one PCID
    ((1, 1, 0), {(X, 2), (G, "G")}),
    ((1, 2, 0), {(X, 1), (Y, 1), (G, "G")}),
    # type 2 INVPCID_TYPE_ALL_INCL_GLOBAL
    ((2, 0, 0), set()),
    # type 3 INVPCID_TYPE_ALL_NON_GLOBAL
    ((3, 0, 0), {(G, "G")}),
])
def test_invpcid_types(args, left):
    m, mmu = invpcid_setup()
    r = mmu.invpcid(*args)
    assert r.outcome == OK
    assert cached(mmu) == left
    assert mmu.counters["invpcid"] == 1
    # and the accesses agree with the listing
    assert where(mmu, G) == ("L1" if (G, "G") in left else "walk")
    assert where(mmu, Y) == ("L1" if (Y, 1) in left else "walk")


def test_invpcid_type0_non_canonical_is_gp():
    m, mmu = invpcid_setup()
    r = mmu.invpcid(0, 1, 0x0000_8000_0000_0000)
    assert r.outcome == GP
    assert cached(mmu) == {(X, 1), (Y, 1), (X, 2), (G, "G")}


@pytest.mark.parametrize("kind", [0, 1])
def test_invpcid_nonzero_pcid_with_pcide0_is_gp(kind):
    # SDM INVPCID: #GP(0) if CR4.PCIDE=0, type 0 or 1 and the descriptor's PCID is not 0
    m, mmu = setup(pcide=False)
    where(mmu, X)
    r = mmu.invpcid(kind, 5, X)
    assert r.outcome == GP
    assert where(mmu, X) == "L1"


def test_invpcid_with_pcide0_on_pcid_0_works():
    m, mmu = setup(pcide=False)
    where(mmu, X)
    where(mmu, G)
    assert mmu.invpcid(1, 0).outcome == OK
    assert where(mmu, X) == "walk" and where(mmu, G) == "L1"
    assert mmu.invpcid(2, 7).outcome == OK  # types 2 and 3 ignore the descriptor's PCID
    assert where(mmu, G) == "walk"


# --- MOV to CR4 (SDM 4.10.4.1; Linux __native_flush_tlb_global toggles PGE) ------------------
def test_toggling_cr4_pge_flushes_globals():
    m, mmu = setup(pge=True)
    where(mmu, G)
    where(mmu, X)
    cr4 = mmu.regs.cr4
    assert mmu.mov_cr4(cr4 & ~b.X86_CR4_PGE).outcome == OK
    assert mmu.tlb_entries() == []
    assert where(mmu, G) == "walk"
    assert cached(mmu) == {(G, 0)}  # with PGE=0 the refill is not global
    assert mmu.mov_cr4(cr4).outcome == OK  # PGE 0 -> 1 flushes everything too
    assert mmu.tlb_entries() == []


def test_clearing_pcide_flushes_everything():
    m, mmu = setup(pcid=0, pcide=True)
    where(mmu, G)
    where(mmu, X)
    assert mmu.mov_cr4(mmu.regs.cr4 & ~b.X86_CR4_PCIDE).outcome == OK
    assert mmu.tlb_entries() == []
    assert mmu.regs.pcid == 0


def test_setting_smep_flushes_current_pcid():
    m, mmu = setup()
    where(mmu, X)
    assert mmu.mov_cr4(mmu.regs.cr4 | b.X86_CR4_SMEP).outcome == OK
    assert where(mmu, X) == "walk"


def test_setting_pcide_with_nonzero_cr3_low_bits_is_gp():
    m, mmu = setup(pcide=False)
    mmu.mov_cr3(m.pt.cr3() | b.X86_CR3_PWT)
    cr4 = mmu.regs.cr4
    r = mmu.mov_cr4(cr4 | b.X86_CR4_PCIDE)
    assert r.outcome == GP and mmu.regs.cr4 == cr4
    mmu.mov_cr3(m.pt.cr3())
    assert mmu.mov_cr4(cr4 | b.X86_CR4_PCIDE).outcome == OK
    assert mmu.regs.pcide


@pytest.mark.parametrize("levels", [4, 5])
def test_changing_la57_is_gp(levels):
    m = machine(levels)
    mmu = MMU(m.mem, m.regs())
    cr4 = mmu.regs.cr4
    r = mmu.mov_cr4(cr4 ^ b.X86_CR4_LA57)
    assert r.outcome == GP and mmu.regs.cr4 == cr4 and mmu.regs.levels == levels


def test_clearing_pae_is_gp():
    m, mmu = setup()
    cr4 = mmu.regs.cr4
    assert mmu.mov_cr4(cr4 & ~b.X86_CR4_PAE).outcome == GP
    assert mmu.regs.cr4 == cr4


# --- rights are checked against current registers on every hit ------------------------------
def test_wrpkru_applies_to_cached_translations():
    # PKRU is not part of a TLB entry (SDM 4.6.2): WRPKRU needs no flush
    m = machine()
    m.pt.map(X, USER_PA, flags=b.PAGE_SHARED | 3 << b.PKEY_SHIFT)
    mmu = MMU(m.mem, m.regs(pke=True))
    assert where(mmu, X) == "walk"
    mmu.wrpkru(1 << 6)  # AD for key 3
    r = mmu.access(X, "read", 3)
    assert (r.outcome, r.error_code) == (PF, 0x25)
    mmu.wrpkru(0)
    assert mmu.access(X, "read", 3).outcome == OK


def test_mov_cr0_wp_applies_to_cached_translations():
    m = machine()
    m.pt.map(G, KERNEL_PA, flags=b.PAGE_KERNEL_RO)
    mmu = MMU(m.mem, m.regs(wp=True))
    where(mmu, G)
    r = mmu.access(G, "write", 0)
    assert (r.outcome, r.error_code) == (PF, 0x3)
    where(mmu, G)
    assert mmu.mov_cr0(mmu.regs.cr0 & ~b.X86_CR0_WP).outcome == OK
    assert mmu.access(G, "write", 0).outcome == OK


def test_smap_checked_on_tlb_hits():
    m, mmu = setup(smap=True)
    assert where(mmu, X, cpl=0, ac=True) == "walk"
    r = mmu.access(X, "read", 0, ac=False)
    assert (r.outcome, r.error_code, r.tlb) == (PF, 0x1, "L1")


def test_mov_cr0_clearing_pg_is_gp():
    m, mmu = setup()
    cr0 = mmu.regs.cr0
    assert mmu.mov_cr0(cr0 & ~b.X86_CR0_PG).outcome == GP
    assert mmu.regs.cr0 == cr0


# --- geometry: L1, L2, LRU -------------------------------------------------------------------
def many_pages(m, n):
    m.pt.map_range(0x10_0000_0000, 0x100_0000, n, flags=b.PAGE_SHARED)
    return [0x10_0000_0000 + i * 4096 for i in range(n)]


def test_l2_hit_after_l1_eviction_small_tlb():
    m = machine()
    pages = many_pages(m, 8)
    mmu = MMU(m.mem, m.regs(), tlb=TLBConfig(l1_entries=4, l1_ways=4, l2_entries=16, l2_ways=4))
    for va in pages[:6]:  # more than L1 holds (4), fewer than L2 (16)
        assert where(mmu, va) == "walk"
    assert where(mmu, pages[0]) == "L2"
    assert where(mmu, pages[0]) == "L1"  # copied into L1 by the L2 hit
    assert mmu.counters["l2_hits"] == 1


def test_l2_hit_after_l1_eviction_default_tlb():
    m = machine()
    pages = many_pages(m, 200)  # > 64 L1 entries, < 1536 L2 entries
    mmu = MMU(m.mem, m.regs())
    res = mmu.run(Trace.accesses(pages + pages, "read", cpl=3))
    assert list(res.where[:200]) == [0] * 200
    assert list(res.where[200:]) == [2] * 200
    assert res.counters["l2_hits"] == 200 and res.counters["walks"] == 200
    assert (res.pa[200:] == res.pa[:200]).all()


def test_lru_eviction_order_tiny_tlb():
    """L1: one set of 2 ways; L2: one set of 4 ways; the victim is a free way, else the
    least recently used one (an L2 hit refills L1; L1 hits do not touch L2)."""
    m = machine()
    A, B, C, D, E = many_pages(m, 5)
    mmu = MMU(m.mem, m.regs(), tlb=TLBConfig(l1_entries=2, l1_ways=2, l2_entries=4, l2_ways=4))
    seq = [A, B, A, C, A, B, C, D, E, A, B, D]
    expected = ["walk", "walk", "L1", "walk", "L1", "L2", "L2",
                "walk", "walk", "walk", "walk", "L2"]
    assert [where(mmu, va) for va in seq] == expected
    c = mmu.counters
    assert (c["walks"], c["l1_hits"], c["l2_hits"]) == (7, 2, 3)


def test_set_index_uses_vpn_low_bits():
    # L1 with 2 sets x 1 way: pages 0 and 2 share set 0, page 1 sits in set 1
    m = machine()
    p = many_pages(m, 3)
    mmu = MMU(m.mem, m.regs(), tlb=TLBConfig(l1_entries=2, l1_ways=1, l2_entries=2, l2_ways=1))
    assert [where(mmu, va) for va in (p[0], p[1], p[1], p[0], p[2], p[1], p[0])] == [
        "walk", "walk", "L1", "L1", "walk", "L1", "walk"]


# --- A/D through the TLB ----------------------------------------------------------------------
def test_dirty_assist_on_write_after_read():
    # a write through an entry cached with D=0 must set D in memory (SDM 4.8)
    m, mmu = setup()  # PAGE_SHARED: D=0
    assert where(mmu, X) == "walk"
    assert not m.pt.leaf(X).value & b.PAGE_DIRTY
    r = mmu.access(X, "write", 3)
    assert r.outcome == OK and r.pa == USER_PA
    assert m.pt.leaf(X).value & b.PAGE_DIRTY
    assert mmu.counters["dirty_assists"] == 1
    assert where(mmu, X, "write") == "L1"  # now cached with D=1: no more assists
    assert mmu.counters["dirty_assists"] == 1
    assert [e["dirty"] for e in mmu.tlb_entries() if e["va"] == X] != []
    assert all(e["dirty"] for e in mmu.tlb_entries() if e["va"] == X)


def test_write_first_caches_dirty_entry():
    m, mmu = setup()
    assert where(mmu, X, "write") == "walk"
    assert where(mmu, X, "write") == "L1"
    assert mmu.counters["dirty_assists"] == 0


def test_tlb_hit_sets_no_accessed_bit():
    # A is set by walks; after software clears it a cached entry does not set it again
    # until invalidated (SDM 4.8)
    m, mmu = setup()
    where(mmu, X)
    m.pt.protect(X, clear_bits=b.PAGE_ACCESSED)
    where(mmu, X)
    assert not m.pt.leaf(X).value & b.PAGE_ACCESSED
    mmu.invlpg(X)
    where(mmu, X)
    assert m.pt.leaf(X).value & b.PAGE_ACCESSED


# --- huge pages and tlb_entries() ------------------------------------------------------------
@pytest.mark.parametrize("size", [2 << 20, 1 << 30])
def test_huge_page_cached_once(size):
    m = machine()
    va = 1 << 39
    m.pt.map(va, 1 << 32, size=size)
    mmu = MMU(m.mem, m.regs())
    r1 = mmu.access(va + 0x1000, "read", 3)
    r2 = mmu.access(va + size - 0x1000 + 8, "read", 3)  # another 4 KiB page of the same page
    assert (r1.tlb, r2.tlb) == ("walk", "L1")
    assert r2.pa == (1 << 32) + size - 0x1000 + 8 and r2.page_size == size
    entries = mmu.tlb_entries()
    assert {e["page_size"] for e in entries} == {size}
    assert {e["va"] for e in entries} == {va} and {e["pa"] for e in entries} == {1 << 32}


def test_tlb_entries_decode():
    m = machine()
    m.pt.map(X, USER_PA, flags=b.PAGE_SHARED | 9 << b.PKEY_SHIFT)
    m.pt.map(G, 1 << 30, size=2 << 20, flags=b.PAGE_KERNEL)
    mmu = MMU(m.mem, m.regs(cr3=m.pt.cr3(5), pcide=True, pke=True))
    mmu.access(X, "read", 3)
    mmu.access(G + 0x1234, "write", 0)
    entries = mmu.tlb_entries()
    assert {e["level"] for e in entries} == {"L1", "L2"}
    user = [e for e in entries if e["va"] == X]
    kern = [e for e in entries if e["va"] == G]
    assert len(user) == len(kern) == 2  # one in each level
    u, k = user[0], kern[0]
    assert {key: u[key] for key in ("page_size", "pcid", "global", "pa", "user", "writable",
                                    "nx", "dirty", "pkey")} == {
        "page_size": 4096, "pcid": 5, "global": False, "pa": USER_PA, "user": True,
        "writable": True, "nx": True, "dirty": False, "pkey": 9}
    assert {key: k[key] for key in ("page_size", "pcid", "global", "pa", "user", "writable",
                                    "nx", "dirty", "pkey")} == {
        "page_size": 2 << 20, "pcid": None, "global": True, "pa": 1 << 30, "user": False,
        "writable": True, "nx": True, "dirty": True, "pkey": 0}
    assert k["va"] == 0xFFFF_8880_0000_0000  # sign-extended back to a canonical address


def test_tlb_entries_5_level_kernel_address():
    m = machine(5)
    va = 0xFF11_0000_0000_0000
    m.pt.map(va, 0x3000, flags=b.PAGE_KERNEL)
    mmu = MMU(m.mem, m.regs())
    where(mmu, va)
    assert {e["va"] for e in mmu.tlb_entries()} == {va}


# --- trace API -------------------------------------------------------------------------------
def test_trace_builder_and_stop_on_fault():
    m, mmu = setup()
    tb = TraceBuilder().read(X).write(X).read(0x7000_0000).read(Y)
    res = mmu.run(tb.build(), stop_on_fault=True)
    assert len(res) == 3
    assert [res[i].outcome for i in range(3)] == [OK, OK, PF]
    assert res[2].error_code == 0x4 and res[2].pa is None
    assert res.counters["accesses"] == 3
    with pytest.raises(IndexError):
        res[3]


def test_run_without_record_keeps_counters():
    m, mmu = setup()
    res = mmu.run(Trace.accesses([X, X, Y], "read", cpl=3), record=False)
    assert res.counters["l1_hits"] == 1 and res.counters["walks"] == 2
    with pytest.raises(KaiserEduError, match="record=False"):
        res[0]


def test_tlb_config_and_trace_refusals():
    with pytest.raises(KaiserEduError, match=r"l1: 48 entries / 4 ways must give a power-of-two number of sets"):
        TLBConfig(l1_entries=48, l1_ways=4)
    with pytest.raises(KaiserEduError, match="l2_entries and l2_ways must be positive integers"):
        TLBConfig(l2_ways=0)
    with pytest.raises(KaiserEduError, match=r"INVPCID type must be 0-3"):
        TraceBuilder().invpcid(4)
    with pytest.raises(KaiserEduError, match=r"pcid must be in 0..4095; got 4096"):
        TraceBuilder().invpcid(1, 4096)
    with pytest.raises(KaiserEduError, match=r"PKRU is 32 bits"):
        TraceBuilder().wrpkru(1 << 32)
    with pytest.raises(KaiserEduError, match=r"does not fit in 64 bits"):
        TraceBuilder().read(1 << 64)
    with pytest.raises(KaiserEduError, match="trace columns differ in length"):
        Trace([0, 0], [0], [0, 0])


# --- property: while software changes no table, the TLB is invisible -------------------------
_SIZES = [4096, 4096, 2 << 20, 1 << 30]
_TLBS = [TLBConfig(2, 2, 4, 4), TLBConfig(4, 1, 8, 2), TLBConfig()]


@st.composite
def tlb_program(draw):
    n = draw(st.integers(1, 5))
    pages = []
    for _ in range(n):
        flags = b.PAGE_PRESENT
        for bit in (b.PAGE_RW, b.PAGE_USER, b.PAGE_NX, b.PAGE_GLOBAL, b.PAGE_DIRTY,
                    b.PAGE_ACCESSED):
            if draw(st.booleans()):
                flags |= bit
        flags |= draw(st.integers(0, 3)) << b.PKEY_SHIFT
        pages.append((draw(st.sampled_from(_SIZES)), flags))
    page = st.integers(0, n - 1)
    op = st.one_of(
        st.tuples(st.just("access"), page, st.integers(0, (1 << 30) - 1),
                  st.sampled_from(["read", "write", "fetch"]), st.sampled_from([0, 3]),
                  st.booleans()),
        st.tuples(st.just("wrpkru"), st.integers(0, 0xFF)),
        st.tuples(st.just("wp"), st.booleans()),
        st.tuples(st.just("cr4"), st.sampled_from([b.X86_CR4_SMEP, b.X86_CR4_SMAP,
                                                   b.X86_CR4_PKE, b.X86_CR4_PGE])),
        st.tuples(st.just("cr3"), st.integers(0, 2), st.booleans()),
        st.tuples(st.just("invlpg"), page),
        st.tuples(st.just("invpcid"), st.integers(0, 3), st.integers(0, 2), page),
    )
    ops = draw(st.lists(op, min_size=1, max_size=40))
    return pages, ops, draw(st.sampled_from(_TLBS)), draw(st.booleans())


@pytest.mark.property
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tlb_program())
def test_tlb_is_invisible_while_tables_do_not_change(program):
    """SDM 4.10: the TLB may only show when software changes a paging-structure entry
    without invalidating it. Without such changes every access must give what the
    reference walk gives, whatever the TLB geometry and the invalidations in between."""
    pages, ops, tlb, pcide = program
    m = machine()
    vas = []
    for i, (size, flags) in enumerate(pages):
        va = (i + 1) << 30
        m.pt.map(va, (i + 8) << 30, size=size, flags=flags)
        vas.append((va, size))
    ref_mem = copy.deepcopy(m.mem)
    regs = m.regs(pcide=pcide)
    mmu = MMU(m.mem, regs, tlb=tlb)
    for op in ops:
        if op[0] == "access":
            _, i, off, kind, cpl, ac = op
            va = vas[i][0] + off % vas[i][1]
            got = mmu.access(va, kind, cpl, ac)
            want = walk(ref_mem, regs, va, kind, cpl, ac)
            assert (got.outcome, got.error_code if got.outcome == PF else None, got.pa) == (
                want.outcome, want.error_code, want.pa), f"{op}: {got} vs {want.summary()}"
        elif op[0] == "wrpkru":
            assert mmu.wrpkru(op[1]).outcome == OK
            regs = dataclasses.replace(regs, pkru=op[1])
        elif op[0] == "wp":
            cr0 = regs.cr0 | b.X86_CR0_WP if op[1] else regs.cr0 & ~b.X86_CR0_WP
            assert mmu.mov_cr0(cr0).outcome == OK
            regs = dataclasses.replace(regs, cr0=cr0)
        elif op[0] == "cr4":
            cr4 = regs.cr4 ^ op[1]
            assert mmu.mov_cr4(cr4).outcome == OK
            regs = dataclasses.replace(regs, cr4=cr4)
        elif op[0] == "cr3":
            _, pcid, noflush = op
            value = m.pt.cr3(pcid if pcide else 0)
            assert mmu.mov_cr3(value, noflush and pcide).outcome == OK
            regs = regs.with_cr3(value)
        elif op[0] == "invlpg":
            assert mmu.invlpg(vas[op[1]][0]).outcome == OK
        else:
            _, kind, pcid, i = op
            assert mmu.invpcid(kind, pcid if pcide else 0, vas[i][0]).outcome == OK
        assert mmu.regs == regs
