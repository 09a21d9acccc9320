"""Property tests: the numba MMU against the readable specifications.

* (a) with no TLB, the numba engine agrees with :func:`kaiser_edu.hw.walk.walk` access by
  access (outcome, #PF error code, physical address, page size) and leaves the same A/D
  bits in memory;
* (b) a TLB changes no result while the tables do not change;
* (c) the numba engine equals :class:`kaiser_edu.hw.tlb.ReferenceMMU` op by op, counter by
  counter, in its registers, its TLB contents and the memory it leaves, on random traces
  that mix accesses with management ops and with page-table edits between runs, and on
  context-switch-heavy traces over address spaces that map the same addresses
  differently (several cached entries for one address);
* (d) the invalidation rules of SDM 4.10.4.1, stated on their own: a translation cached
  before its leaf entry changed is used until an instruction (or a #PF) that covers it.

Machines are built twice from one drawn description (tests/strategies.py), one copy per
engine. ``KAISER_HYPOTHESIS_PROFILE=quick`` (tests/conftest.py) runs 15 examples each
(60 for the cheap aliased-address-space test, which runs four times the profile's count).
A failure prints the machine (every qword in hex) and the trace as TraceBuilder-like calls.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import (
    PCIDS,
    Change,
    Machine,
    Row,
    aliased_machines,
    changes,
    clone_mem,
    machines,
    switching_traces,
    to_trace,
    traces,
)

from kaiser_edu.hw import bits as b
from kaiser_edu.hw.address import canonicalize, va_bits
from kaiser_edu.hw.mmu import MMU, OPS, TLBConfig, TraceBuilder, TraceResult
from kaiser_edu.hw.pgtable import PageTables
from kaiser_edu.hw.physmem import FrameAllocator, PhysMem
from kaiser_edu.hw.regs import Registers
from kaiser_edu.hw.tlb import ReferenceMMU
from kaiser_edu.hw.walk import walk

pytestmark = pytest.mark.property

SIZE_CODE = {b.PAGE_SIZE: 0, b.PMD_SIZE: 1, b.PUD_SIZE: 2}
TLB_CONFIGS = st.sampled_from(
    [TLBConfig(8, 2, 32, 4), TLBConfig(), TLBConfig(1, 1, 4, 2), TLBConfig(2, 1, 8, 2),
     TLBConfig(4, 4, 8, 8)]
)


def op_result(r: TraceResult, i: int) -> dict[str, int]:
    """One op's row of the per-op arrays."""
    return {
        "outcome": int(r.outcome[i]),
        "error_code": int(r.error_code[i]),
        "pa": int(r.pa[i]),
        "size_code": int(r.size_code[i]),
        "where": int(r.where[i]),
    }


def assert_same_results(fast: TraceResult, ref: TraceResult, rows: list[Row]) -> None:
    assert fast.n_done == ref.n_done, f"numba ran {fast.n_done} ops, reference {ref.n_done}"
    for i in range(ref.n_done):
        got, want = op_result(fast, i), op_result(ref, i)
        assert got == want, (
            f"op {i} {rows[i]!r}: numba {got}, reference {want}\n"
            f"ops before it: {rows[:i]!r}"
        )
    assert fast.counters == ref.counters, _counter_diff(fast.counters, ref.counters)


def _counter_diff(fast: dict, ref: dict) -> str:
    diff = {k: (fast[k], ref[k]) for k in ref if fast[k] != ref[k]}
    return f"counters differ (numba, reference): {diff}"


def tlb_contents(mmu: MMU | ReferenceMMU) -> list[dict]:
    """Valid entries in TLB order, without the LRU age (the kernel skips refreshing an
    entry that is already its set's most recently used, which changes no eviction)."""
    return [{k: v for k, v in e.items() if k != "last_use"} for e in mmu.tlb_entries()]


def walk_args(row: Row) -> tuple[int, str, int, bool]:
    return row.addr, b.ACCESS_NAMES[row.op], row.arg & 3, bool(row.arg & 4)


