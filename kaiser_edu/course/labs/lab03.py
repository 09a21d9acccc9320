"""Lab 03, the TLB: the checks of ``solutions/lab03_tlb.ipynb``.

The student predicts what a TLB does with two short traces, then writes one: a
set-associative, PCID-tagged TLB with global entries, LRU replacement and the invalidations
of Intel SDM Vol. 3A 4.10.4.1. Every answer is compared with the numba MMU
(:class:`kaiser_edu.hw.MMU`) running the same operations on real page tables:

=============================  ================================  ===========================
check                          student answer                    compared with
=============================  ================================  ===========================
:data:`check_predict`          ``predict_walks()``               the engine's ``walks``
:data:`check_predict_switch`   ``predict_switch_walks()``        ``walks``, PCIDE=0 and 1
:data:`check_small_tlb`        ``SmallTLB`` (lookup, fill)       per-op hit/miss, L1
:data:`check_flushing_tlb`     ``FlushingTLB`` (+ invlpg,        per-op hit/miss, L1
                               flush_pcid, flush_all_nonglobal,
                               mov_cr3)
=============================  ================================  ===========================

How a one-level TLB is compared with the engine's two levels
------------------------------------------------------------
The engine has an L1 and an L2 (:class:`~kaiser_edu.hw.TLBConfig`); the student writes one
level. The checks give the engine the student's geometry as its L1 and an L2 of **one
entry** (``TLBConfig(entries, ways, 1, 1)``). Such an L2 can never hit: it holds the
translation of the latest page walk, which the walk also put in L1. For that translation
to be missing from L1, a later fill must have evicted it from L1; a fill comes from a walk
(which replaces the one L2 entry as well) or from an L2 hit (whose entry is that same
translation, already in L1, so L1 would have hit first); and every invalidation reaches
both levels alike. So the engine's L1 hits are the hits of a one-level LRU TLB, and its
walks are that TLB's misses, op for op; :func:`engine_outcomes` asserts ``l2_hits == 0``.

(An L2 as large as the L1 would not do: an L1 hit refreshes only the L1 way, so the two
levels' LRU orders drift apart and the L2 starts catching L1 evictions, like a victim
cache. Comparing "misses of both levels" would then need the student to model both.)

What the student's TLB is asked to do, op by op (:func:`drive`): a read of page ``vpn``
calls ``lookup(vpn, pcid)`` with the current PCID (0 while CR4.PCIDE=0) and, on a miss,
``fill(vpn, pcid, is_global)``; a MOV to CR3 calls ``mov_cr3(new_pcid, noflush, pcide)``
(only for :class:`FlushingTLB`; the :data:`check_small_tlb` scenarios switch PCIDs with
NOFLUSH, which invalidates nothing, and just change the current PCID); INVLPG calls
``invlpg(vpn, pcid)``; INVPCID type 1 calls ``flush_pcid(pcid)`` and type 3
``flush_all_nonglobal()``.

When the two disagree, the feedback names the first op where they do, lists the ops before
it, shows that set in the engine and in the student's TLB, says what happened to the page
in the engine (filled at op j, evicted by the fill of page Y at op k, ...), and gives a
hint. The hint comes from :class:`ModelTLB`, a plain-Python TLB that can make one typical
mistake on purpose (FIFO instead of LRU, global entries tagged with the PCID, a CR3 write
that flushes global entries, NOFLUSH ignored, ...): when the student's hits and misses are
exactly those of a model with a mistake, the hint names that mistake.
"""

from __future__ import annotations

import operator
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kaiser_edu.course.checks import (
    ERROR,
    FAILED,
    NOT_ATTEMPTED,
    PASSED,
    AnswerKit,
    Case,
    Check,
    CheckResult,
    clean,
    describe_exception,
    hex_or_repr,
    raiser,
    where,
    wrap,
)
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.mmu import MMU, TLBConfig, TraceBuilder
from kaiser_edu.hw.pgtable import PageTables
from kaiser_edu.hw.physmem import FrameAllocator, PhysMem
from kaiser_edu.hw.regs import Registers

USER_VPN = 0x400  # user pages are 0x400, 0x401, ... (addresses 0x400000, 0x401000, ...)
KERNEL_VA = 0xFFFF_FFFF_8100_0000  # global kernel pages: Linux's kernel text
KERNEL_VPN = KERNEL_VA >> b.PAGE_SHIFT  # 0xffffffff81000
PROCESS_NAMES = "ABCDEFGH"
CONTEXT_OPS = 8  # ops shown before the first disagreement


@dataclass(repr=False)
class Entry:
    """One TLB entry of the student's TLB (the lab's ``SmallTLB`` stores these).

    >>> Entry(vpn=0x400, pcid=1, is_global=False, last_use=7)
    Entry(vpn=0x400, pcid=1, is_global=False, last_use=7)
    """

    vpn: int  # virtual page number: address >> 12
    pcid: int  # the PCID current when it was filled (global entries ignore it)
    is_global: bool  # made from a PTE with G=1 (CR4.PGE=1): matches every PCID
    last_use: int  # the TLB's clock at the last fill or hit: the LRU age

    def __repr__(self) -> str:  # the page number in hex, as everywhere in the lab
        return (f"Entry(vpn={hex_or_repr(self.vpn)}, pcid={self.pcid!r}, "
                f"is_global={self.is_global!r}, last_use={self.last_use!r})")


# --- scenarios: the operations both TLBs run ----------------------------------------------


@dataclass(frozen=True)
class Op:
    """One operation of a scenario.

    ``kind`` is ``"read"`` (of page ``vpn``), ``"cr3"`` (switch to process ``space`` with
    PCID ``pcid``, NOFLUSH if ``noflush``), ``"invlpg"`` (page ``vpn``) or ``"invpcid"``
    (``invpcid_type`` 1 for PCID ``pcid``, or 3).
    """

    kind: str
    vpn: int = 0
    space: int = 0
    pcid: int = 0
    noflush: bool = False
    invpcid_type: int = 0
    is_global: bool = False

    def text(self) -> str:
        if self.kind == "read":
            return f"read page {self.vpn:#x}" + (" (global)" if self.is_global else "")
        if self.kind == "cr3":
            return (f"MOV to CR3: process {PROCESS_NAMES[self.space]}, PCID {self.pcid}, "
                    f"NOFLUSH {'set' if self.noflush else 'clear'}")
        if self.kind == "invlpg":
            return f"INVLPG page {self.vpn:#x}"
        what = {1: f"single context, PCID {self.pcid}", 3: "all non-global entries"}
        return f"INVPCID type {self.invpcid_type} ({what[self.invpcid_type]})"

    __str__ = text


