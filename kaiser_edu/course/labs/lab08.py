"""Lab 08, what isolation costs: the checks of ``solutions/lab08_cost.ipynb``.

=============================  ==========================================  ====================
check                          student answer                              compared with
=============================  ==========================================  ====================
:data:`check_cycles`           ``cycles(counters, t)``: total cycles of a  :func:`kaiser_edu.
                               run from its counter record and the table   perf.cost.cycles`
:data:`check_max_rate`         ``max_syscall_rate(extra, off_syscall,      the rate at which
                               budget, clock_ghz)``: the highest syscall   the overhead equals
                               rate whose overhead stays within budget     the budget
=============================  ==========================================  ====================

Exercise 1's counter records come from real runs of the performance lab's workloads on the
simulated kernel (random modes, working sets, user work, huge pages), priced with randomly
perturbed tables, so an answer that hard-codes the Skylake prices, or leaves a counter out,
fails; the hint names the category that is missing or wrong. Exercise 2's inputs are the
extra cycles per call measured on the simulator for a mode and a working set; the feedback
names that case.
"""

from __future__ import annotations

import math
import random
from dataclasses import fields, replace
from typing import Any

from kaiser_edu.course.checks import AnswerKit, Case, Check
from kaiser_edu.kernel.timing import Timing, timing
from kaiser_edu.perf import cost
from kaiser_edu.perf import workloads as W

__all__ = ["RECORD_KEYS", "check_cycles", "check_max_rate", "counter_record", "measure_extra",
           "timing"]

RECORD_KEYS = (*cost.MMU_COUNTERS, "kernel_entries", "user_cycles")
"""The keys of a counter record (exercise 1)."""
PRICED = ("l1_tlb_hit", "l2_tlb_hit", "walk_level", "cr3_write", "tlb_flush", "invlpg",
          "invpcid", "syscall_sysret", "entry_work", "fault_delivery")


def counter_record(counts: cost.Counts) -> dict[str, float]:
    """A flat counter record for the student: the MMU counters the model prices, the
    number of kernel entries and the cycles of user work (totals of the run)."""
    record: dict[str, float] = {k: int(counts.mmu[k]) for k in cost.MMU_COUNTERS}
    record["kernel_entries"] = int(counts.kernel_entries)
    record["user_cycles"] = float(counts.user_cycles)
    return record


def _counts(record: dict[str, float]) -> cost.Counts:
    return cost.Counts(mmu={k: record[k] for k in cost.MMU_COUNTERS},
                       kernel_entries=record["kernel_entries"],
                       user_cycles=record["user_cycles"])


def _perturbed(rng: random.Random, base: Timing) -> Timing:
    """The table with every price scaled by a random factor in [0.5, 2] (rounded)."""
    return replace(base, **{k: round(getattr(base, k) * rng.uniform(0.5, 2.0), 1)
                            for k in PRICED})


def cycles_cases(rng: random.Random) -> list[Case]:
    cases = []
    runs = [("off", 2000, 64, False), ("pti", 0, 4, False), ("pti-nopcid", 8000, 1024, False),
            ("kaiser", 4000, 256, False)]
    for _ in range(6):
        runs.append((rng.choice(list(W.MODES)), rng.choice([0, 500, 4000, 20000]),
                     rng.choice([16, 256, 4096]), rng.random() < 0.3))
    for mode, work, ws, huge in runs:
        counts = W.Machine(mode, huge=huge, max_ws_kib=ws).run_syscalls(work, ws, calls=8,
                                                                          warmup=2)
        first = not cases
        t = timing("skylake") if first else _perturbed(rng, timing("skylake"))
        note = (f"{mode}, {work} user cycles per call, {ws} KiB working set"
                + (" in 2 MiB pages" if huge else "") + ("" if first else ", perturbed table"))
        cases.append(Case((counter_record(counts), t), cost.cycles(counts, t), note=note))
    every = {k: 1 + i for i, k in enumerate(cost.MMU_COUNTERS)}
    every.update(kernel_entries=3, user_cycles=1000.0)
    t = _perturbed(rng, timing("skylake"))
    cases.append(Case((every, t), cost.cycles(_counts(every), t),
                      note="a record in which every counter is non-zero"))
    return cases


def _close(expected: float, got: Any) -> bool:
    try:
        value = float(got)
    except (TypeError, ValueError):
        return False
    return math.isfinite(value) and math.isclose(value, expected, rel_tol=1e-6, abs_tol=1e-6)


def _cycles_hint(case: Case, got: Any) -> str:
    record, t = case.args
    try:
        value = float(got)
    except (TypeError, ValueError):
        return "Return the total number of cycles as a number (an int or a float)."
    parts = cost.breakdown(_counts(record), t)
    expected = case.expected
    for name, part in parts.items():
        if part and math.isclose(value, expected - part, rel_tol=1e-6):
            return (f"Your total lacks exactly the category '{name}' ({part:,.1f} cycles): "
                    + _CATEGORY_HELP[name])
    default = cost.cycles(_counts(record), timing("skylake"))
    if math.isclose(value, default, rel_tol=1e-6) and not math.isclose(default, expected):
        return ("That is the total with the Skylake preset's prices: use the prices of the "
                "table `t` you are given (t.walk_level, t.cr3_write, ...), not constants.")
    walks_as_reads = expected - parts["tlb_walks"] + record["walks"] * 4 * t.walk_level \
        + record["walks"] * t.l2_tlb_hit
    if math.isclose(value, walks_as_reads, rel_tol=1e-6):
        return ("Price the walks with walk_reads (the entries actually read), not walks x 4: "
                "a walk of a 2 MiB page reads 3 entries.")
    return ("cycles = user_cycles + l1_hits*l1_tlb_hit + l2_hits*l2_tlb_hit + walks*l2_tlb_hit"
            " + walk_reads*walk_level + cr3_writes*cr3_write + flushes*tlb_flush + invlpg*invlpg"
            " + invpcid*invpcid + kernel_entries*(syscall_sysret + entry_work)"
            " + page_faults*fault_delivery. Compare yours term by term.")