# --- (a) no TLB: the engine is the reference walk --------------------------------------------
@given(m=machines(), data=st.data())
def test_engine_without_tlb_matches_walk(m: Machine, data: st.DataObject) -> None:
    rows = data.draw(traces(m, manage_percent=0), label="trace")
    fast_mem, ref_mem = m.build(), m.build()
    result = MMU(fast_mem, m.regs, tlb=None).run(to_trace(rows))
    totals = dict.fromkeys(("walks", "walk_reads", "ad_writes", "page_faults", "gp"), 0)
    for i, row in enumerate(rows):
        w = walk(ref_mem, m.regs, *walk_args(row))
        want = {
            "outcome": w.outcome,
            "error_code": w.error_code or 0,
            "pa": w.pa or 0,
            "size_code": SIZE_CODE[w.page_size] if w.ok else 0,
            "where": 0,
        }
        got = {k: int(getattr(result, k)[i]) for k in want}
        assert got == want, f"op {i} {row!r}: numba {got}, walk() {want}\n{w}"
        totals["walks"] += w.outcome != b.OUTCOME_GP
        totals["walk_reads"] += len(w.steps)
        totals["ad_writes"] += len(w.ad_updates)
        totals["page_faults"] += w.outcome == b.OUTCOME_PF
        totals["gp"] += w.outcome == b.OUTCOME_GP
    assert fast_mem.nonzero_qwords() == ref_mem.nonzero_qwords()
    c = result.counters
    got = {k: c["general_protection" if k == "gp" else k] for k in totals}
    assert got == totals, f"counters (numba) {got} != (walk) {totals}"
    assert c["accesses"] == c["ops"] == len(rows)
    assert c["l1_hits"] == c["l2_hits"] == c["dirty_assists"] == 0


# --- (b) a TLB does not change results while the tables stay the same ------------------------
@given(m=machines(), cfg=TLB_CONFIGS, data=st.data())
def test_tlb_is_invisible_while_tables_do_not_change(
    m: Machine, cfg: TLBConfig, data: st.DataObject
) -> None:
    """Same outcome, error code and address with and without a TLB, and the same final
    A/D bits: every hit is on an entry made by a successful walk of the same address
    through the same tables, which already set the A bits (and D, or the write takes the
    dirty assist and walks); the walks a hit saves would have changed nothing."""
    rows = data.draw(traces(m, manage_percent=0), label="trace")
    off_mem, on_mem = m.build(), m.build()
    off = MMU(off_mem, m.regs, tlb=None).run(to_trace(rows))
    on = MMU(on_mem, m.regs, tlb=cfg).run(to_trace(rows))
    for i, row in enumerate(rows):
        got = (int(on.outcome[i]), int(on.error_code[i]), int(on.pa[i]))
        want = (int(off.outcome[i]), int(off.error_code[i]), int(off.pa[i]))
        assert got == want, f"op {i} {row!r}: TLB on {got}, TLB off {want}"
    assert on_mem.nonzero_qwords() == off_mem.nonzero_qwords()
    # every canonical access is a hit, a hit that faults, or a walk (a dirty assist turns a
    # hit into a walk)
    hits = on.counters["l1_hits"] + on.counters["l2_hits"]
    faulting_hits = int(((on.outcome == b.OUTCOME_PF) & (on.where != 0)).sum())
    assert on.counters["walks"] + hits + faulting_hits == off.counters["walks"]


@given(m=machines(), cfg=TLB_CONFIGS, data=st.data())
def test_fault_size_code_does_not_depend_on_tlb(
    m: Machine, cfg: TLBConfig, data: st.DataObject
) -> None:
    """A faulting access has no page size: the per-op size code must not tell whether the
    fault came from a walk or from a TLB entry's cached rights."""
    rows = data.draw(traces(m, manage_percent=0), label="trace")
    off = MMU(m.build(), m.regs, tlb=None).run(to_trace(rows))
    on = MMU(m.build(), m.regs, tlb=cfg).run(to_trace(rows))
    for i, row in enumerate(rows):
        assert int(on.size_code[i]) == int(off.size_code[i]), (
            f"op {i} {row!r} (outcome {int(on.outcome[i])}, where {int(on.where[i])}): "
            f"size code {int(on.size_code[i])} with the TLB, {int(off.size_code[i])} without"
        )