@dataclass(frozen=True)
class Scenario:
    """A TLB geometry, CR4.PCIDE, and the operations run on it (process A first, with
    PCID 1 when PCIDE=1, else 0)."""

    name: str
    entries: int
    ways: int
    pcide: bool
    ops: tuple[Op, ...]
    n_spaces: int = 1

    @property
    def n_sets(self) -> int:
        return self.entries // self.ways

    @property
    def first_pcid(self) -> int:
        return 1 if self.pcide else 0

    def geometry(self) -> str:
        return (f"{self.entries} entries, {self.ways}-way ({self.n_sets} "
                f"set{'s' if self.n_sets > 1 else ''})")

    def describe(self) -> str:
        pcide = "CR4.PCIDE=1" if self.pcide else "CR4.PCIDE=0 (PCID always 0)"
        return f"{self.name}: TLB of {self.geometry()}, {pcide}, {len(self.ops)} ops"

    def listing(self) -> str:
        """Every op, numbered (for the notebook)."""
        return "\n".join(f"{i:3}  {op}" for i, op in enumerate(self.ops))

    def reads(self) -> int:
        return sum(op.kind == "read" for op in self.ops)


def read(vpn: int, is_global: bool = False) -> Op:
    return Op("read", vpn=vpn, is_global=is_global)


def cr3(space: int, pcide: bool, noflush: bool = False) -> Op:
    return Op("cr3", space=space, pcid=space + 1 if pcide else 0, noflush=noflush and pcide)


def random_scenario(rng: random.Random, name: str, *, entries: int, ways: int, pcide: bool,
                    n_ops: int, user_pages: int, n_spaces: int = 1, global_pages: int = 0,
                    p_kernel: float = 0.0, p_switch: float = 0.0, p_noflush: float = 1.0,
                    p_invlpg: float = 0.0, p_invpcid: float = 0.0, hot: int = 0) -> Scenario:
    """A seeded scenario: reads with some locality (a ``hot`` group of pages gets half of
    the user reads), mixed with CR3 switches, INVLPG and INVPCID at the given rates."""
    ops: list[Op] = []
    space = 0
    hot_pages = rng.sample(range(user_pages), min(hot, user_pages)) if hot else []
    for _ in range(n_ops):
        r = rng.random()
        if r < p_switch and n_spaces > 1:
            space = rng.choice([s for s in range(n_spaces) if s != space])
            ops.append(cr3(space, pcide, noflush=rng.random() < p_noflush))
        elif r < p_switch + p_invlpg:
            if global_pages and rng.random() < 0.3:
                ops.append(Op("invlpg", vpn=KERNEL_VPN + rng.randrange(global_pages)))
            else:
                ops.append(Op("invlpg", vpn=USER_VPN + rng.randrange(user_pages)))
        elif r < p_switch + p_invlpg + p_invpcid:
            if pcide and rng.random() < 0.6:
                ops.append(Op("invpcid", invpcid_type=1, pcid=rng.randrange(1, n_spaces + 1)))
            else:
                ops.append(Op("invpcid", invpcid_type=3))
        elif global_pages and rng.random() < p_kernel:
            ops.append(read(KERNEL_VPN + rng.randrange(global_pages), is_global=True))
        elif hot_pages and rng.random() < 0.5:
            ops.append(read(USER_VPN + rng.choice(hot_pages)))
        else:
            ops.append(read(USER_VPN + rng.randrange(user_pages)))
    return Scenario(name, entries, ways, pcide, tuple(ops), n_spaces)


# --- the engine ----------------------------------------------------------------------------


def _machine(sc: Scenario) -> tuple[MMU, list[PageTables]]:
    """Page tables for every process of ``sc`` and an MMU whose L1 is the scenario's TLB
    and whose L2 has one entry (so it never hits: see the module docstring)."""
    user = sorted({op.vpn for op in sc.ops if op.kind in ("read", "invlpg")
                   and op.vpn < KERNEL_VPN} | {USER_VPN})
    kernel = sorted({op.vpn for op in sc.ops if op.kind in ("read", "invlpg")
                     and op.vpn >= KERNEL_VPN})
    mem = PhysMem()
    alloc = FrameAllocator(mem)
    pts = []
    n_user = user[-1] - USER_VPN + 1
    for s in range(sc.n_spaces):
        pt = PageTables(mem, alloc)
        # the same user addresses in every process, each process with its own frames
        pt.map_range(USER_VPN << b.PAGE_SHIFT, (1 << 32) + (s << 28), n_user,
                     flags=b.PAGE_SHARED)
        if kernel:  # the kernel's pages: the same frames in every process, G=1
            pt.map_range(KERNEL_VA, 1 << 34, kernel[-1] - KERNEL_VPN + 1,
                         flags=b.PAGE_KERNEL)
        pts.append(pt)
    regs = Registers.long_mode(cr3=pts[0].cr3(sc.first_pcid), pcide=sc.pcide)
    return MMU(mem, regs, TLBConfig(sc.entries, sc.ways, 1, 1)), pts


def _va(vpn: int) -> int:
    return vpn << b.PAGE_SHIFT


def engine_run(sc: Scenario, upto: int | None = None) -> tuple[list[bool | None], MMU]:
    """Run ``sc.ops[:upto]`` on the engine: per op True (L1 hit), False (page walk) or None
    (not a read), and the MMU afterwards (its :meth:`~kaiser_edu.hw.MMU.tlb_entries`)."""
    mmu, pts = _machine(sc)
    tb = TraceBuilder()
    for op in sc.ops[:upto]:
        if op.kind == "read":
            tb.read(_va(op.vpn), cpl=0 if op.is_global else 3)
        elif op.kind == "cr3":
            tb.mov_cr3(pts[op.space].cr3(op.pcid), noflush=op.noflush)
        elif op.kind == "invlpg":
            tb.invlpg(_va(op.vpn))
        else:
            tb.invpcid(op.invpcid_type, op.pcid)
    trace = tb.build()
    if not len(trace):
        return [], mmu
    result = mmu.run(trace)
    outcomes: list[bool | None] = []
    for i, op in enumerate(sc.ops[:upto]):
        if result.outcome[i] != b.OUTCOME_OK:
            raise AssertionError(f"{sc.name}: op {i} ({op}) faulted in the engine")
        outcomes.append(bool(result.where[i] == 1) if op.kind == "read" else None)
    if result.counters["l2_hits"]:
        raise AssertionError(f"{sc.name}: the one-entry L2 hit; the comparison is invalid")
    return outcomes, mmu


