"""The cost model: cycles are counted events times the timing table, nothing else."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.kernel.timing import timing
from kaiser_edu.perf.cost import CATEGORIES, MMU_COUNTERS, CostReport, Counts, breakdown, cycles

MMU = {"l1_hits": 100, "l2_hits": 10, "walks": 3, "walk_reads": 12, "cr3_writes": 4,
       "flushes": 2, "invlpg": 1, "invpcid": 1, "page_faults": 1, "ops": 999}


def test_every_category_is_counts_times_prices():
    t = timing("skylake")
    c = Counts(mmu=MMU, kernel_entries=2, user_cycles=5000.0, calls=2)
    got = breakdown(c, t)
    assert list(got) == list(CATEGORIES)
    assert got["user_work"] == 5000.0
    assert got["tlb_hits"] == 100 * t.l1_tlb_hit + 10 * t.l2_tlb_hit
    assert got["tlb_walks"] == 3 * t.l2_tlb_hit + 12 * t.walk_level
    assert got["cr3_writes"] == 4 * t.cr3_write
    assert got["tlb_flushes"] == 2 * t.tlb_flush
    assert got["invlpg_invpcid"] == t.invlpg + t.invpcid
    assert got["entry_exit"] == 2 * t.syscall_sysret
    assert got["kernel_work"] == 2 * t.entry_work
    assert got["faults"] == t.fault_delivery
    assert cycles(c, t) == pytest.approx(sum(got.values()))


def test_a_price_moves_only_its_own_category():
    t = timing("skylake")
    c = Counts(mmu=MMU, kernel_entries=2, user_cycles=5000.0, calls=2)
    dearer = replace(t, walk_level=t.walk_level + 10)
    a, b = breakdown(c, t), breakdown(c, dearer)
    assert b["tlb_walks"] - a["tlb_walks"] == 12 * 10
    assert {k: v for k, v in a.items() if k != "tlb_walks"} == \
        {k: v for k, v in b.items() if k != "tlb_walks"}


def test_report_per_call_rate_and_overhead():
    t = timing("skylake")
    c = Counts(mmu=MMU, kernel_entries=2, user_cycles=5000.0, calls=2)
    r = CostReport("pti", "skylake", c, t, baseline_cycles_per_call=1000.0)
    assert r.cycles_per_call == pytest.approx(cycles(c, t) / 2)
    assert r.calls_per_s == pytest.approx(t.clock_ghz * 1e9 / r.cycles_per_call)
    assert r.overhead == pytest.approx(r.cycles_per_call / 1000.0 - 1)
    d = r.as_dict()
    assert {"cycles_per_call", "calls_per_s", "overhead", "counters"} <= set(d)
    assert d["counters"]["mmu"] == MMU
    assert CostReport("off", "skylake", c, t).overhead is None


def test_counts_add_and_refuse_bad_input():
    c = Counts(mmu=MMU, kernel_entries=1, user_cycles=10.0, calls=1, extra={"x": 1})
    s = c + c
    assert s.mmu["walks"] == 6 and s.kernel_entries == 2 and s.calls == 2 and s.extra == {"x": 2}
    with pytest.raises(KaiserEduError, match="missing"):
        Counts(mmu={"walks": 1})
    with pytest.raises(KaiserEduError, match="calls must be at least 1"):
        Counts(mmu=MMU, calls=0)
    assert set(MMU_COUNTERS) <= set(MMU)