# --- (c) the numba MMU is the reference MMU ---------------------------------------------------
def check_against_reference(m: Machine, cfg: TLBConfig | None, data: st.DataObject,
                            trace_strategy=None) -> None:
    """Run 1-3 random traces on both engines, with random page-table edits between them;
    after each, compare every per-op result, every counter, the registers, the TLB
    contents and the memory."""
    fast_mem, ref_mem = m.build(), m.build()
    fast, ref = MMU(fast_mem, m.regs, tlb=cfg), ReferenceMMU(ref_mem, m.regs, tlb=cfg)
    n_segments = data.draw(st.integers(1, 3), label="segments")
    history: list = []
    for _ in range(n_segments):
        rows = data.draw((trace_strategy or traces)(m, max_ops=40), label="trace")
        stop = data.draw(st.booleans(), label="stop_on_fault")
        trace = to_trace(rows)
        r_fast, r_ref = fast.run(trace, stop_on_fault=stop), ref.run(trace, stop_on_fault=stop)
        history.append(rows)
        assert_same_results(r_fast, r_ref, rows)
        assert fast.regs == ref.regs
        assert fast.counters == ref.counters
        assert tlb_contents(fast) == tlb_contents(ref), f"TLBs differ after {history!r}"
        assert fast_mem.nonzero_qwords() == ref_mem.nonzero_qwords()
        # software edits the tables without telling the TLB: stale entries must behave
        # the same in both
        edits = data.draw(changes(m), label="changes")
        for change in edits:
            change.apply(fast_mem)
            change.apply(ref_mem)
        history.append(edits)


@given(m=machines(), cfg=st.one_of(st.none(), TLB_CONFIGS), data=st.data())
def test_engine_matches_reference_mmu(
    m: Machine, cfg: TLBConfig | None, data: st.DataObject
) -> None:
    check_against_reference(m, cfg, data)


@settings(max_examples=4 * settings.default.max_examples)  # cheap, and the bugs are rare
@given(m=aliased_machines(), cfg=st.sampled_from(
    [TLBConfig(8, 2, 32, 4), TLBConfig(4, 4, 8, 8), TLBConfig(2, 2, 8, 4), TLBConfig()]),
    data=st.data())
def test_engine_matches_reference_mmu_on_aliased_address_spaces(
    m: Machine, cfg: TLBConfig, data: st.DataObject
) -> None:
    """Several address spaces map the same addresses differently (page sizes, frames,
    global or not), and traces switch between them with PCIDs: several cached entries
    can translate one address, and both engines must pick the same one."""
    check_against_reference(m, cfg, data, switching_traces)


@given(m=machines(), cfg=TLB_CONFIGS, data=st.data())
def test_record_false_keeps_the_same_state(
    m: Machine, cfg: TLBConfig, data: st.DataObject
) -> None:
    """Running without recording changes nothing but the per-op arrays."""
    rows = data.draw(traces(m), label="trace")
    a_mem, b_mem = m.build(), m.build()
    a, bb = MMU(a_mem, m.regs, tlb=cfg), ReferenceMMU(b_mem, m.regs, tlb=cfg)
    ra, rb = a.run(to_trace(rows), record=False), bb.run(to_trace(rows), record=False)
    assert ra.outcome is None and rb.outcome is None
    assert ra.counters == rb.counters
    assert a.regs == bb.regs and tlb_contents(a) == tlb_contents(bb)
    assert a_mem.nonzero_qwords() == b_mem.nonzero_qwords()