def engine_outcomes(sc: Scenario) -> list[bool | None]:
    """Per op: True for a TLB hit, False for a page walk, None for a non-read op."""
    return engine_run(sc)[0]


def engine_walks(sc: Scenario) -> int:
    """How many of ``sc``'s reads walked the page tables in the engine."""
    return sum(o is False for o in engine_outcomes(sc))


def engine_set(sc: Scenario, before: int, set_index: int) -> list[tuple[int, int | None]]:
    """The usable L1 entries of one set just before op ``before``: (vpn, pcid or None)."""
    _, mmu = engine_run(sc, before)
    out = []
    for e in mmu.tlb_entries():
        vpn = (e["va"] & ((1 << 64) - 1)) >> b.PAGE_SHIFT
        if e["level"] == "L1" and vpn % sc.n_sets == set_index:
            out.append((vpn, e["pcid"]))
    return out


# --- a plain-Python model, right or with one typical mistake --------------------------------

#: Each mistake ModelTLB can make, and the hint a student whose TLB makes it gets.
MISTAKES: dict[str, str] = {
    "evict_way0": (
        "When a set is full your fill always evicts way 0. LRU evicts the way whose entry "
        "was used longest ago: the one with the smallest last_use, "
        "min(range(ways), key=lambda w: set[w].last_use)."),
    "global_no_refresh": (
        "A hit on a *global* entry must refresh its last_use too: yours leaves a global "
        "entry with the clock of its fill, so LRU evicts the kernel's page as if it were "
        "never used. Set last_use on every hit, global or not."),
    "fifo": (
        "Your TLB behaves like one with FIFO replacement: it evicts the entry that was "
        "*filled* longest ago. LRU evicts the entry *used* longest ago: every hit must "
        "refresh the entry's last_use (lookup sets it to the current clock)."),
    "mru": (
        "Your TLB evicts the most recently used entry of a full set; LRU evicts the least "
        "recently used one (the smallest last_use)."),
    "fully_associative": (
        "Your TLB behaves as if any page could go in any way (one big set). An entry for "
        "page vpn can only live in set vpn % n_sets: look up and fill only that set."),
    "direct_mapped": (
        "Your TLB keeps only one entry per set, as if each set had one way: a set has "
        "`ways` ways, and a fill evicts only when all of them are in use."),
    "ignore_pcid": (
        "Your lookup matches entries of other PCIDs: a non-global entry may be used only "
        "when its pcid equals the current PCID (SDM 4.10.2.4). Two processes use the same "
        "addresses for different pages!"),
    "global_tagged": (
        "Your TLB treats global entries like the others: a global entry matches every "
        "PCID, not only the one it was filled under (SDM 4.10.2.4: 'a logical processor "
        "may use a global TLB entry ... even if the TLB entry is associated with a PCID "
        "different from the current PCID')."),
    "global_as_nonglobal": (
        "Your TLB ignores is_global: global entries must match every PCID and survive "
        "every flush except INVLPG of their page (and INVPCID types 2, MOV to CR4.PGE)."),
    "pcide0_no_flush": (
        "With CR4.PCIDE=0 every MOV to CR3 invalidates all non-global entries (SDM "
        "4.10.4.1), whatever value is written: your mov_cr3 kept them."),
    "cr3_flushes_globals": (
        "A MOV to CR3 never invalidates global entries (that is what G is for: the kernel's "
        "pages survive process switches). Flush only non-global entries."),
    "noflush_ignored": (
        "With CR4.PCIDE=1, a MOV to CR3 with bit 63 (NOFLUSH) set invalidates nothing: the "
        "new PCID's entries stay. Your mov_cr3 flushed them anyway."),
    "noflush_always": (
        "With CR4.PCIDE=1, a MOV to CR3 with bit 63 clear must invalidate the new PCID's "
        "non-global entries; your mov_cr3 kept them."),
    "cr3_flushes_old_pcid": (
        "A MOV to CR3 without NOFLUSH invalidates the entries of the *new* PCID (bits 11:0 "
        "of the value written), not of the PCID being left: flush_pcid(new_pcid)."),
    "cr3_flushes_all_pcids": (
        "With CR4.PCIDE=1, a MOV to CR3 without NOFLUSH invalidates only the new PCID's "
        "non-global entries; your mov_cr3 flushed every PCID's (that is PCIDE=0 behaviour)."),
    "invlpg_keeps_global": (
        "INVLPG also invalidates the global entry for the page, whatever PCID is current "
        "(SDM 4.10.4.1): your invlpg kept it."),
    "invlpg_all_pcids": (
        "INVLPG invalidates the page's entry for the *current* PCID (and global entries), "
        "not the entries other PCIDs have for that address."),
    "invlpg_noop": (
        "Your invlpg kept the page's entry: INVLPG must remove the entry for this page "
        "(current PCID, or global)."),
    "flush_pcid_drops_globals": (
        "flush_pcid (INVPCID type 1, or MOV to CR3 without NOFLUSH) must keep global "
        "entries: it removes only the non-global entries of that PCID."),
    "flush_pcid_all": (
        "flush_pcid(pcid) removes only the entries of that PCID; yours removed other "
        "PCIDs' entries too."),
    "flush_pcid_noop": (
        "flush_pcid(pcid) must remove the non-global entries of that PCID: yours kept them."),
    "flush_nonglobal_drops_globals": (
        "flush_all_nonglobal (INVPCID type 3, or MOV to CR3 with PCIDE=0) must keep the "
        "global entries."),
    "flush_nonglobal_noop": (
        "flush_all_nonglobal must remove every non-global entry, of every PCID."),
}


