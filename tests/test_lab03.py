"""Lab 03 (the TLB): its checks against the lab's own notebooks, typical wrong answers,
the claim that a one-entry L2 makes the engine's L1 a one-level TLB, and ``kaiser-edu
check`` on the solution and on the untouched exercise.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from lab_helpers import assert_feedback

from kaiser_edu.course import checks as ck
from kaiser_edu.course import exercises as ex
from kaiser_edu.course.labs import lab03
from kaiser_edu.hw.mmu import MMU, TLBConfig, TraceBuilder

REPO = Path(__file__).resolve().parents[1]
SOLUTION = REPO / "solutions" / "lab03_tlb.ipynb"
EXERCISE = REPO / "exercises" / "lab03_tlb.ipynb"
LESSON = REPO / "notebooks" / "03_tlb_and_pcid.ipynb"


def answers_of(path: Path) -> dict:
    return ex.answer_namespace(path)


SOLVED = answers_of(SOLUTION)
SmallTLB = SOLVED["SmallTLB"]
FlushingTLB = SOLVED["FlushingTLB"]
ANSWER = {c.exercise: c.function for c in lab03.CHECKS}


# --- the checks (the notebook-wide rules are in test_labs.py) ------------------------------


def test_flushing_check_names_the_unfinished_base_class():
    result = lab03.check_flushing_tlb(answers_of(EXERCISE)["FlushingTLB"])
    assert "FlushingTLB uses SmallTLB.lookup, which still raises NotImplementedError" \
        in result.feedback


def test_flushing_check_with_small_tlb_done_names_the_flush_method():
    stubbed = answers_of(EXERCISE)["FlushingTLB"]
    done = type("FlushingTLB", (stubbed,), {"lookup": SmallTLB.lookup, "fill": SmallTLB.fill})
    result = lab03.check_flushing_tlb(done)
    assert result.status == ck.NOT_ATTEMPTED
    assert "FlushingTLB.mov_cr3 still raises NotImplementedError" in result.feedback


def test_lesson_is_executed_in_order_without_stderr():
    nb = ex.read_notebook(LESSON)
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1))
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.output_type != "error"
            assert out.get("name") != "stderr", f"stderr in {cell.id}"
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for needed in ("**Expected time:**", "**Learning objectives.**", "4.10.4.1", "NOFLUSH",
                   "INVPCID", "## Check yourself"):
        assert needed in text


def test_results_are_deterministic_and_json_serialisable():
    wrong = type("FifoTLB", (FlushingTLB,), {"lookup": _fifo_lookup})
    for check, answer in ((lab03.check_small_tlb, wrong), (lab03.check_flushing_tlb, wrong),
                          (lab03.check_predict, lambda: 8)):
        first, second = check(answer), check(answer)
        assert first.text() == second.text()
        json.dumps(first.to_json())


# --- the comparison with the engine is exact ------------------------------------------------


def _random_scenario(seed: int) -> lab03.Scenario:
    rng = random.Random(seed)
    entries, ways = rng.choice([(4, 1), (4, 2), (8, 2), (8, 8), (16, 4), (32, 4)])
    pcide = rng.random() < 0.7
    return lab03.random_scenario(
        rng, f"random {seed}", entries=entries, ways=ways, pcide=pcide, n_ops=600,
        user_pages=rng.randrange(2, 3 * entries), n_spaces=rng.randrange(1, 4),
        global_pages=rng.randrange(0, 5), p_kernel=0.2, p_switch=0.06,
        p_noflush=rng.random(), p_invlpg=0.03, p_invpcid=0.02, hot=rng.randrange(0, 5))


@pytest.mark.parametrize("seed", range(40))
def test_the_model_tlb_is_the_engine_op_for_op(seed):
    """The one-level model agrees with the engine's L1 (the engine asserts its one-entry L2
    never hits), on random geometries, PCIDs, switches with and without NOFLUSH, INVLPG,
    INVPCID and global pages."""
    sc = _random_scenario(seed)
    assert lab03.model_outcomes(sc) == lab03.engine_outcomes(sc)


def test_an_l2_as_large_as_the_l1_would_not_be_a_copy():
    """Why the checks use a one-entry L2: with an identical L2 the engine gets L2 hits (the
    two levels' LRU orders drift apart), so its walks are not a one-level TLB's misses."""
    sc = lab03.small_tlb_scenarios(random.Random(3))[2]
    mmu, _ = lab03._machine(sc)
    same = MMU(mmu.mem, mmu.regs, TLBConfig(sc.entries, sc.ways, sc.entries, sc.ways))
    tb = TraceBuilder()
    for op in sc.ops:
        tb.read(op.vpn << 12, cpl=3)
    counters = same.run(tb.build(), record=False).counters
    assert counters["l2_hits"] > 0
    assert counters["walks"] != sum(o is False for o in lab03.engine_outcomes(sc))


def test_every_check_scenario_exercises_what_it_claims():
    small = lab03.small_tlb_scenarios(random.Random(lab03.check_small_tlb.seed))
    flushing = lab03.flushing_tlb_scenarios(random.Random(lab03.check_flushing_tlb.seed))
    assert all(op.noflush for sc in small for op in sc.ops if op.kind == "cr3" and sc.pcide)
    kinds = {(op.kind, op.noflush, op.invpcid_type) for sc in flushing for op in sc.ops}
    for needed in (("cr3", True, 0), ("cr3", False, 0), ("invlpg", False, 0),
                   ("invpcid", False, 1), ("invpcid", False, 3)):
        assert needed in kinds
    assert any(sc.pcide is False and any(op.kind == "cr3" for op in sc.ops) for sc in flushing)
    assert any(op.is_global for sc in small + flushing for op in sc.ops)
    for sc in small + flushing:  # evictions happen: some read misses after an earlier hit
        assert sum(o is False for o in lab03.engine_outcomes(sc)) < sc.reads()


# --- typical mistakes get specific feedback --------------------------------------------------


def _match(self, entry, vpn, pcid):
    return entry is not None and entry.vpn == vpn and (entry.is_global or entry.pcid == pcid)


def _fifo_lookup(self, vpn, pcid):
    """A hit does not refresh last_use: FIFO, not LRU."""
    self.clock += 1
    return any(_match(self, e, vpn, pcid) for e in self.set_of(vpn))


def _global_tagged_lookup(self, vpn, pcid):
    """Global entries match only the PCID they were filled under."""
    self.clock += 1
    for entry in self.set_of(vpn):
        if entry is not None and entry.vpn == vpn and entry.pcid == pcid:
            entry.last_use = self.clock
            return True
    return False


def _pcid_blind_lookup(self, vpn, pcid):
    self.clock += 1
    for entry in self.set_of(vpn):
        if entry is not None and entry.vpn == vpn:
            entry.last_use = self.clock
            return True
    return False


def _way_zero_fill(self, vpn, pcid, is_global):
    """Always overwrites way 0 of the set: a direct-mapped TLB."""
    self.clock += 1
    self.set_of(vpn)[0] = lab03.Entry(vpn, pcid, is_global, self.clock)


def _evict_way_zero_fill(self, vpn, pcid, is_global):
    """First free way, else always way 0 (not the least recently used)."""
    self.clock += 1
    ways = self.set_of(vpn)
    free = [w for w, e in enumerate(ways) if e is None]
    ways[free[0] if free else 0] = lab03.Entry(vpn, pcid, is_global, self.clock)


def _global_stale_lookup(self, vpn, pcid):
    """A hit refreshes last_use, except on a global entry."""
    self.clock += 1
    for entry in self.set_of(vpn):
        if _match(self, entry, vpn, pcid):
            if not entry.is_global:
                entry.last_use = self.clock
            return True
    return False


def _forgetful_return_lookup(self, vpn, pcid):
    self.clock += 1
    for entry in self.set_of(vpn):
        if _match(self, entry, vpn, pcid):
            entry.last_use = self.clock
            return True


def _wordy_lookup(self, vpn, pcid):
    return "hit" if SmallTLB.lookup(self, vpn, pcid) else "miss"


def _crashing_fill(self, vpn, pcid, is_global):
    return self.clock / 0


def _cr3_clears_everything(self, new_pcid, noflush, pcide):
    """A CR3 write that flushes global entries too."""
    if not pcide or not noflush:
        self.sets = [[None] * self.ways for _ in range(self.n_sets)]


def _cr3_ignores_noflush(self, new_pcid, noflush, pcide):
    if not pcide:
        self.flush_all_nonglobal()
    else:
        self.flush_pcid(new_pcid)


def _cr3_flushes_the_old_pcid(self, new_pcid, noflush, pcide):
    if not pcide:
        self.flush_all_nonglobal()
    elif not noflush:
        self.flush_pcid(self.current)
    self.current = new_pcid


def _invlpg_keeps_global(self, vpn, pcid):
    ways = self.set_of(vpn)
    for w, entry in enumerate(ways):
        if entry is not None and entry.vpn == vpn and not entry.is_global and entry.pcid == pcid:
            ways[w] = None


def _flush_pcid_drops_globals(self, pcid):
    for ways in self.sets:
        for w, entry in enumerate(ways):
            if entry is not None and (entry.is_global or entry.pcid == pcid):
                ways[w] = None


def small(name, **methods):
    return type(name, (SmallTLB,), methods)


def flushing(name, **methods):
    return type(name, (FlushingTLB,), methods)


OldPcid = flushing("OldPcid", mov_cr3=_cr3_flushes_the_old_pcid, current=1)

WRONG = [
    # (check, student answer, status, fragments of the feedback)
    (lab03.check_small_tlb, small("Fifo", lookup=_fifo_lookup), ck.FAILED,
     ["FIFO replacement", "every hit must refresh", "First disagreement at op 6",
      "in the engine:", "in your TLB:", "evicted by the fill of page 0x404"]),
    (lab03.check_flushing_tlb, flushing("Fifo", lookup=_fifo_lookup), ck.FAILED,
     ["FIFO replacement"]),
    (lab03.check_small_tlb, small("GlobalTagged", lookup=_global_tagged_lookup), ck.FAILED,
     ["a global entry matches every PCID", "(global)", "global, pcid=", "nothing removed it"]),
    (lab03.check_flushing_tlb, flushing("GlobalTagged", lookup=_global_tagged_lookup),
     ck.FAILED, ["a global entry matches every PCID"]),
    (lab03.check_small_tlb, small("PcidBlind", lookup=_pcid_blind_lookup), ck.FAILED,
     ["matches entries of other PCIDs", "engine: miss, yours: hit"]),
    (lab03.check_small_tlb, small("WayZero", fill=_way_zero_fill), ck.FAILED,
     ["keeps only one entry per set"]),
    (lab03.check_small_tlb, small("EvictWayZero", fill=_evict_way_zero_fill), ck.FAILED,
     ["When a set is full your fill always evicts way 0", "smallest last_use"]),
    (lab03.check_small_tlb, small("GlobalStale", lookup=_global_stale_lookup), ck.FAILED,
     ["A hit on a *global* entry must refresh its last_use too"]),
    (lab03.check_flushing_tlb, flushing("Cr3FlushesGlobals", mov_cr3=_cr3_clears_everything),
     ck.FAILED, ["A MOV to CR3 never invalidates global entries", "CR4.PCIDE=0",
                 "engine: hit, yours: miss"]),
    (lab03.check_flushing_tlb, flushing("NoflushIgnored", mov_cr3=_cr3_ignores_noflush),
     ck.FAILED, ["bit 63 (NOFLUSH) set invalidates nothing", "NOFLUSH set"]),
    (lab03.check_flushing_tlb, OldPcid, ck.FAILED,
     ["invalidates the entries of the *new* PCID"]),
    (lab03.check_flushing_tlb, flushing("InvlpgKeepsGlobal", invlpg=_invlpg_keeps_global),
     ck.FAILED, ["INVLPG also invalidates the global entry", "invalidated by INVLPG"]),
    (lab03.check_flushing_tlb,
     flushing("FlushPcidDropsGlobals", flush_pcid=_flush_pcid_drops_globals), ck.FAILED,
     ["flush_pcid (INVPCID type 1, or MOV to CR3 without NOFLUSH) must keep global"]),
    (lab03.check_small_tlb, small("NoReturn", lookup=_forgetful_return_lookup), ck.FAILED,
     ["lookup(0x400, 0) returned None, not True or False", "did you forget `return`?"]),
    (lab03.check_small_tlb, small("Wordy", lookup=_wordy_lookup), ck.FAILED,
     ["returned 'miss', not True or False", "return True for a hit"]),
    (lab03.check_small_tlb, small("Crash", fill=_crashing_fill), ck.ERROR,
     ["Your code raised ZeroDivisionError", "_crashing_fill", "return self.clock / 0",
      "at op 0 (read page 0x400)"]),
    (lab03.check_small_tlb, SmallTLB(4, 4), ck.ERROR, ["pass the class, not an instance"]),
    (lab03.check_flushing_tlb, SmallTLB, ck.ERROR,
     ["FlushingTLB has no method invlpg, flush_pcid, flush_all_nonglobal, mov_cr3"]),
    (lab03.check_predict, lambda: 8, ck.FAILED,
     ["8 is too high", "FIFO replacement gives that count", "not shown"]),
    (lab03.check_predict, lambda: 9, ck.FAILED, ["fully associative"]),
    (lab03.check_predict, lambda: 5, ck.FAILED, ["the number of hits"]),
    (lab03.check_predict, lambda: "7", ck.FAILED, ["return an int"]),
    (lab03.check_predict, lambda: None, ck.FAILED, ["did you forget `return`?"]),
    (lab03.check_predict, lambda: 1 // 0, ck.ERROR, ["ZeroDivisionError"]),
    (lab03.check_predict_switch, lambda: (16, 7), ck.FAILED,
     ["without PCIDs (PCIDE=0): 16 is too high", "with PCIDs and NOFLUSH: 7 is right",
      "flushed the kernel page too"]),
    (lab03.check_predict_switch, lambda: (13, 8), ck.FAILED,
     ["the kernel page is still global"]),
    (lab03.check_predict_switch, lambda: (13, 4), ck.FAILED, ["are not A's"]),
    (lab03.check_predict_switch, lambda: 13, ck.FAILED, ["return a tuple of 2 ints"]),
    (lab03.check_predict_switch, lambda: (True, 7), ck.FAILED, ["return a tuple of 2 ints"]),
]


@pytest.mark.parametrize("check, answer, status, fragments", WRONG,
                         ids=[f"{c.exercise}-{getattr(a, '__name__', type(a).__name__)}-{n}"
                              for n, (c, a, *_) in enumerate(WRONG)])
def test_wrong_answers_get_specific_feedback(check, answer, status, fragments):
    assert_feedback(check(answer), status, fragments)


def test_an_unknown_mistake_gets_the_general_hint_and_the_state():
    def lookup_forgets_half(self, vpn, pcid):  # a bug no model makes
        hit = SmallTLB.lookup(self, vpn, pcid)
        return hit and vpn % 7 != 3

    result = lab03.check_small_tlb(small("Odd", lookup=lookup_forgets_half))
    assert result.status == ck.FAILED
    assert "First disagreement at op" in result.feedback
    assert "Hint: Your TLB" in result.feedback


def test_nbgrader_grading_raises_on_a_wrong_tlb(monkeypatch):
    monkeypatch.setenv(ck.NBGRADER_ENV, "autograde")
    with pytest.raises(ck.CheckFailed):
        lab03.check_small_tlb(small("Fifo", lookup=_fifo_lookup))
    assert lab03.check_small_tlb(SmallTLB).passed