# --- (d) invalidation rules ------------------------------------------------------------------
@st.composite
def invalidation_scenarios(draw) -> tuple:
    """One mapped page, cached, then its frame moved in memory, then a few management ops.

    Returns the machine pieces and the ops; ``expect_stale`` is worked out from the rules
    of SDM 4.10.4.1 as the test's own, independent statement of them.
    """
    levels = draw(st.sampled_from([4, 5]))
    size = draw(st.sampled_from([b.PAGE_SIZE, b.PMD_SIZE, b.PUD_SIZE]))
    va = canonicalize(draw(st.integers(0, (1 << va_bits(levels)) - 1)) & ~(size - 1), levels)
    frames = st.integers(1, (1 << 40) // size - 1).map(lambda k: k * size)
    old = draw(frames)
    new = draw(frames.filter(lambda f: f != old))
    pcide, pge, glob = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    pcid = draw(st.sampled_from(PCIDS)) if pcide else 0
    same_page = st.integers(0, size - 1).map(lambda off: va + off)
    other_page = same_page.map(lambda a: a ^ size)  # the neighbouring page
    addr = st.one_of(same_page, other_page)
    op = st.one_of(
        st.tuples(st.just("invlpg"), addr),
        st.tuples(st.just("fetch"), addr),  # a #PF (XD=1) on that page
        st.tuples(st.just("invpcid"), st.integers(0, 3), st.sampled_from(PCIDS), addr),
        st.tuples(st.just("mov_cr3"), st.sampled_from(PCIDS), st.booleans()),
        st.tuples(st.just("toggle_pge")),
        st.tuples(st.just("toggle_smep")),
        st.tuples(st.just("toggle_wp")),
        st.tuples(st.just("wrpkru"), st.integers(0, 2**32 - 1)),
    )
    ops = draw(st.lists(op, max_size=3))
    offset = draw(st.integers(0, size - 1))
    return levels, size, va, old, new, pcide, pge, glob, pcid, ops, offset


def expect_stale(size: int, va: int, pcide: bool, pge: bool, glob: bool, pcid: int,
                 ops: list[tuple]) -> bool:
    """Does the entry cached for ``va`` (PCID ``pcid``) survive ``ops``? [SDM 4.10.4.1]"""
    g = glob and pge  # a global TLB entry
    cur, smep, valid = pcid, False, True

    def same(a: int) -> bool:
        return a & ~(size - 1) == va

    for op in ops:
        name = op[0]
        if name in ("invlpg", "fetch"):  # current PCID and globals, this page
            valid &= not (same(op[1]) and (g or cur == pcid))
        elif name == "invpcid":
            typ, q, a = op[1:]
            if typ <= 1 and not pcide and q != 0:
                continue  # #GP
            if typ == 0:
                valid &= not (not g and q == pcid and same(a))
            elif typ == 1:
                valid &= not (not g and q == pcid)
            elif typ == 2:
                valid = False
            else:
                valid &= g
        elif name == "mov_cr3":
            q, noflush = op[1:]
            if not pcide:
                if not noflush:  # (NOFLUSH with PCIDE=0 is a #GP)
                    valid &= g
            else:
                cur = q
                if not noflush:
                    valid &= not (not g and q == pcid)
        elif name == "toggle_pge":
            valid = False
        elif name == "toggle_smep":
            smep = not smep
            if smep:  # SMEP 0 -> 1: the current PCID
                valid &= not (not g and cur == pcid)
    return valid


@pytest.mark.parametrize("engine", [MMU, ReferenceMMU], ids=["numba", "reference"])
@given(scenario=invalidation_scenarios(),
       cfg=st.sampled_from([TLBConfig(8, 2, 32, 4), TLBConfig()]))
def test_stale_translation_until_invalidated(engine: type, scenario: tuple,
                                            cfg: TLBConfig) -> None:
    levels, size, va, old, new, pcide, pge, glob, pcid, ops, offset = scenario
    mem = PhysMem()
    pt = PageTables(mem, FrameAllocator(mem, ram_bytes=1 << 40), levels=levels)
    flags = b.PAGE_SHARED | b.PAGE_DIRTY | (b.PAGE_GLOBAL if glob else 0)  # user RW, XD
    pt.map(va, old, size, flags)
    regs = Registers.long_mode(cr3=pt.cr3(pcid), levels=levels, pge=pge, pcide=pcide)
    mmu = engine(mem, regs, tlb=cfg)
    assert mmu.run(TraceBuilder().read(va).build()).where[0] == 0  # walk, fill
    leaf = pt.leaf(va)
    mem.write_qword(leaf.pa, leaf.value & ~(b.phys_addr_mask(52) & ~(size - 1)) | new)
    t = TraceBuilder().read(va + offset)  # still the cached translation
    cr0, cr4 = regs.cr0, regs.cr4
    for op in ops:
        name = op[0]
        if name == "invlpg":
            t.invlpg(op[1])
        elif name == "fetch":
            t.fetch(op[1])
        elif name == "invpcid":
            t.invpcid(op[1], op[2], op[3])
        elif name == "mov_cr3":
            t.mov_cr3(pt.pgd_pa | op[1], noflush=op[2])
        elif name == "toggle_pge":
            cr4 ^= b.X86_CR4_PGE
            t.mov_cr4(cr4)
        elif name == "toggle_smep":
            cr4 ^= b.X86_CR4_SMEP
            t.mov_cr4(cr4)
        elif name == "toggle_wp":
            cr0 ^= b.X86_CR0_WP
            t.mov_cr0(cr0)
        else:
            t.wrpkru(op[1])
    if pcide:
        t.mov_cr3(pt.cr3(pcid), noflush=True)  # back to the entry's PCID, keeping the TLB
    t.read(va + offset)
    r = mmu.run(t.build())
    assert r.outcome[0] == b.OUTCOME_OK and int(r.pa[0]) == old + offset, "not cached"
    stale = expect_stale(size, va, pcide, pge, glob, pcid, ops)
    want = (old if stale else new) + offset
    assert r.outcome[-1] == b.OUTCOME_OK
    assert int(r.pa[-1]) == want, (
        f"after {ops}: read gives {int(r.pa[-1]):#x}, expected the "
        f"{'old' if stale else 'new'} frame ({want:#x}); where={int(r.where[-1])}"
    )
    assert (int(r.where[-1]) != 0) == stale


def test_clone_mem_copies_everything() -> None:
    mem = PhysMem(40)
    for pa, v in ((0x1000, 1), (0x2ff8, 1 << 63), (0xFF_FFFF_F000, 0x1234)):
        mem.write_qword(pa, v)
    assert clone_mem(mem).nonzero_qwords() == mem.nonzero_qwords()


# --- the minimal examples the properties found, kept as plain regression tests ---------------
def run_both(m: Machine, cfg: TLBConfig, segments: list[list[Row]],
             edits: list[list] | None = None) -> None:
    """Run ``segments`` on both engines (applying ``edits[i]`` after segment i) and compare."""
    fast_mem, ref_mem = m.build(), m.build()
    fast, ref = MMU(fast_mem, m.regs, tlb=cfg), ReferenceMMU(ref_mem, m.regs, tlb=cfg)
    for i, rows in enumerate(segments):
        assert_same_results(fast.run(to_trace(rows)), ref.run(to_trace(rows)), rows)
        assert tlb_contents(fast) == tlb_contents(ref)
        for change in (edits or [[]] * len(segments))[i]:
            change.apply(fast_mem)
            change.apply(ref_mem)


def test_global_and_non_global_entry_for_one_page_after_pcid_switches() -> None:
    """Address space 1 (PCID 1) maps 0 as a non-global 2 MiB page, address space 2 (PCID 2)
    as a global one. Back in PCID 1 both entries are usable; the search takes the first
    way (the PCID-1 entry, filled first). The numba L1 memo, set to the global entry's way
    while in PCID 2, must not return it: it returned 0x400000 instead of 0x200000."""
    regs = Registers(cr0=0x80010001, cr3=0x1001, cr4=0x200A0, efer=0xD00, maxphyaddr=36)
    m = Machine(4, 36, {0x1000: 0x3067, 0x2000: 0x5067, 0x3000: 0x4067, 0x4000: 0x2000A7,
                        0x5000: 0x6067, 0x6000: 0x4001A7}, (0x1000, 0x2000), (), (), regs)
    read0 = Row(OPS["read"], 0, 3)  # at CPL 3
    to_as2 = Row(OPS["mov_cr3"], b.X86_CR3_PCID_NOFLUSH | 0x2000 | 2)
    to_as1 = Row(OPS["mov_cr3"], b.X86_CR3_PCID_NOFLUSH | 0x1000 | 1)
    rows = [read0, to_as2, read0, read0, read0, to_as1, read0]
    run_both(m, TLBConfig(8, 2, 32, 4), [rows])


def test_fault_after_dirty_assist_has_no_page_size() -> None:
    """A write through a cached 2 MiB entry with D=0 walks again (dirty assist); the page
    was made not-present meanwhile, so the walk faults. The fault must not report the
    cached entry's page size (numba said size code 1)."""
    regs = Registers.long_mode(cr3=0x1000, maxphyaddr=36)
    m = Machine(4, 36, {0x1000: 0x2067, 0x2000: 0x3067, 0x3008: 0x4000A7}, (0x1000,), (), (),
                regs)
    read, write = Row(OPS["read"], 0x200000, 3), Row(OPS["write"], 0x200000, 3)
    run_both(m, TLBConfig(), [[read], [write]], edits=[[Change(0x3008, b.PAGE_PRESENT)], []])