class ModelTLB:
    """A reference TLB in plain Python, correct, or making one of :data:`MISTAKES`.

    It follows the rules of the engine (first empty way, else LRU; global entries match
    every PCID; SDM 4.10.4.1 invalidations) and, with ``log``, records why entries leave.
    """

    def __init__(self, entries: int, ways: int, mistake: str | None = None,
                 pcid: int = 0, log: list | None = None):
        if mistake is not None and mistake not in MISTAKES:
            raise ValueError(f"unknown mistake {mistake!r}")
        self.mistake = mistake
        self.n_sets = 1 if mistake == "fully_associative" else entries // ways
        self.ways = 1 if mistake == "direct_mapped" else entries // self.n_sets
        self.sets: list[list[Entry | None]] = [[None] * self.ways for _ in range(self.n_sets)]
        self.clock = 0
        self.pcid = pcid  # only the "cr3_flushes_old_pcid" mistake needs to know it
        self.log = log  # (op index, what happened, entry) when given
        self.op = -1  # the op being run, set by drive()

    def _m(self, name: str) -> bool:
        return self.mistake == name

    def _drop(self, covered: Callable[[Entry], bool], why: str) -> None:
        for ways in self.sets:
            for w, e in enumerate(ways):
                if e is not None and covered(e):
                    ways[w] = None
                    if self.log is not None:
                        self.log.append((self.op, why, e))

    def _matches(self, e: Entry, vpn: int, pcid: int) -> bool:
        if e.vpn != vpn:
            return False
        if self._m("ignore_pcid"):
            return True
        if self._m("global_tagged") or self._m("global_as_nonglobal"):
            return e.pcid == pcid
        return e.is_global or e.pcid == pcid

    def _global(self, e: Entry) -> bool:
        return e.is_global and not self._m("global_as_nonglobal")

    def lookup(self, vpn: int, pcid: int) -> bool:
        self.clock += 1
        for e in self.sets[vpn % self.n_sets]:
            if e is not None and self._matches(e, vpn, pcid):
                if not (self._m("fifo") or (self._m("global_no_refresh") and e.is_global)):
                    e.last_use = self.clock
                return True
        return False

    def fill(self, vpn: int, pcid: int, is_global: bool) -> None:
        self.clock += 1
        ways = self.sets[vpn % self.n_sets]
        new = Entry(vpn, pcid, is_global, self.clock)
        free = [w for w, e in enumerate(ways) if e is None]
        if free:
            ways[free[0]] = new
            return
        pick = max if self._m("mru") else min
        victim = pick(range(self.ways), key=lambda w: ways[w].last_use)  # type: ignore[union-attr]
        if self._m("evict_way0"):
            victim = 0
        if self.log is not None:
            self.log.append((self.op, f"evicted by the fill of page {vpn:#x}", ways[victim]))
        ways[victim] = new

    def invlpg(self, vpn: int, pcid: int) -> None:
        if self._m("invlpg_noop"):
            return
        if self._m("invlpg_all_pcids"):
            self._drop(lambda e: e.vpn == vpn, "invalidated by INVLPG")
        elif self._m("invlpg_keeps_global"):
            self._drop(lambda e: e.vpn == vpn and not self._global(e) and e.pcid == pcid,
                       "invalidated by INVLPG")
        else:
            self._drop(lambda e: e.vpn == vpn and (self._global(e) or e.pcid == pcid),
                       "invalidated by INVLPG")

    def flush_pcid(self, pcid: int, why: str = "flushed by INVPCID type 1") -> None:
        if self._m("flush_pcid_noop"):
            return
        if self._m("flush_pcid_all"):
            self._drop(lambda e: not self._global(e), why)
        elif self._m("flush_pcid_drops_globals"):
            self._drop(lambda e: self._global(e) or e.pcid == pcid, why)
        else:
            self._drop(lambda e: not self._global(e) and e.pcid == pcid, why)

    def flush_all_nonglobal(self, why: str = "flushed by INVPCID type 3") -> None:
        if self._m("flush_nonglobal_noop"):
            return
        if self._m("flush_nonglobal_drops_globals"):
            self._drop(lambda e: True, why)
        else:
            self._drop(lambda e: not self._global(e), why)

    def mov_cr3(self, new_pcid: int, noflush: bool, pcide: bool) -> None:
        old, self.pcid = self.pcid, new_pcid
        why = "flushed by the MOV to CR3"
        if self._m("cr3_flushes_globals") and (not pcide or not noflush):
            self._drop(lambda e: not pcide or e.pcid == new_pcid or self._global(e), why)
        elif not pcide:
            if not self._m("pcide0_no_flush"):
                self.flush_all_nonglobal(why)
        elif noflush:
            if self._m("noflush_ignored"):
                self.flush_pcid(new_pcid, why)
        elif self._m("noflush_always"):
            pass
        elif self._m("cr3_flushes_old_pcid"):
            self.flush_pcid(old, why)
        elif self._m("cr3_flushes_all_pcids"):
            self.flush_all_nonglobal(why)
        else:
            self.flush_pcid(new_pcid, why)


# --- running a student's TLB ---------------------------------------------------------------


class BadAnswer(Exception):
    """A method returned something the lab cannot use (not a student exception)."""

    def __init__(self, op: int, message: str, hint: str):
        super().__init__(message)
        self.op, self.message, self.hint = op, message, hint


class StudentError(Exception):
    """The student's code raised ``error`` while running op ``op`` (-1: the constructor)."""

    def __init__(self, op: int, error: BaseException):
        super().__init__(str(error))
        self.op, self.error = op, error


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if type(value).__name__ == "bool_":  # numpy.bool_
        return bool(value)
    return None


def drive(tlb_class: Any, sc: Scenario, upto: int | None = None, flushes: bool = True,
          ) -> tuple[list[bool | None], Any]:
    """Run ``sc.ops[:upto]`` through a new ``tlb_class(entries, ways)``.

    Returns per op True (hit), False (miss) or None (not a read), and the TLB. Exceptions of
    the student's code come out as :class:`StudentError`, unusable answers as
    :class:`BadAnswer`. Without ``flushes`` (the SmallTLB check) a MOV to CR3 only changes
    the current PCID: every scenario of that check writes CR3 with NOFLUSH.
    """
    try:
        tlb = tlb_class(sc.entries, sc.ways)
    except (Exception, SystemExit) as e:
        raise StudentError(-1, e) from e
    if isinstance(tlb, ModelTLB):
        tlb.pcid = sc.first_pcid
    pcid = sc.first_pcid
    out: list[bool | None] = []
    for i, op in enumerate(sc.ops[:upto]):
        if isinstance(tlb, ModelTLB):
            tlb.op = i
        try:
            if op.kind == "read":
                got = tlb.lookup(op.vpn, pcid)
                hit = _as_bool(got)
                if hit is None:
                    hint = ("did you forget `return`?" if got is None else
                            "return True for a hit, False for a miss.")
                    raise BadAnswer(i, f"lookup({op.vpn:#x}, {pcid}) returned "
                                       f"{clean(repr(got))}, not True or False", hint)
                if not hit:
                    tlb.fill(op.vpn, pcid, op.is_global)
                out.append(hit)
                continue
            if op.kind == "cr3":
                if flushes:
                    tlb.mov_cr3(op.pcid, op.noflush, sc.pcide)
                pcid = op.pcid
            elif op.kind == "invlpg":
                tlb.invlpg(op.vpn, pcid)
            elif op.invpcid_type == 1:
                tlb.flush_pcid(op.pcid)
            else:
                tlb.flush_all_nonglobal()
        except (BadAnswer, KeyboardInterrupt):
            raise
        except (Exception, SystemExit) as e:
            raise StudentError(i, e) from e
        out.append(None)
    return out, tlb