_CATEGORY_HELP = {
    "user_work": "the program's own cycles, record['user_cycles'].",
    "tlb_hits": "l1_hits x t.l1_tlb_hit + l2_hits x t.l2_tlb_hit.",
    "tlb_walks": "walks x t.l2_tlb_hit (the STLB lookup that missed) + walk_reads x "
                 "t.walk_level (each paging-structure entry read).",
    "cr3_writes": "cr3_writes x t.cr3_write.",
    "tlb_flushes": "flushes x t.tlb_flush (the refills are already counted as walks).",
    "invlpg_invpcid": "invlpg x t.invlpg + invpcid x t.invpcid.",
    "entry_exit": "kernel_entries x t.syscall_sysret (SYSCALL and SYSRET).",
    "kernel_work": "kernel_entries x t.entry_work (the handler's own work).",
    "faults": "page_faults x t.fault_delivery.",
}


def _format_case_arg(value: Any) -> str:
    if isinstance(value, Timing):
        return "t"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v:g}" for k, v in value.items()) + "}"
    return repr(value)


check_cycles = Check(
    exercise="lab08-cycles",
    title="Exercise 1: cycles from a counter record",
    function="cycles",
    cases=cycles_cases,
    points=4,
    seed=80,
    hint=_cycles_hint,
    same=_close,
    format_arg=_format_case_arg,
    format_value=lambda v: f"{float(v):,.1f}" if isinstance(v, (int, float)) else repr(v),
)


# --- exercise 2: the break-even syscall rate ---------------------------------------------------
def measure_extra(mode: str, ws_kib: float, rate: float = 5e4,
                  cpu: str = "skylake") -> tuple[float, float]:
    """(extra cycles per call of ``mode`` over off, off's cycles per call minus its user
    work): what exercise 2 is given, measured on the simulator at ``rate``."""
    t = timing(cpu)
    work = W.work_for_rate(rate, cpu)
    off = cost.CostReport("off", cpu, W.Machine("off", cpu, max_ws_kib=int(ws_kib))
                          .run_syscalls(work, ws_kib, 16), t)
    on = cost.CostReport(mode, cpu, W.Machine(mode, cpu, max_ws_kib=int(ws_kib))
                         .run_syscalls(work, ws_kib, 16), t)
    return on.cycles_per_call - off.cycles_per_call, off.cycles_per_call - work


def max_rate(extra: float, off_syscall: float, budget: float, clock_ghz: float) -> float:
    """The engine: overhead(rate) = extra / (clock/rate + off_syscall) <= budget."""
    return clock_ghz * 1e9 / (extra / budget - off_syscall)


def max_rate_cases(rng: random.Random) -> list[Case]:
    cases = []
    plan = [("pti-nopcid", 16, 0.02), ("pti-nopcid", 4096, 0.02), ("pti", 4096, 0.02),
            ("kaiser", 256, 0.05), ("pti-nopcid", 1024, 0.01)]
    plan += [(rng.choice(["pti", "pti-nopcid", "kaiser"]), rng.choice([16, 256, 1024, 4096]),
              rng.choice([0.005, 0.01, 0.02, 0.05])) for _ in range(5)]
    for mode, ws, budget in plan:
        extra, off_syscall = measure_extra(mode, ws)
        extra, off_syscall = round(extra, 1), round(off_syscall, 1)
        clock = rng.choice([2.5, 3.0, 4.0])
        cases.append(Case((extra, off_syscall, budget, clock),
                          max_rate(extra, off_syscall, budget, clock),
                          note=f"{mode} with a {ws} KiB working set: {extra:,.1f} extra cycles "
                               f"per call, budget {budget:.1%}, {clock} GHz"))
    return cases


def _rate_hint(case: Case, got: Any) -> str:
    extra, off_syscall, budget, clock = case.args
    try:
        value = float(got)
    except (TypeError, ValueError):
        return "Return the rate in system calls per second, a number."
    if math.isclose(value, clock * 1e9 * budget / extra, rel_tol=1e-6):
        return ("You treated the whole call as user work. The baseline of a call is "
                "clock/rate (the user work) plus off_syscall (the call itself without "
                "isolation): overhead = extra / (clock/rate + off_syscall).")
    if math.isclose(value, case.expected / 1e9, rel_tol=1e-6):
        return ("clock_ghz is in GHz: multiply it by 1e9 to get cycles per second (the rate "
                "is in calls per second).")
    return ("Solve budget = extra / (clock_ghz*1e9/rate + off_syscall) for rate: "
            "rate = clock_ghz*1e9 / (extra/budget - off_syscall).")


check_max_rate = Check(
    exercise="lab08-max-rate",
    title="Exercise 2: the highest syscall rate within a budget",
    function="max_syscall_rate",
    cases=max_rate_cases,
    points=3,
    seed=81,
    hint=_rate_hint,
    same=_close,
    format_arg=repr,
    format_value=lambda v: f"{float(v):,.0f} calls/s" if isinstance(v, (int, float)) else repr(v),
)

CHECKS = [check_cycles, check_max_rate]

# In a graded run the answers see the timing table only through its prices (the fields of
# Timing and the two derived reload costs), never the simulator behind it.
ANSWER_KIT = AnswerKit(
    objects={Timing: (*(f.name for f in fields(Timing)), "reload_hit", "reload_miss")},
)
