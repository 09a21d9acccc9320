"""Calibration on Hansen's lseek1 rates, then a comparison with what else was published.

The fit (:func:`fit`). Hansen's KAISER v2 cover letter (linux-mm, 2017-11-08) measured
will-it-scale's ``lseek1`` (one thread calling ``lseek(fd, 0, SEEK_SET)`` in a loop): 5.2 M
lseeks/s without KAISER, 3.0 M/s with KAISER and PCIDs, 2.2 M/s with KAISER booted
``nopcid``. The simulator runs that loop in the three modes (``off``, ``pti``,
``pti-nopcid``) and counts events; the counts do not depend on any price. Two prices are
free: ``entry_work`` (the kernel's own work in lseek, unknown to the model) and
``cr3_write``. ``Documentation/x86/pti.rst`` says CR3 moves are "on the order of a
hundred cycles", which enters the fit as a soft prior (100 cycles, one standard deviation
200). The three rates enter with an assumed 5% uncertainty. Everything else (walk and flush
prices, SYSCALL/SYSRET) stays at the table's assumed values. So: three measurements plus a
prior, two parameters: the residuals say how well the simulated mechanism explains the
data, and they are reported, not tuned away.

Hansen's CPU and clock are not given in the cover letter (unverified here); rates are
converted to cycles at the preset's clock (Skylake, 4.0 GHz). A different clock scales
both fitted prices by the same factor and leaves the residuals unchanged.

The comparison (:func:`comparison`): with the fitted table and *no* refitting, the
simulator's figures next to every figure of ``pti-facts.md`` §6 the model can express.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from kaiser_edu.kernel.timing import Timing, timing
from kaiser_edu.perf import workloads as W
from kaiser_edu.perf.cost import CostReport, Counts, breakdown

HANSEN_LSEEK1 = {"off": 5.2e6, "pti": 3.0e6, "pti-nopcid": 2.2e6}
"""lseeks/s, Hansen, KAISER v2 cover letter: no KAISER, KAISER+PCID, KAISER nopcid."""
HANSEN_SOURCE = "Hansen, [PATCH 00/30] [v2] KAISER cover letter, linux-mm, 2017-11-08"
RATE_SIGMA = 0.05  # assumed relative uncertainty of each published rate
CR3_PRIOR, CR3_PRIOR_SIGMA = 100.0, 200.0  # pti.rst: "on the order of a hundred cycles"
FREE = ("entry_work", "cr3_write")
LSEEK_CALLS = 2000


def lseek1_counts(cpu: str = "skylake") -> dict[str, Counts]:
    """The lseek1 loop in each of Hansen's three modes: a syscall round trip per call and
    no user work (will-it-scale's loop is a few instructions, folded into entry_work)."""
    return {mode: W.Machine(mode, cpu, max_ws_kib=4).run_syscalls(0, 4, LSEEK_CALLS)
            for mode in HANSEN_LSEEK1}


@dataclass(frozen=True)
class Fit:
    """The fitted prices, the calibrated table and the residuals."""

    timing: Timing
    params: dict[str, float]
    measured: dict[str, float]  # calls/s
    model: dict[str, float]  # calls/s with the fitted table
    prior_residual: float  # (cr3_write - 100) / 200

    @property
    def residuals(self) -> dict[str, float]:
        """Relative residual per mode: model / measured - 1."""
        return {m: self.model[m] / self.measured[m] - 1 for m in self.measured}

    def table(self) -> list[dict]:
        return [{"mode": m, "measured_per_s": self.measured[m], "model_per_s": self.model[m],
                 "residual": self.residuals[m]} for m in self.measured]


def fit(cpu: str = "skylake", counts: dict[str, Counts] | None = None) -> Fit:
    """Weighted linear least squares of (entry_work, cr3_write) on the lseek1 cycles per call.

    Cycles per call are linear in the two prices: ``fixed + n_entries x entry_work +
    n_cr3 x cr3_write``, where ``fixed`` prices every other counted event at the table's
    values. Each residual is relative to the measured cycles and divided by its sigma.
    """
    counts = counts or lseek1_counts(cpu)
    base = timing(cpu)
    zero = replace(base, entry_work=0.0, cr3_write=0.0)
    rows, rhs = [], []
    for mode, rate in HANSEN_LSEEK1.items():
        c = counts[mode]
        target = base.clock_ghz * 1e9 / rate  # measured cycles per call
        fixed = sum(breakdown(c, zero).values()) / c.calls
        a = [c.kernel_entries / c.calls, c.mmu["cr3_writes"] / c.calls]
        w = 1 / (target * RATE_SIGMA)
        rows.append([x * w for x in a])
        rhs.append((target - fixed) * w)
    rows.append([0.0, 1 / CR3_PRIOR_SIGMA])
    rhs.append(CR3_PRIOR / CR3_PRIOR_SIGMA)
    (entry_work, cr3_write), *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    fitted = replace(base, entry_work=float(entry_work), cr3_write=float(cr3_write))
    model = {m: CostReport(m, cpu, counts[m], fitted).calls_per_s for m in HANSEN_LSEEK1}
    return Fit(fitted, {"entry_work": float(entry_work), "cr3_write": float(cr3_write)},
               dict(HANSEN_LSEEK1), model, (float(cr3_write) - CR3_PRIOR) / CR3_PRIOR_SIGMA)


# --- the comparison with published figures (no refitting) ---------------------------------------
@dataclass(frozen=True)
class Comparison:
    claim: str
    source: str
    published: str
    model: str
    agrees: bool
    note: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _overhead(mode: str, rate: float, ws_kib: float, cpu: str, t: Timing,
              huge: bool = False) -> float:
    work = W.work_for_rate(rate, cpu)
    off = W.Machine("off", cpu, huge, max_ws_kib=int(ws_kib)).run_syscalls(work, ws_kib, 64)
    on = W.Machine(mode, cpu, huge, max_ws_kib=int(ws_kib)).run_syscalls(work, ws_kib, 64)
    return CostReport(mode, cpu, on, t, CostReport("off", cpu, off, t).cycles_per_call).overhead


def comparison(cpu: str = "skylake", the_fit: Fit | None = None) -> list[Comparison]:
    """The model (calibrated once, on lseek1) against the other published figures."""
    f = the_fit or fit(cpu)
    t = f.timing
    out = []
    # Hansen: PCIDs make syscalls about 2x faster than without them (the extra cost).
    extra = {m: t.clock_ghz * 1e9 / f.model[m] - t.clock_ghz * 1e9 / f.model["off"]
             for m in ("pti", "pti-nopcid")}
    ratio = extra["pti-nopcid"] / extra["pti"]
    out.append(Comparison(
        "PCID roughly halves the cost isolation adds to a syscall", HANSEN_SOURCE,
        "about 2x (lseek1: +564 vs +1049 cycles at 4 GHz, 1.9x)",
        f"{ratio:.2f}x (+{extra['pti']:.0f} vs +{extra['pti-nopcid']:.0f} cycles)",
        1.5 <= ratio <= 2.5, "part of the fit's data: a consistency check, not a prediction"))
    # Gregg: 2% at 50k syscalls/s, climbing with the rate (small working set).
    small = 16
    at = {r: _overhead("pti-nopcid", r, small, cpu, t) for r in (1e4, 5e4, 2e5)}
    at_pcid = _overhead("pti", 5e4, small, cpu, t)
    out.append(Comparison(
        "overhead at 50k syscalls/s per CPU", "Gregg 2018-02-09 (brendangregg.com)",
        "about 2%",
        f"{at[5e4]:.1%} without PCID, {at_pcid:.1%} with PCID ({small} KiB working set)",
        0.01 <= at[5e4] <= 0.04,
        "Gregg's AWS instances and kernel 4.14 used PCID where available (per instance: "
        "unverified); the model brackets the figure between its two modes"))
    climbing = at[1e4] < at[5e4] < at[2e5]
    out.append(Comparison(
        "overhead climbs with the syscall rate", "Gregg 2018-02-09",
        "climbs as the rate increases",
        f"{at[1e4]:.2%} at 10k/s, {at[5e4]:.2%} at 50k/s, {at[2e5]:.2%} at 200k/s (no PCID)",
        climbing, "a direct consequence of a fixed cost per call"))
    # Gregg: a working set > 10 MB turns 1% into 7% (no PCID), less with PCID/huge pages.
    rate_1pct = _rate_for(0.01, small, cpu, t)
    big = 16384
    ws_big = _overhead("pti-nopcid", rate_1pct, big, cpu, t)
    ws_big_pcid = _overhead("pti", rate_1pct, big, cpu, t)
    ws_big_huge = _overhead("pti-nopcid", rate_1pct, big, cpu, t, huge=True)
    out.append(Comparison(
        "a working set > 10 MB turns a 1% overhead into 7%", "Gregg 2018-02-09",
        "1% -> 7%; reduced by PCID and by huge pages",
        f"1% -> {ws_big:.1%} at {rate_1pct / 1e3:.0f}k calls/s ({big // 1024} MiB, no PCID); "
        f"{ws_big_pcid:.1%} with PCID; {ws_big_huge:.1%} with 2 MiB pages",
        0.035 <= ws_big <= 0.14 and ws_big_pcid < ws_big and ws_big_huge < ws_big,
        "the figure at 16 MiB matches, but by another route: the model's overhead peaks "
        "near the STLB's reach (4 MiB) and falls beyond it (next row)"))
    # Gregg: beyond 10 MB the working set keeps costing more (and access patterns add ~10%).
    sizes = [1024, 4096, 16384, 65536]
    by_size = {w: _overhead("pti-nopcid", rate_1pct, w, cpu, t) for w in sizes}
    peak = max(by_size, key=by_size.get)
    out.append(Comparison(
        "working sets beyond 10 MB keep adding overhead", "Gregg 2018-02-09",
        "more than 10 MB costs additional overhead; cache access patterns up to +10%",
        ", ".join(f"{w // 1024} MiB {v:.1%}" for w, v in by_size.items())
        + f" (no PCID, {rate_1pct / 1e3:.0f}k calls/s): peaks at {peak // 1024} MiB",
        by_size[65536] >= by_size[16384] >= by_size[4096],
        "beyond the STLB's reach (1,536 x 4 KiB = 6 MiB) off misses as often as PTI, so the "
        "flush costs less; real walks of a big working set miss the data caches (page tables "
        "of 64 MiB are 128 KiB) and hit fewer paging-structure caches, which the model does "
        "not price: a known miss"))
    # Gregg: context switches add overhead like syscalls.
    cs = context_switch_added(cpu, t)
    sc = extra["pti-nopcid"]
    out.append(Comparison(
        "a context switch adds about what a syscall adds", "Gregg 2018-02-09",
        "context switches add overheads similar to the syscall rate",
        f"+{cs:.0f} cycles per switch vs +{sc:.0f} per syscall (no PCID)",
        0.5 <= cs / sc <= 2.0,
        "a switch is a timer interrupt (one entry and exit) plus switch_mm; without PCID "
        "both flush, with PCID only an ASID recycled from the 6-slot cache does"))
    # pti.rst: CR3 writes "on the order of a hundred cycles".
    out.append(Comparison(
        "a CR3 write costs on the order of a hundred cycles", "Documentation/x86/pti.rst",
        "order of 100 cycles (Hansen: a few hundred cycles per syscall)",
        f"{t.cr3_write:.0f} cycles (fitted)", 30 <= t.cr3_write <= 400,
        "fitted to lseek1 with pti.rst as a prior; the fit pulls it above 100 because PTI's "
        "other entry work (trampoline stack, per-CPU flush mask) is not simulated and lands "
        "in cr3_write"))
    return out


def context_switch_added(cpu: str, t: Timing, processes: int = 2) -> float:
    """Extra cycles per context switch under PTI without PCID, 2 processes, no user work
    beyond the switch itself."""
    kw = dict(cpu=cpu, processes=processes, rounds=6, work_cycles=0, working_set_kib=4,
              baseline=False)
    on = W.context_switch("pti-nopcid", **kw)
    off = W.context_switch("off", **kw)
    return (CostReport("pti-nopcid", cpu, on.counts, t).cycles_per_call
            - CostReport("off", cpu, off.counts, t).cycles_per_call)


def _rate_for(target: float, ws_kib: float, cpu: str, t: Timing) -> float:
    """The syscall rate at which PTI without PCID costs ``target`` (bisection on log rate)."""
    lo, hi = 1e3, 1e6
    for _ in range(12):
        mid = (lo * hi) ** 0.5
        if _overhead("pti-nopcid", mid, ws_kib, cpu, t) < target:
            lo = mid
        else:
            hi = mid
    return (lo * hi) ** 0.5