def model_outcomes(sc: Scenario, mistake: str | None = None,
                   log: list | None = None) -> list[bool | None]:
    """Hits and misses of :class:`ModelTLB` (with ``mistake``) on ``sc``."""
    return drive(lambda n, w: ModelTLB(n, w, mistake, log=log), sc)[0]


def first_difference(a: Sequence[bool | None], b_: Sequence[bool | None]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b_)) if x != y), None)


# --- explaining a disagreement --------------------------------------------------------------


def _who(vpn: int, pcid: int | None, is_global: bool) -> str:
    return f"page {vpn:#x} " + ("(global)" if is_global else f"(PCID {pcid})")


def _engine_set_text(sc: Scenario, before: int, set_index: int) -> str:
    entries = engine_set(sc, before, set_index)
    last = _last_uses(sc, before)
    shown = []
    for vpn, pcid in entries:
        used = last.get((vpn, pcid))
        shown.append(_who(vpn, pcid, pcid is None)
                     + (f", last used at op {used}" if used is not None else ""))
    shown += ["(empty)"] * (sc.ways - len(entries))
    return "\n".join(f"      {text}" for text in shown)


def _last_uses(sc: Scenario, before: int) -> dict[tuple[int, int | None], int]:
    """(vpn, pcid or None for global) -> the last op before ``before`` that read it."""
    pcid = sc.first_pcid
    last: dict[tuple[int, int | None], int] = {}
    for i, op in enumerate(sc.ops[:before]):
        if op.kind == "cr3":
            pcid = op.pcid
        elif op.kind == "read":
            last[(op.vpn, None if op.is_global else pcid)] = i
    return last


def _student_set_text(tlb_class: Any, sc: Scenario, before: int, set_index: int,
                      flushes: bool) -> str:
    try:
        _, tlb = drive(tlb_class, sc, before, flushes)
        ways = tlb.sets[set_index]
        lines = []
        for e in ways:
            if e is None:
                lines.append("(empty)")
            elif all(hasattr(e, a) for a in ("vpn", "pcid", "is_global", "last_use")):
                tag = "global" if e.is_global else f"PCID {e.pcid}"
                extra = f", pcid={e.pcid}" if e.is_global else ""
                lines.append(f"page {hex_or_repr(e.vpn)} ({tag}{extra}), last_use={e.last_use!r}")
            else:
                lines.append(clean(repr(e)))
        return "\n".join(f"      {line}" for line in lines)
    except Exception as e:  # a TLB that cannot be shown: say so, never crash the check
        return f"      (cannot show your TLB's set {set_index}: {describe_exception(e)})"


def _engine_story(sc: Scenario, i: int) -> str:
    """What happened to the page of op ``i`` in the (correct) model, which is the engine."""
    op = sc.ops[i]
    log: list = []
    model_outcomes(sc, log=log)
    pcid = sc.first_pcid
    for o in sc.ops[:i]:
        if o.kind == "cr3":
            pcid = o.pcid
    key_pcid = None if op.is_global else pcid
    fills = []
    p = sc.first_pcid
    for j, o in enumerate(sc.ops[:i]):
        if o.kind == "cr3":
            p = o.pcid
        elif o.kind == "read" and o.vpn == op.vpn and (op.is_global or p == pcid):
            fills.append(j)
    who = _who(op.vpn, key_pcid, op.is_global)
    if not fills:
        return f"In the engine, {who} was never read before op {i}: a compulsory miss."
    gone = [(j, why) for j, why, e in log if j < i and e.vpn == op.vpn
            and (op.is_global or e.pcid == pcid)]
    last_read = fills[-1]
    if gone and gone[-1][0] >= last_read:
        j, why = gone[-1]
        return (f"In the engine, {who} was last read at op {last_read} and left the TLB "
                f"at op {j} ({sc.ops[j]}): {why}.")
    return (f"In the engine, {who} was last read at op {last_read} and nothing removed "
            f"it since, so op {i} hits.")


def _mistake_hint(scenarios: Sequence[Scenario], theirs: Sequence[list | None], failing: int,
                  mistakes: Sequence[str]) -> str | None:
    """The hint of the mistake that explains the student's hits and misses best.

    ``theirs[k]`` are the student's outcomes on ``scenarios[k]`` (None where their code
    raised). Best: a mistake that reproduces them on every scenario; then one that
    reproduces the failing scenario; then one whose first difference from the engine is
    the student's (a guess, said as such).
    """
    sc, got = scenarios[failing], theirs[failing]
    assert got is not None
    expected = engine_outcomes(sc)
    first = first_difference(expected, got)
    exact, partial = [], None
    for m in mistakes:
        try:
            model = model_outcomes(sc, m)
        except Exception:
            continue
        if model == got:
            exact.append(m)
        elif partial is None and first_difference(expected, model) == first \
                and model[first] == got[first]:
            partial = m
    for m in exact:
        if all(out is None or model_outcomes(other, m) == out
               for other, out in zip(scenarios, theirs)):
            return MISTAKES[m]
    if exact:
        return MISTAKES[exact[0]]
    if partial:
        return MISTAKES[partial] + " (A guess: that mistake explains the first difference.)"
    return None


# --- the checks -------------------------------------------------------------------------------


def _not_attempted_method(exc: BaseException) -> str:
    """The name of the student's method that raised NotImplementedError (``SmallTLB.fill``)."""
    return raiser(exc) or "a method"


