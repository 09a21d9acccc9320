"""The cost model: cycles = what the simulated machine counted x what each event costs.

Nothing here is a formula for "the overhead of PTI". A workload runs on the simulated kernel
(:mod:`kaiser_edu.perf.workloads`); the MMU counts TLB hits at each level, walks and the
paging-structure reads they made, CR3 writes, flushes, INVLPG/INVPCID and faults; the
workload itself counts what the MMU cannot see (kernel entries, cycles of pure user
computation). :func:`cost` multiplies each count by its price in the one cycle-cost table,
:class:`kaiser_edu.kernel.timing.Timing`. So the TLB refills after a flushing CR3 write are
what make PTI without PCIDs expensive, exactly as on real machines: they are walks the
counters saw, not a term someone added.

What a counted event costs (core cycles, :class:`~kaiser_edu.kernel.timing.Timing` field):

========================  ===============================================================
``user_work``             the workload's own computation (given, identical in every mode)
``tlb_hits``              ``l1_hits x l1_tlb_hit + l2_hits x l2_tlb_hit``
``tlb_walks``             ``walks x l2_tlb_hit`` (the STLB lookup that missed first) +
                          ``walk_reads x walk_level`` (each paging-structure entry read)
``cr3_writes``            ``cr3_writes x cr3_write`` (pti.rst: "on the order of a hundred")
``tlb_flushes``           ``flushes x tlb_flush`` (the invalidation itself; refills are walks)
``invlpg_invpcid``        ``invlpg x invlpg + invpcid x invpcid``
``entry_exit``            ``kernel_entries x syscall_sysret`` (SYSCALL/SYSRET or the
                          interrupt delivery and IRET)
``kernel_work``           ``kernel_entries x entry_work`` (the handler's own work, fitted)
``faults``                ``page_faults x fault_delivery``
========================  ===============================================================

Known error, stated rather than hidden: the simulated MMU has no paging-structure caches
(README, "TLB model"), so every walk reads all four levels. On hardware a walk that hits the
PDE cache reads one entry. The refills after a *flushing* CR3 write are full walks on
hardware too (a flush empties the paging-structure caches of that PCID, SDM 4.10.4.1), but
the steady-state misses of a working set larger than the TLB are charged up to 4x too much,
which makes the ``off`` baseline slower and the relative overhead of isolation smaller for
such working sets. Cache misses of the walks themselves (page tables of a big working set
falling out of L1d/L2) are not modelled either: ``walk_level`` is one price for every read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.kernel.timing import Timing

CATEGORIES = (
    "user_work", "tlb_hits", "tlb_walks", "cr3_writes", "tlb_flushes", "invlpg_invpcid",
    "entry_exit", "kernel_work", "faults",
)
"""The cost categories, in the order a stacked bar draws them."""

MMU_COUNTERS = ("l1_hits", "l2_hits", "walks", "walk_reads", "cr3_writes", "flushes",
                "invlpg", "invpcid", "page_faults")
"""The MMU counters the model prices (:data:`kaiser_edu.hw.mmu.COUNTER_NAMES` has more)."""


@dataclass
class Counts:
    """Everything a workload run counted: the MMU's counters plus what only the workload
    knows. ``calls`` is the unit the cost is reported per (system calls, context switches,
    or trace accesses)."""

    mmu: dict[str, int]
    kernel_entries: int = 0
    user_cycles: float = 0.0
    calls: int = 1
    extra: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [name for name in MMU_COUNTERS if name not in self.mmu]
        if missing:
            raise KaiserEduError(f"MMU counters missing {missing}; need {list(MMU_COUNTERS)}")
        if self.calls < 1:
            raise KaiserEduError(f"calls must be at least 1, got {self.calls}")

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            mmu={k: self.mmu.get(k, 0) + other.mmu.get(k, 0) for k in self.mmu | other.mmu},
            kernel_entries=self.kernel_entries + other.kernel_entries,
            user_cycles=self.user_cycles + other.user_cycles,
            calls=self.calls + other.calls,
            extra={k: self.extra.get(k, 0) + other.extra.get(k, 0)
                   for k in self.extra | other.extra},
        )

    def as_dict(self) -> dict:
        """Plain data for ``--json``: every counter behind a figure."""
        return {"mmu": dict(self.mmu), "kernel_entries": self.kernel_entries,
                "user_cycles": self.user_cycles, "calls": self.calls, **self.extra}


def breakdown(counts: Counts, t: Timing) -> dict[str, float]:
    """Cycles per category (:data:`CATEGORIES`) for the whole run: counts x prices."""
    m: Mapping[str, int] = counts.mmu
    return {
        "user_work": float(counts.user_cycles),
        "tlb_hits": m["l1_hits"] * t.l1_tlb_hit + m["l2_hits"] * t.l2_tlb_hit,
        "tlb_walks": m["walks"] * t.l2_tlb_hit + m["walk_reads"] * t.walk_level,
        "cr3_writes": m["cr3_writes"] * t.cr3_write,
        "tlb_flushes": m["flushes"] * t.tlb_flush,
        "invlpg_invpcid": m["invlpg"] * t.invlpg + m["invpcid"] * t.invpcid,
        "entry_exit": counts.kernel_entries * t.syscall_sysret,
        "kernel_work": counts.kernel_entries * t.entry_work,
        "faults": m["page_faults"] * t.fault_delivery,
    }


def cycles(counts: Counts, t: Timing) -> float:
    """Total cycles of the run."""
    return sum(breakdown(counts, t).values())


@dataclass(frozen=True)
class CostReport:
    """One workload under one mode, priced: the figures ``kaiser-edu perf --json`` prints."""

    mode: str
    cpu: str
    counts: Counts
    timing: Timing
    baseline_cycles_per_call: float | None = None  # the same workload with isolation off

    @property
    def breakdown(self) -> dict[str, float]:
        """Cycles per call, per category."""
        return {k: v / self.counts.calls for k, v in breakdown(self.counts, self.timing).items()}

    @property
    def cycles_per_call(self) -> float:
        return cycles(self.counts, self.timing) / self.counts.calls

    @property
    def calls_per_s(self) -> float:
        """Calls per second at the CPU model's clock."""
        return self.timing.clock_ghz * 1e9 / self.cycles_per_call

    @property
    def overhead(self) -> float | None:
        """Fraction of extra cycles per call against ``off``: 0.42 means 42% more."""
        if self.baseline_cycles_per_call is None:
            return None
        return self.cycles_per_call / self.baseline_cycles_per_call - 1.0

    def as_dict(self) -> dict:
        return {
            "mode": self.mode, "cpu": self.cpu,
            "cycles_per_call": self.cycles_per_call,
            "calls_per_s": self.calls_per_s,
            "overhead": self.overhead,
            "baseline_cycles_per_call": self.baseline_cycles_per_call,
            "breakdown_cycles_per_call": self.breakdown,
            "counters": self.counts.as_dict(),
        }