@dataclass(frozen=True, repr=False)
class TLBCheck(Check):
    """Runs the student's TLB class on seeded scenarios, op by op against the engine.

    ``cases`` builds the scenarios; ``flushes`` says whether MOV to CR3 calls the class's
    ``mov_cr3``; ``mistakes`` are the :data:`MISTAKES` tried for hints, in order.
    """

    flushes: bool = True
    mistakes: tuple[str, ...] = ()
    methods: tuple[str, ...] = ("lookup", "fill")

    def _run(self, student_cls: Any, seed: int) -> CheckResult:
        if not isinstance(student_cls, type):
            return self._result(
                ERROR,
                f"This check needs your class {self.function} itself, got "
                f"{clean(_safe_repr(student_cls))} (a {type(student_cls).__name__}).\n"
                f"Hint: pass the class, not an instance: {self.function}, not "
                f"{self.function}(16, 4).")
        missing = [m for m in self.methods if not callable(getattr(student_cls, m, None))]
        if missing:
            return self._result(
                ERROR,
                f"{self.function} has no method {', '.join(missing)}.\n"
                f"Hint: define {' and '.join(missing)} inside the class (indented under "
                f"`class {self.function}`), then run its cell again.")
        scenarios = list(self.cases(random.Random(seed)))
        if not scenarios:
            raise ValueError(f"check {self.exercise} has no scenarios")
        total = len(scenarios)
        for number, sc in enumerate(scenarios):
            expected = engine_outcomes(sc)
            try:
                got, _ = drive(student_cls, sc, flushes=self.flushes)
            except BadAnswer as e:
                return self._bad_answer(sc, number, total, e)
            except StudentError as e:
                if isinstance(e.error, NotImplementedError):
                    return self._unfinished(e, number, total)
                return self._crashed(sc, number, total, e)
            first = first_difference(expected, got)
            if first is not None:
                return self._disagree(student_cls, scenarios, number, first, expected, got)
        reads = sum(sc.reads() for sc in scenarios)
        return self._result(
            PASSED,
            f"All {total} scenarios ({reads} reads) gave the engine's hit or miss, op for "
            f"op: {self.function} agrees with kaiser_edu's MMU.",
            cases=total, passed_cases=total)

    def _unfinished(self, e: StudentError, number: int, total: int) -> CheckResult:
        method = _not_attempted_method(e.error)
        if number == 0 and not method.startswith(f"{self.function}.") and "." in method:
            text = (f"{self.function} uses {method}, which still raises "
                    "NotImplementedError: finish that first, run its cell, then this check.")
        elif number == 0:
            text = (f"{method} still raises NotImplementedError.\n"
                    "Replace `raise NotImplementedError()` with your code, run that cell, "
                    "then this check.")
        else:
            text = (f"{self.function} is not finished: {number} of {total} scenarios passed, "
                    f"then {method} raised NotImplementedError.")
        return self._result(NOT_ATTEMPTED, text, cases=total, passed_cases=number)

    def _crashed(self, sc: Scenario, number: int, total: int, e: StudentError) -> CheckResult:
        exc = e.error
        lines = [f"Your code raised {describe_exception(exc)}"]
        lines.extend("  " + line for line in where(exc).splitlines())
        if e.op < 0:
            lines.append(f"while creating {self.function}({sc.entries}, {sc.ways})")
        else:
            lines.append(f"at op {e.op} ({sc.ops[e.op]}) of scenario {number + 1}: "
                         f"{sc.describe()}")
        lines.append("Hint: the line above is where Python stopped. Fix it, run your cell "
                     "again, then this check.")
        return self._result(ERROR, "\n".join(lines), cases=total, passed_cases=number)

    def _bad_answer(self, sc: Scenario, number: int, total: int, e: BadAnswer) -> CheckResult:
        lines = [f"Scenario {number + 1} of {total}: {sc.describe()}",
                 f"At op {e.op} ({sc.ops[e.op]}): {e.message}.",
                 wrap(f"Hint: {e.hint}")]
        return self._result(FAILED, "\n".join(lines), cases=total, passed_cases=number)

    def _disagree(self, student_cls: Any, scenarios: list[Scenario], number: int, i: int,
                  expected: list, got: list) -> CheckResult:
        sc, total = scenarios[number], len(scenarios)
        op = sc.ops[i]
        set_index = op.vpn % sc.n_sets
        lo = max(0, i - CONTEXT_OPS)
        lines = [f"Scenario {number + 1} of {total}: {sc.describe()}",
                 f"First disagreement at op {i}:"]
        for j in range(lo, i + 1):
            outcome = {True: "hit", False: "miss", None: ""}[expected[j]]
            mark = ">" if j == i else " "
            text = f"  {mark}{j:4}  {sc.ops[j]}"
            if j < i:
                lines.append(f"{text:<62} {outcome}".rstrip())
            else:
                lines.append(f"{text:<62} engine: {outcome}, yours: "
                             f"{'hit' if got[j] else 'miss'}")
        lines.append(f"Set {set_index} (page {op.vpn:#x} % {sc.n_sets} sets) just before "
                     f"op {i}:")
        lines.append("    in the engine:")
        lines.append(_engine_set_text(sc, i, set_index))
        lines.append("    in your TLB:")
        lines.append(_student_set_text(student_cls, sc, i, set_index, self.flushes))
        lines.append(wrap(_engine_story(sc, i)))
        theirs: list[list | None] = []
        for k, other in enumerate(scenarios):
            if k == number:
                theirs.append(got)
                continue
            try:
                theirs.append(drive(student_cls, other, flushes=self.flushes)[0])
            except (BadAnswer, StudentError):
                theirs.append(None)
        hint = _mistake_hint(scenarios, theirs, number, self.mistakes) \
            or _generic_hint(expected[i])
        lines.append(wrap(f"Hint: {hint}"))
        wrong = sum(x != y for x, y in zip(expected, got))
        lines.append(f"{wrong} of {sc.reads()} reads of this scenario differ; this is the "
                     "first.")
        return self._result(FAILED, "\n".join(lines), cases=total, passed_cases=number)


def _generic_hint(engine_hit: bool | None) -> str:
    if engine_hit:
        return ("Your TLB lost an entry the engine kept. Check which entries your fill "
                "evicts (the least recently used of the set, only when no way is empty) "
                "and which entries each flush removes.")
    return ("Your TLB still had an entry the engine no longer had. Check that lookup "
            "matches the PCID (unless the entry is global), that a hit refreshes last_use, "
            "and that each flush removes what the SDM says.")


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<a {type(value).__name__} that cannot be shown>"


# --- exercises 1 and 2: predictions ---------------------------------------------------------


@dataclass(frozen=True, repr=False)
class PredictionCheck(Check):
    """A prediction: ``student_fn()`` must return the engine's count (an int) or counts (a
    tuple of ints).

    When the prediction is wrong the right number is not shown (it is the answer); the
    feedback says which way each count is off, and ``hint(case, value)`` explains, naming a
    typical mistake when the value is what that mistake gives. ``parts`` names the counts
    of a tuple.
    """

    parts: tuple[str, ...] = ()

    def _run(self, student_fn: Any, seed: int) -> CheckResult:
        if not callable(student_fn):
            return self._result(
                ERROR,
                f"This check needs your function {self.function} itself, got "
                f"{clean(_safe_repr(student_fn))}.\nHint: pass {self.function}, not "
                f"{self.function}().")
        (case,) = self.cases(random.Random(seed))
        try:
            got = student_fn()
        except NotImplementedError:
            return self._result(
                NOT_ATTEMPTED,
                f"{self.function} still raises NotImplementedError.\nReplace `raise "
                "NotImplementedError()` with `return` and your prediction, run that cell, "
                "then this check.", cases=1)
        except (Exception, SystemExit) as e:
            return self._error(case, e, 0, 1)
        value = _normalise(got)
        if _same_shape(value, case.expected) and value == case.expected:
            return self._result(PASSED, f"Right: {_show(value)}. {case.note}",
                                cases=1, passed_cases=1)
        return self._result(FAILED, self._explain(case, got, value), cases=1)

    def _explain(self, case: Case, got: Any, value: Any) -> str:
        expected = case.expected
        head = f"{self.function}() returned {clean(_safe_repr(got))}"
        if got is None:
            return f"{head}.\nHint: did you forget `return`?"
        if not _same_shape(value, expected):
            shape = "an int" if isinstance(expected, int) else \
                f"a tuple of {len(expected)} ints"
            return f"{head}.\nHint: return {shape}, e.g. {_example(expected)}."
        lines = [wrap(f"{head}: not what the engine counts (the right number is not shown: "
                      "it is what you are predicting).")]
        if isinstance(expected, int):
            lines.append(f"  {value} is too {'high' if value > expected else 'low'}")
        else:
            for k, (mine, right) in enumerate(zip(value, expected)):
                verdict = "right" if mine == right else \
                    f"too {'high' if mine > right else 'low'}"
                name = self.parts[k] if k < len(self.parts) else f"count {k + 1}"
                lines.append(f"  {name}: {mine} is {verdict}")
        lines.append(wrap(f"Hint: {self.hint(case, value)}"))
        return "\n".join(lines)



def _normalise(got: Any) -> Any:
    """An int, a tuple of ints, or ``got`` unchanged (numpy integers count as ints)."""
    if isinstance(got, bool):
        return got
    try:
        return operator.index(got)
    except TypeError:
        pass
    if isinstance(got, list | tuple) and not any(isinstance(x, bool) for x in got):
        try:
            return tuple(operator.index(x) for x in got)
        except TypeError:
            return got
    return got


def _same_shape(value: Any, expected: Any) -> bool:
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if isinstance(expected, int):
        return is_int(value)
    return isinstance(value, tuple) and len(value) == len(expected) and all(map(is_int, value))


def _example(expected: Any) -> str:
    return "return 5" if isinstance(expected, int) else \
        "return (" + ", ".join(str(3 + k) for k in range(len(expected))) + ")"


def _show(value: Any) -> str:
    return str(value) if isinstance(value, int) else ", ".join(map(str, value))


def _walks(sc: Scenario, mistake: str | None = None) -> int:
    return sum(o is False for o in model_outcomes(sc, mistake))


#: Exercise 1: one address space, a 4-entry 2-way TLB (2 sets), 12 reads.
PREDICT_PAGES = (0x400, 0x400, 0x401, 0x404, 0x400, 0x405, 0x403, 0x401, 0x404, 0x400,
                 0x402, 0x400)
PREDICT = Scenario("exercise 1", entries=4, ways=2, pcide=False,
                   ops=tuple(read(p) for p in PREDICT_PAGES))


def _predict_hint(case: Case, value: int) -> str:
    sc = PREDICT
    known = {
        _walks(sc, "fifo"): "FIFO replacement gives that count. LRU evicts the page *used* "
        "longest ago, not the one *filled* longest ago: a hit makes a page the most "
        "recently used.",
        _walks(sc, "fully_associative"): "A fully associative 4-entry TLB gives that count. "
        "Here a page can only go in set page % 2, so pages of one set compete for its 2 ways "
        "even while the other set has room.",
        _walks(sc, "direct_mapped"): "Keeping one page per set gives that count; each set "
        "here has 2 ways.",
        _walks(sc, "mru"): "Evicting the most recently used page gives that count; LRU evicts "
        "the least recently used one.",
        len(set(PREDICT_PAGES)): "That is the number of different pages (the compulsory "
        "misses): with 2 ways per set some pages are evicted and walked again.",
        sc.reads() - case.expected: "That is the number of hits; the question asks for page "
        "walks (misses).",
    }
    known.pop(case.expected, None)
    general = ("Split the reads by set (page % 2: even pages in set 0, odd pages in set 1) "
               "and follow each set on its own: two ways, a hit refreshes the page, a miss "
               "on a full set evicts its least recently used page.")
    return f"{known[value]} {general}" if value in known else general


check_predict = PredictionCheck(
    exercise="lab03-predict",
    title="Exercise 1: predict the page walks",
    function="predict_walks",
    cases=lambda rng: [Case((), engine_walks(PREDICT),
                            note="Two 2-way sets with LRU; the engine counted the same.")],
    points=2,
    hint=_predict_hint,
)


def _switch_ops(pcide: bool) -> tuple[Op, ...]:
    """Processes A and B take turns, twice each: pages 0x400-0x402 (the same addresses in
    both, different frames) and one global kernel page, then a switch."""
    ops: list[Op] = []
    for turn in range(4):
        space = turn % 2
        if turn:
            ops.append(cr3(space, pcide, noflush=True))
        ops += [read(USER_VPN), read(USER_VPN + 1), read(USER_VPN + 2),
                read(KERNEL_VPN, is_global=True)]
    return tuple(ops)


SWITCH_NO_PCID = Scenario("exercise 2, PCIDE=0", entries=16, ways=4, pcide=False,
                          ops=_switch_ops(False), n_spaces=2)
SWITCH_PCID = Scenario("exercise 2, PCIDE=1 and NOFLUSH", entries=16, ways=4, pcide=True,
                       ops=_switch_ops(True), n_spaces=2)


def _switch_hint(case: Case, value: tuple[int, int]) -> str:
    without, with_ = case.expected
    known = {
        (_walks(SWITCH_NO_PCID, "cr3_flushes_globals"), with_):
            "Without PCIDs you flushed the kernel page too: a MOV to CR3 keeps global "
            "entries (G=1), which is why the kernel's pages were global before PTI.",
        (_walks(SWITCH_NO_PCID, "pcide0_no_flush"), with_):
            "Without PCIDs every MOV to CR3 flushes all non-global entries: B cannot use A's "
            "translations of 0x400-0x402 (they point to A's frames).",
        (without, _walks(SWITCH_PCID, "global_tagged")):
            "With PCIDs the kernel page is still global: one entry serves every PCID, so B "
            "does not walk for it again.",
        (without, _walks(SWITCH_PCID, "ignore_pcid")):
            "B's pages 0x400-0x402 are not A's, even at the same addresses: B's first reads "
            "miss. The PCID tag is what keeps the two apart.",
        (without, _walks(SWITCH_PCID, "noflush_ignored")):
            "With NOFLUSH set, the CR3 writes flush nothing: A's entries are still there when "
            "A runs again.",
    }
    known.pop(case.expected, None)
    general = ("Count turn by turn (4 reads each). Without PCIDs each MOV to CR3 removes every "
               "non-global entry; with PCIDs and NOFLUSH, A's and B's entries live side by "
               "side. The kernel page is global in both runs.")
    return f"{known[value]} {general}" if value in known else general


check_predict_switch = PredictionCheck(
    exercise="lab03-predict-switch",
    title="Exercise 2: process switches with and without PCIDs",
    function="predict_switch_walks",
    cases=lambda rng: [Case((), (engine_walks(SWITCH_NO_PCID), engine_walks(SWITCH_PCID)),
                            note="PCIDs keep both processes' translations; the engine "
                                 "counted the same.")],
    points=2,
    hint=_switch_hint,
    parts=("without PCIDs (PCIDE=0)", "with PCIDs and NOFLUSH"),
)


# --- exercises 3 and 4: the student's TLB ----------------------------------------------------


def small_tlb_scenarios(rng: random.Random) -> list[Scenario]:
    """LRU first (one address space), then geometries, then PCIDs, then global pages; every
    CR3 write has NOFLUSH set, so nothing is ever invalidated."""
    hand = Scenario("LRU in one 4-way set", 4, 4, False, tuple(
        read(USER_VPN + p) for p in (0, 1, 2, 3, 0, 4, 1, 5, 0, 2, 6, 0, 3)))
    return [
        hand,
        random_scenario(rng, "one process, 2-way sets", entries=8, ways=2, pcide=False,
                        n_ops=150, user_pages=14, hot=3),
        random_scenario(rng, "one process, 4-way sets", entries=16, ways=4, pcide=False,
                        n_ops=400, user_pages=28, hot=6),
        random_scenario(rng, "one process, direct-mapped", entries=8, ways=1, pcide=False,
                        n_ops=150, user_pages=12, hot=2),
        random_scenario(rng, "one process, fully associative", entries=8, ways=8,
                        pcide=False, n_ops=200, user_pages=12, hot=4),
        random_scenario(rng, "three processes with PCIDs, switched with NOFLUSH", entries=16,
                        ways=4, pcide=True, n_ops=400, user_pages=8, n_spaces=3,
                        p_switch=0.08),
        random_scenario(rng, "three processes with PCIDs and 4 global kernel pages",
                        entries=16, ways=4, pcide=True, n_ops=500, user_pages=8, n_spaces=3,
                        global_pages=4, p_kernel=0.25, p_switch=0.08),
        random_scenario(rng, "a bit of everything", entries=32, ways=4, pcide=True,
                        n_ops=1500, user_pages=40, n_spaces=4, global_pages=8, p_kernel=0.2,
                        p_switch=0.05, hot=8),
    ]


def flushing_tlb_scenarios(rng: random.Random) -> list[Scenario]:
    """MOV to CR3 without PCIDs, then with (NOFLUSH set and clear), INVLPG, INVPCID, and
    all of it together; global kernel pages throughout."""
    return [
        random_scenario(rng, "two processes, PCIDE=0: every MOV to CR3 flushes", entries=16,
                        ways=4, pcide=False, n_ops=300, user_pages=6, n_spaces=2,
                        global_pages=3, p_kernel=0.3, p_switch=0.1),
        random_scenario(rng, "three processes, PCIDE=1, CR3 writes with and without NOFLUSH",
                        entries=16, ways=4, pcide=True, n_ops=400, user_pages=6, n_spaces=3,
                        global_pages=3, p_kernel=0.3, p_switch=0.1, p_noflush=0.5),
        random_scenario(rng, "INVLPG of user and global pages, three processes", entries=16,
                        ways=4, pcide=True, n_ops=400, user_pages=6, n_spaces=3,
                        global_pages=3, p_kernel=0.3, p_switch=0.06, p_invlpg=0.08),
        random_scenario(rng, "INVPCID types 1 and 3", entries=16, ways=4, pcide=True,
                        n_ops=400, user_pages=6, n_spaces=3, global_pages=3, p_kernel=0.3,
                        p_switch=0.06, p_invpcid=0.05),
        random_scenario(rng, "PCIDE=0 with INVLPG and INVPCID type 3", entries=8, ways=2,
                        pcide=False, n_ops=400, user_pages=10, n_spaces=2, global_pages=3,
                        p_kernel=0.25, p_switch=0.05, p_invlpg=0.05, p_invpcid=0.02, hot=3),
        random_scenario(rng, "all of it, with evictions", entries=32, ways=4, pcide=True,
                        n_ops=2000, user_pages=40, n_spaces=4, global_pages=8, p_kernel=0.2,
                        p_switch=0.04, p_noflush=0.6, p_invlpg=0.02, p_invpcid=0.01, hot=8),
    ]


_LOOKUP_FILL_MISTAKES = ("evict_way0", "global_no_refresh", "fifo", "mru",
                         "fully_associative", "direct_mapped", "ignore_pcid", "global_tagged",
                         "global_as_nonglobal")
_FLUSH_MISTAKES = ("pcide0_no_flush", "cr3_flushes_globals", "noflush_ignored",
                   "noflush_always", "cr3_flushes_old_pcid", "cr3_flushes_all_pcids",
                   "invlpg_keeps_global", "invlpg_all_pcids", "invlpg_noop",
                   "flush_pcid_drops_globals", "flush_pcid_all", "flush_pcid_noop",
                   "flush_nonglobal_drops_globals", "flush_nonglobal_noop",
                   *_LOOKUP_FILL_MISTAKES)

check_small_tlb = TLBCheck(
    exercise="lab03-small-tlb",
    title="Exercise 3: a set-associative TLB with PCIDs and global entries",
    function="SmallTLB",
    cases=small_tlb_scenarios,
    points=4,
    seed=3,
    flushes=False,
    mistakes=_LOOKUP_FILL_MISTAKES,
)

check_flushing_tlb = TLBCheck(
    exercise="lab03-flushing-tlb",
    title="Exercise 4: INVLPG, INVPCID and MOV to CR3",
    function="FlushingTLB",
    cases=flushing_tlb_scenarios,
    points=4,
    seed=4,
    flushes=True,
    mistakes=_FLUSH_MISTAKES,
    methods=("lookup", "fill", "invlpg", "flush_pcid", "flush_all_nonglobal", "mov_cr3"),
)

CHECKS = (check_predict, check_predict_switch, check_small_tlb, check_flushing_tlb)

#: What the answers may use in a graded run (kaiser_edu.course.graded): the Entry record.
ANSWER_KIT = AnswerKit(records=(Entry,))
