"""``kaiser-edu bench``: how fast is the simulated MMU, measured against baselines.

An absolute time means little on its own (this machine may be busy, the next one faster),
so every speed is also shown as a ratio against a baseline measured in the same run:

* the *limit*: :mod:`kaiser_edu.perf.limit`, the least work an exact simulator must do for
  these traces (the same TLB geometry and LRU, a dense copy of the page tables, A bits
  set, no PCID, global-page or permission logic). Before timing, the bench asserts that
  its physical addresses, TLB levels and counters equal the engine's on both traces: a
  limit that computed something else would not be one. Engine and limit are timed
  alternately, repetition by repetition, and the ratio kept is the median of the
  per-repetition ratios, so that a busy machine slows both sides of each ratio alike;
* the *reference walk*: :func:`kaiser_edu.hw.walk.walk`, the readable pure-Python
  specification the lessons show. The ratio says what numba buys.

Times are the process's CPU time (:func:`time.process_time`): on a shared machine
wall-clock also counts the time the process waited for a CPU. Wall-clock is kept beside it
(``wall`` in the JSON) so that the two can be compared.

The run is a list of measurements (:data:`MEASUREMENTS`), each a small function that
records numbers into a :class:`Bench` and returns one progress line; :data:`TARGETS` says
which numbers have goals. Adding a measurement is writing one function decorated with
:func:`measurement` (and, if it has a goal, appending a :class:`Target`).

Heavy imports (numba, the simulator) happen inside the functions so that building the
command-line parser stays quick.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np  # also read by the numba kernel below, as a module global

if TYPE_CHECKING:
    from kaiser_edu.hw import MMU, PhysMem, Registers

# Sizes at --scale 1 (the issue's figures).
PAGES = 100_000  # mapped 4 KiB pages of the machine that traces (a) and (b) run on
HIT_ACCESSES = 10_000_000  # trace (a): sequential 8-byte steps
RANDOM_ACCESSES = 2_000_000  # trace (b): uniformly random qwords of the mapped pages
REFERENCE_SAMPLE = 20_000  # accesses of each trace given to the pure-Python walk
PEAK_PAGES = 1_000_000  # pages mapped (and random accesses run) for the peak-memory figure
SCALE_PAGES = 10_000_000  # pages mapped (and random accesses run) for the large-machine figures
SCALE_BATCH = 1_000_000  # accesses per MMU call there (a trace is fed in batches, as lessons do)
SYSCALLS = 2_000_000  # simulated system calls per configuration (a quarter without PCID)
BASE_VA = 0x7F00_0000_0000  # where the pages are mapped (user space)
SEED = 20180103  # the day KAISER/KPTI became public


# --- the run's state ----------------------------------------------------------------------
@dataclass
class Bench:
    """One benchmark run: its settings, the machine and traces it measures (built once, on
    first use), and the numbers recorded so far."""

    scale: float = 1.0
    reps: int = 5
    results: dict[str, float] = field(default_factory=dict)
    spread: dict[str, tuple[float, float]] = field(default_factory=dict)
    wall: dict[str, float] = field(default_factory=dict)  # median wall-clock, beside CPU time

    def size(self, n: int, minimum: int = 1000) -> int:
        """``n`` scaled by ``--scale`` (never below ``minimum``)."""
        return max(minimum, round(n * self.scale))

    def record(self, key: str, value: float, samples: list[float] | None = None) -> float:
        """Store a result; with ``samples``, also their (min, max) as its spread."""
        self.results[key] = float(value)
        if samples:
            self.spread[key] = (min(samples), max(samples))
        return float(value)

    def timed(self, key: str, fn: Callable[..., Any], n: int,
              setup: Callable[[], tuple] = tuple) -> float:
        """Run ``fn(*setup())`` once to warm up (numba compiles on the first call), then
        ``reps`` times, timing only ``fn``; record the median CPU time per item of ``n`` in
        ns, with the spread of the repetitions (and the median wall-clock in :attr:`wall`)."""
        return self.paired({key: (fn, setup)}, n)[key]

    def paired(self, runs: dict[str, tuple[Callable[..., Any], Callable[[], tuple]]], n: int,
               ratio: tuple[str, str, str] | None = None) -> dict[str, float]:
        """Time several ``(fn, setup)`` runs alternately: a warm-up of each, then ``reps``
        rounds that time each once, in turn. Records each key as :meth:`timed` does; with
        ``ratio = (key, numerator, denominator)`` also the median of the per-round ratios
        (with their spread), which a machine busy with other work disturbs far less than
        a ratio of two separately taken medians."""
        for fn, setup in runs.values():
            fn(*setup())
        cpu: dict[str, list[float]] = {key: [] for key in runs}
        wall: dict[str, list[float]] = {key: [] for key in runs}
        for _ in range(self.reps):
            for key, (fn, setup) in runs.items():
                args = setup()
                w0, c0 = time.perf_counter(), time.process_time()
                fn(*args)
                c1, w1 = time.process_time(), time.perf_counter()
                cpu[key].append((c1 - c0) * 1e9 / n)
                wall[key].append((w1 - w0) * 1e9 / n)
        out = {}
        for key in runs:
            out[key] = self.record(key, statistics.median(cpu[key]), cpu[key])
            self.wall[key] = statistics.median(wall[key])
        if ratio:
            name, num, den = ratio
            per_round = [a / b for a, b in zip(cpu[num], cpu[den])]
            out[name] = self.record(name, statistics.median(per_round), per_round)
        return out

    def spread_text(self, key: str) -> str:
        """The spread of ``key``'s samples as "min..max"."""
        lo, hi = self.spread.get(key, (math.nan, math.nan))
        return f"{_num(lo)}..{_num(hi)}"

    # --- the machine of traces (a) and (b), built on first use --------------------------
    @cached_property
    def machine(self) -> tuple[PhysMem, Registers]:
        """(mem, regs): ``size(PAGES)`` user read-write 4 KiB pages mapped at BASE_VA."""
        from kaiser_edu.hw import FrameAllocator, PageTables, PhysMem, Registers, bits

        mem = PhysMem()
        alloc = FrameAllocator(mem)
        pt = PageTables(mem, alloc)
        n = self.size(PAGES)
        pt.map_range(BASE_VA, alloc.alloc_contig(n), n, flags=bits.PAGE_SHARED)
        self.pristine = copy.deepcopy(mem)  # before any run sets A bits: for the checks
        return mem, Registers.long_mode(cr3=pt.cr3())

    @cached_property
    def hit_va(self) -> np.ndarray:
        """Trace (a): consecutive qwords from BASE_VA, 512 accesses per page."""
        n = self.size(HIT_ACCESSES)
        return np.uint64(BASE_VA) + np.arange(n, dtype=np.uint64) * np.uint64(8)

    @cached_property
    def random_va(self) -> np.ndarray:
        """Trace (b): a random qword of a random mapped page, each access."""
        rng = np.random.default_rng(SEED)
        n = self.size(RANDOM_ACCESSES)
        page = rng.integers(0, self.size(PAGES), n, dtype=np.uint64)
        qword = rng.integers(0, 512, n, dtype=np.uint64)
        return np.uint64(BASE_VA) + (page << np.uint64(12)) + (qword << np.uint64(3))

    def new_mmu(self) -> MMU:
        """A fresh MMU (cold TLB) on the shared machine, so every repetition starts alike."""
        from kaiser_edu.hw import MMU

        mem, regs = self.machine
        return MMU(mem, regs)


def _num(x: float) -> str:
    """A number for people: 3 significant digits, thousands separated, no exponent."""
    if math.isnan(x):
        return "n/a"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


Measurement = Callable[[Bench], str]
MEASUREMENTS: list[Measurement] = []


def measurement(fn: Measurement) -> Measurement:
    """Register ``fn`` as a measurement: it records numbers with :meth:`Bench.record` (or
    :meth:`Bench.timed`) and returns a one-line summary for the progress log."""
    MEASUREMENTS.append(fn)
    return fn


# --- measurements, in the order they run ----------------------------------------------------
def _mmu_trace(bench: Bench, name: str, va: np.ndarray) -> str:
    """Check the limit exact on one trace, then time the trace through the MMU with
    ``record=False`` (counters only, how lessons push millions of accesses) alternately
    with the limit, and with ``record=True`` (per-access result arrays too); record the
    TLB counters of one run so the reader sees what was exercised."""
    from kaiser_edu.hw import MMU, Trace
    from kaiser_edu.perf.limit import Limit, check_exact

    mem, regs = bench.machine
    # exactness, from the state before any run (A bits as mapped) on both sides
    check_exact(lambda: MMU(copy.deepcopy(bench.pristine), regs),
                Limit(bench.pristine, regs.cr3), va)
    bench.record(f"{name}_limit_exact", 1.0)
    limit = Limit(mem, regs.cr3)
    trace = Trace.accesses(va, "read", cpl=3)
    n = len(trace)
    counters: dict[str, int] = {}

    def counters_only(mmu: MMU) -> None:
        counters.update(mmu.run(trace, record=False).counters)

    def fresh_mmu() -> tuple[MMU]:
        return (bench.new_mmu(),)

    got = bench.paired({f"{name}_ns": (counters_only, fresh_mmu),
                        f"limit_{name}_ns": (limit.run, lambda: (va,))}, n,
                       ratio=(f"{name}_over_limit", f"{name}_ns", f"limit_{name}_ns"))
    ns, lim, ratio = got[f"{name}_ns"], got[f"limit_{name}_ns"], got[f"{name}_over_limit"]
    rec = bench.timed(f"{name}_recorded_ns", lambda mmu: mmu.run(trace), n, setup=fresh_mmu)
    if counters["accesses"] != n or counters["page_faults"] or counters["general_protection"]:
        raise RuntimeError(f"{name} trace did not translate cleanly: {counters}")
    l1 = bench.record(f"{name}_l1_hit_rate", counters["l1_hits"] / n)
    l2 = bench.record(f"{name}_l2_hit_rate", counters["l2_hits"] / n)
    walks = bench.record(f"{name}_walks", counters["walks"])
    bench.record(f"{name}_accesses", n)
    return (
        f"{ns:.2f} ns/access ({1e3 / ns:.0f} M/s; spread {bench.spread_text(f'{name}_ns')}), "
        f"recorded {rec:.2f} ns; limit {lim:.2f} ns, engine/limit {ratio:.2f} (spread "
        f"{bench.spread_text(f'{name}_over_limit')}; exact); {n:,} accesses: TLB L1 "
        f"{l1:.1%}, L2 {l2:.1%}, walks {walks:,.0f} ({walks / n:.1%})"
    )


@measurement
def hit_trace(bench: Bench) -> str:
    """(a) High locality: sequential 8-byte steps, so 511 of every 512 accesses hit the L1
    TLB. This is the cost of the common case: a TLB probe and a permission check."""
    return "hit trace (a): " + _mmu_trace(bench, "hit", bench.hit_va)


@measurement
def random_trace(bench: Bench) -> str:
    """(b) No locality: each access a random page of the mapped ones, far more pages than
    the TLB holds, so nearly every access misses both TLB levels and walks the tables."""
    return "random trace (b): " + _mmu_trace(bench, "random", bench.random_va)


def _reference(bench: Bench, name: str, va: np.ndarray) -> str:
    """Time :func:`~kaiser_edu.hw.walk.walk` on the first ``size(REFERENCE_SAMPLE)``
    addresses of a trace (already timed through the MMU) and compare."""
    from kaiser_edu.hw import walk

    mem, regs = bench.machine
    sample = [int(v) for v in va[: bench.size(REFERENCE_SAMPLE, 100)]]

    def walk_all() -> None:
        for v in sample:
            walk(mem, regs, v, "read", 3)

    ns = bench.timed(f"reference_{name}_ns", walk_all, len(sample))
    speedup = ns / bench.results[f"{name}_ns"]
    return (
        f"reference walk on {len(sample):,} accesses of the {name} trace: {ns:,.0f} ns/access "
        f"(spread {bench.spread_text(f'reference_{name}_ns')}); numba is {speedup:,.0f}x faster"
    )


@measurement
def reference_walks(bench: Bench) -> str:
    """(c) The pure-Python walk on the first accesses of each trace. It has no TLB, so it
    walks every access; the ratio to the numba MMU is what compiling the model buys."""
    lines = [_reference(bench, name, va) for name, va in
             (("hit", bench.hit_va), ("random", bench.random_va))]
    return "\n  ".join(lines)


def _subprocess_env() -> dict[str, str]:
    """This process's environment (so the same NUMBA_CACHE_DIR), with this checkout of the
    package importable."""
    import kaiser_edu

    env = dict(os.environ)
    root = str(Path(kaiser_edu.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _python(code: str, *args: str, clean_rusage: bool = False) -> tuple[float, str, float]:
    """Run ``code`` in a fresh interpreter; return (wall-clock seconds, stdout, CPU
    seconds of the child: user + system).

    With ``clean_rusage`` the interpreter is started by a small shell rather than by this
    process. Linux keeps ``ru_maxrss`` across fork and exec, so a child exec'd from here
    would report *this* process's resident size as its own peak; a shell in between
    (a few MiB) makes the figure the child's own.
    """
    import resource

    cmd = [sys.executable, "-c", code, *args]
    if clean_rusage and os.name == "posix":
        cmd = ["/bin/sh", "-c", '"$@"; exit $?', "sh", *cmd]  # runs, not execs, the child
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=_subprocess_env(), capture_output=True, text=True,
                          timeout=600)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode:
        raise RuntimeError(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed, proc.stdout, cpu


WARM_START_CODE = """
from kaiser_edu.hw import MMU, FrameAllocator, PageTables, PhysMem, Registers, bits
mem = PhysMem(); alloc = FrameAllocator(mem); pt = PageTables(mem, alloc)
pt.map(0x400000, 0x5000, flags=bits.PAGE_SHARED)
print(hex(MMU(mem, Registers.long_mode(cr3=pt.cr3())).access(0x400123, "read", cpl=3).pa))
"""


@measurement
def warm_start(bench: Bench) -> str:
    """(e) Warm start: a fresh Python imports the package, builds a one-page machine and
    translates one access, with numba's compile cache present (the first of two runs may
    fill it; the second is timed, in CPU time of the child, wall-clock beside it). What a
    student waits for when a notebook restarts."""
    _, _, first = _python(WARM_START_CODE)
    wall, out, cpu = _python(WARM_START_CODE)
    if out.strip() != "0x5123":
        raise RuntimeError(f"warm-start program printed {out!r}, expected 0x5123")
    bench.record("warm_start_s", cpu)
    bench.wall["warm_start_s"] = wall
    return (f"warm start: {cpu:.2f} s CPU, {wall:.2f} s wall-clock (first run, which may "
            f"compile: {first:.2f} s CPU)")


SCALE_CODE = """
import json, resource, sys, time
import numpy as np
from kaiser_edu.hw import MMU, FrameAllocator, PageTables, PhysMem, Registers, Trace, bits
from kaiser_edu.perf.limit import Limit
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
def hwm():  # the kernel's own peak of this address space, to cross-check
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmHWM:"))
    except OSError:
        return -1.0
n, base, batch, seed = (int(a) for a in sys.argv[1:5])
imported = rss()
mem = PhysMem(); alloc = FrameAllocator(mem); pt = PageTables(mem, alloc)
pt.map_range(base, alloc.alloc_contig(n), n, flags=bits.PAGE_SHARED)
regs = Registers.long_mode(cr3=pt.cr3())
def batches():  # n random accesses (a random qword of a random page), batch by batch
    rng = np.random.default_rng(seed)
    for start in range(0, n, batch):
        m = min(batch, n - start)
        page = rng.integers(0, n, m, dtype=np.uint64)
        qword = rng.integers(0, 512, m, dtype=np.uint64)
        yield np.uint64(base) + (page << np.uint64(12)) + (qword << np.uint64(3))
mmu = MMU(mem, regs)
MMU(mem, regs).run(Trace.accesses([base], "read", cpl=3))  # load the compiled kernel
cpu = wall = 0.0
for va in batches():
    trace = Trace.accesses(va, "read", cpl=3)
    w0, c0 = time.perf_counter(), time.process_time()
    mmu.run(trace, record=False)
    cpu += time.process_time() - c0
    wall += time.perf_counter() - w0
peak, vmhwm = rss(), hwm()  # before the limit's copy of the tables
c = mmu.counters
assert c["page_faults"] == 0 and c["accesses"] == n, c
limit = Limit(mem, regs.cr3)
limit.run(np.array([base], dtype=np.uint64))  # load the compiled kernel
lcpu = 0.0
totals = dict.fromkeys(("l1_hits", "l2_hits", "walks", "walk_reads"), 0)
for i, va in enumerate(batches()):
    c0 = time.process_time()
    lc, _, _ = limit.run(va, fresh=i == 0)
    lcpu += time.process_time() - c0
    for k in totals:
        totals[k] += lc[k]
assert all(totals[k] == c[k] for k in totals), ("limit differs", totals, c)  # (A bits: see doc)
print(json.dumps({"imported": imported, "peak": peak, "vmhwm": vmhwm,
                  "frames": mem.frames_in_use, "ns": cpu * 1e9 / n, "wall_ns": wall * 1e9 / n,
                  "limit_ns": lcpu * 1e9 / n, "counters": c}))
"""


@measurement
def large_machine(bench: Bench) -> str:
    """A large machine, in a fresh process: ``size(SCALE_PAGES)`` 4 KiB pages mapped, as
    many random accesses run through the MMU (counters only, in batches of
    ``SCALE_BATCH``, as lessons push long traces), then through the limit. Reports the
    process's peak resident set (which includes Python, numpy and numba themselves, shown
    separately as the RSS after the imports) and the cost per access beside the limit's:
    it should grow with the machine only as far as the host's caches make the limit's
    grow. One run of each (minutes otherwise), so the ratio is noisier than the traces'.
    The limit's TLB counters must equal the engine's (its A-bit writes are not compared:
    the engine ran first and set them)."""
    n = bench.size(SCALE_PAGES)
    seconds, out, _ = _python(SCALE_CODE, str(n), str(BASE_VA), str(SCALE_BATCH), str(SEED),
                           clean_rusage=True)
    info = json.loads(out.strip().splitlines()[-1])
    peak = bench.record("peak_rss_mib_1e7_pages", info["peak"])
    bench.record("rss_after_import_mib", info["imported"])
    if info["vmhwm"] > 0:
        bench.record("peak_vmhwm_mib_1e7_pages", info["vmhwm"])
    ns = bench.record("random_ns_1e7_pages", info["ns"])
    bench.wall["random_ns_1e7_pages"] = info["wall_ns"]
    lim = bench.record("limit_random_ns_1e7_pages", info["limit_ns"])
    ratio = bench.record("random_1e7_over_limit", ns / lim)
    return (
        f"{n:,} pages mapped, {n:,} random accesses: {ns:.1f} ns/access, limit {lim:.1f} "
        f"ns ({ratio:.2f}x); peak memory {peak:.0f} MiB (kernel's VmHWM "
        f"{info['vmhwm']:.0f} MiB; {info['imported']:.0f} MiB after the imports; page "
        f"tables {info['frames'] * 4 / 1024:.1f} MiB; took {seconds:.1f} s)"
    )


# --- targets -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A goal for ``key`` (divided by ``per`` when given): at most or at least ``limit``."""

    key: str
    limit: float
    at_most: bool = True
    per: str | None = None
    why: str = ""

    @property
    def label(self) -> str:
        name = f"{self.key} / {self.per}" if self.per else self.key
        return f"{name} {'<=' if self.at_most else '>='} {self.limit:g}"

    def value(self, results: dict[str, float]) -> float:
        """The measured quantity, or NaN if it was not measured."""
        try:
            return results[self.key] / results[self.per] if self.per else results[self.key]
        except (KeyError, ZeroDivisionError):
            return math.nan

    def passed(self, results: dict[str, float]) -> bool:
        """True if met; a quantity that was not measured (NaN) is a miss."""
        v = self.value(results)
        return v <= self.limit if self.at_most else v >= self.limit


#: The kernel configurations whose system calls are timed (also tools/kernel_ab.py's).
SYSCALL_MODES = {"off": {"isolation": "off"}, "pti_pcid": {"isolation": "pti"},
                 "pti_nopcid": {"isolation": "pti", "pcid": False}}


def syscall_ready(mode: str) -> tuple:
    """(kernel, task) booted in ``mode`` of :data:`SYSCALL_MODES`, the task running and one
    system call made (it faults the user text page in), ready for ``syscall_batch``."""
    from kaiser_edu.kernel import Kernel

    kernel = Kernel(seed=SEED, **SYSCALL_MODES[mode])
    task = kernel.spawn("bench")
    kernel.switch_to(task)
    kernel.syscall(task)
    return kernel, task


@measurement
def syscalls(bench: Bench) -> str:
    """Simulated system-call round trips per second on the simulated kernel (entry, 8
    kernel accesses, exit): isolation off, Linux PTI with PCIDs, PTI without. One round trip
    is ~20 MMU operations: the entry code's fetches and its write to the TSS on the user
    CR3, the CR3 switches, the pushes of pt_regs, do_syscall_64's accesses, the exit through
    the entry stack and the first user instruction. Without PCID every CR3 write flushes the
    TLB, so each round trip walks again: the cost KPTI was measured to have."""
    parts = []
    for name in SYSCALL_MODES:
        n = bench.size(SYSCALLS // (4 if name == "pti_nopcid" else 1))
        counters: dict[str, int] = {}

        def booted(name: str = name) -> tuple:
            return syscall_ready(name)

        def batch(kernel, task, n: int = n, counters: dict = counters) -> None:
            counters.update(kernel.entry.syscall_batch(task, n))

        ns = bench.timed(f"syscall_{name}_ns", batch, n, setup=booted)
        rate = bench.record(f"syscall_{name}_per_s", 1e9 / ns)
        bench.record(f"syscall_{name}_walks_per_call", counters["walks"] / n)
        parts.append(f"{name} {rate / 1e6:.2f} M/s ({counters['walks'] / n:.1f} walks each)")
    return "syscall round trips: " + ", ".join(parts)


TARGETS: list[Target] = [
    Target("hit_over_limit", 1.5, why="hit trace: engine / limit, alternated in one run"),
    Target("random_over_limit", 1.5, why="random trace: engine / limit, alternated in one run"),
    Target("hit_limit_exact", 1, at_most=False, why="limit equals the engine on trace (a)"),
    Target("random_limit_exact", 1, at_most=False, why="limit equals the engine on trace (b)"),
    Target("reference_hit_ns", 100, at_most=False, per="hit_ns", why="numba vs pure Python"),
    Target("reference_random_ns", 100, at_most=False, per="random_ns",
           why="numba vs pure Python"),
    Target("warm_start_s", 1, why="fresh process, compile cache present"),
    Target("peak_rss_mib_1e7_pages", 300, why="1e7 mapped pages, 1e7 accesses"),
    Target("syscall_off_per_s", 10e6, at_most=False, why="simulated syscalls, no isolation"),
    Target("syscall_pti_pcid_per_s", 10e6, at_most=False, why="simulated syscalls, PTI + PCID"),
    Target("syscall_pti_nopcid_per_s", 3e6, at_most=False, why="PTI without PCID: flushes"),
]


def evaluate(results: dict[str, float],
             targets: list[Target] | None = None) -> list[tuple[Target, float, bool]]:
    """(target, measured value, passed) for each target."""
    return [(t, t.value(results), t.passed(results)) for t in (targets or TARGETS)]


def format_table(rows: list[tuple[Target, float, bool]]) -> str:
    """The final table: one line per target with value, goal and PASS/MISS."""
    width = max(len(t.label) for t, _, _ in rows)
    lines = [f"{'target':<{width}}  {'measured':>10}  result  note"]
    for t, value, ok in rows:
        shown = "not run" if math.isnan(value) else _num(value)
        lines.append(f"{t.label:<{width}}  {shown:>10}  {'PASS' if ok else 'MISS':6}  {t.why}")
    return "\n".join(lines)


# --- the command -----------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object on stdout (progress goes to stderr)")
    parser.add_argument("--check", action="store_true",
                        help="exit with status 1 if any target is missed")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the sizes of traces and machines (e.g. 0.01 for a "
                             "smoke test; targets are meant for 1)")
    parser.add_argument("--reps", type=int, default=5,
                        help="timed repetitions after the warm-up run (the median is kept)")


def run_bench(bench: Bench, log: IO[str]) -> float:
    """Run every registered measurement, printing its line as it finishes; returns the
    elapsed seconds."""
    t0 = time.perf_counter()
    for fn in MEASUREMENTS:
        line = fn(bench)
        print(f"[{time.perf_counter() - t0:5.1f} s] {line}", file=log, flush=True)
    return time.perf_counter() - t0


def run(args: argparse.Namespace) -> int:
    if args.scale <= 0 or args.reps < 1:
        print("kaiser-edu bench: --scale must be > 0 and --reps >= 1", file=sys.stderr)
        return 2
    log = sys.stderr if args.json else sys.stdout
    print(f"kaiser-edu bench: scale {args.scale:g}, median of {args.reps} runs after a "
          f"warm-up, process CPU time; spread = min..max", file=log, flush=True)
    bench = Bench(scale=args.scale, reps=args.reps)
    elapsed = run_bench(bench, log)
    rows = evaluate(bench.results)
    missed = [t.label for t, _, ok in rows if not ok]
    if args.json:
        out = dict(bench.results, elapsed_s=elapsed, scale=args.scale, reps=args.reps)
        out["spread"] = {k: list(v) for k, v in bench.spread.items()}
        out["wall"] = dict(bench.wall)
        out["timer"] = "process CPU time (time.process_time); wall-clock medians in 'wall'"
        out["targets"] = [{"target": t.label, "value": v, "pass": ok} for t, v, ok in rows]
        print(f"done in {elapsed:.1f} s; missed: {', '.join(missed) or 'none'}", file=log)
        print(json.dumps(out, indent=1))
    else:
        print(f"\ndone in {elapsed:.1f} s" + ("" if args.scale == 1 else
              f" (scale {args.scale:g}: targets are meant for scale 1)"))
        print(format_table(rows))
    return 1 if args.check and missed else 0


@measurement
def perf_sweep(bench: Bench) -> str:
    """The performance lab's Gregg-style sweep (:func:`kaiser_edu.perf.workloads.sweep`):
    10 syscall rates x 8 working sets x 4 modes (off and three isolation modes), each point
    a simulated syscall loop with user work on the working set, priced by the cost model.
    Timed in process CPU time, after a small warm-up sweep (boot, numba caches loaded). At
    a scale below 1 only 2 rates x 2 working sets run (a smoke test). Also: one simulated
    lseek-like syscall inside the lab's workload traces (PTI with PCID, no user work), to
    hold against the engine's own syscall figure (``syscall_pti_pcid_ns``)."""
    from kaiser_edu.perf import workloads as W

    rates, sets = W.GREGG_RATES, W.GREGG_WORKING_SETS_KIB
    if bench.scale < 1:
        rates, sets = rates[3:5], sets[:2]
    W.sweep(rates[:1], sets[:1], W.SWEEP_MODES)  # warm-up
    t0 = time.process_time()
    s = W.sweep(rates, sets, W.SWEEP_MODES)
    cpu_s = bench.record("perf_sweep_s", time.process_time() - t0)
    ns_op = bench.record("perf_sweep_ns_per_op", cpu_s * 1e9 / s.mmu_ops)
    machine = W.Machine("pti", max_ws_kib=4)
    calls = bench.size(SYSCALLS // 4)
    machine.run_syscalls(0, 4, calls=min(calls, 1000), warmup=0)  # warm-up
    t0 = time.process_time()
    machine.run_syscalls(0, 4, calls=calls, warmup=0)
    per_call = bench.record("perf_syscall_ns", (time.process_time() - t0) * 1e9 / calls)
    engine = bench.results.get("syscall_pti_pcid_ns", math.nan)
    points = s.cycles_per_call.size
    return (f"perf sweep: {len(rates)} rates x {len(sets)} working sets x "
            f"{len(s.modes) + 1} modes = {points} points in {cpu_s:.2f} s CPU; "
            f"{s.syscalls:,} syscalls and {s.mmu_ops:,} MMU ops simulated, "
            f"{ns_op:.1f} ns per op; one workload syscall {per_call:.0f} ns "
            f"(engine's syscall_batch: {_num(engine)} ns)")


TARGETS.extend([
    Target("perf_sweep_s", 10, why="Gregg sweep, 10 rates x 8 sets x 4 modes, CPU s"),
    Target("perf_syscall_ns", 1.5, per="syscall_pti_pcid_ns",
           why="a workload syscall costs what the engine's does"),
])
# --- the side-channel lab (kaiser_edu.attacks): appended as one block ------------------------
def _cpu_seconds(bench: Bench, key: str, fn: Callable[..., Any],
                 setup: Callable[[], tuple] = tuple) -> float:
    """Like :meth:`Bench.timed`, but whole runs in seconds of *process* CPU time (the machine
    is shared: wall-clock time would count the neighbours): a warm-up run (numba compiles),
    then ``reps`` runs; the median is recorded with its spread."""
    fn(*setup())
    samples = []
    for _ in range(bench.reps):
        args = setup()
        t0 = time.process_time()
        fn(*args)
        samples.append(time.process_time() - t0)
    return bench.record(key, statistics.median(samples), samples)


@measurement
def attack_meltdown_4k(bench: Bench) -> str:
    """Meltdown leaking 4 KiB with isolation off on the Skylake model, warm (compiled,
    machine booted): a victim page of seeded random bytes read through the direct map.
    Baseline: the same 4,096 transient loads through the MMU alone (one batch), so the ratio
    is what the Flush+Reload receiver (256 reloads per attempt, in numba) adds."""
    from kaiser_edu.attacks import meltdown as m
    from kaiser_edu.attacks.transient import transient_loads
    from kaiser_edu.kernel import Kernel

    kernel = Kernel(isolation="off", cpu="skylake", seed=SEED)
    attacker = kernel.spawn("attacker")
    page = np.random.default_rng(SEED).bytes(4096)
    victim, va = m.spawn_victim(kernel, page)
    address = m.direct_map_address(kernel, victim, va)
    result: dict[str, m.LeakResult] = {}

    def leak() -> None:
        result["r"] = m.leak(kernel, attacker, address, 4096, seed=SEED)

    def loads() -> None:
        transient_loads(kernel, np.arange(address, address + 4096, dtype=np.uint64))

    s = _cpu_seconds(bench, "attack_leak_4k_s", leak)
    base = _cpu_seconds(bench, "attack_leak_4k_mmu_s", loads)
    r = result["r"]
    acc = bench.record("attack_leak_4k_accuracy", r.accuracy)
    rate = bench.record("attack_leak_4k_sim_bytes_per_s", r.bytes_per_second)
    bench.record("attack_leak_4k_over_mmu", s / base if base else math.nan)
    return (f"Meltdown, 4 KiB, isolation off: {s:.3f} s CPU (spread "
            f"{bench.spread_text('attack_leak_4k_s')}), {s / base if base else math.nan:,.0f}x "
            f"the MMU pass alone; {acc:.2%} right; simulated {rate / 1024:,.1f} KiB/s")


@measurement
def attack_kaslr(bench: Bench) -> str:
    """A full KASLR break on the Skylake model with isolation off: every candidate slot of
    the text (472 x 2 MiB) and of the direct map (1 GiB steps), 16 rounds each plus the
    calibration and verification probes, for each method. The target is on prefetch (the
    one that scans both regions with one op per probe)."""
    from kaiser_edu.attacks.kaslr import METHODS, break_kaslr
    from kaiser_edu.kernel import Kernel

    def booted() -> tuple:
        kernel = Kernel(isolation="off", cpu="skylake", seed=SEED)
        return kernel, kernel.spawn("attacker")

    parts = []
    for method in METHODS:
        found: dict[str, bool] = {}

        def run_break(kernel, attacker, method: str = method, found: dict = found) -> None:
            r = break_kaslr(kernel, attacker, method=method, seed=SEED)
            found["ok"] = r.text_correct and r.direct_map_correct is not False

        key = "attack_kaslr_s" if method == "prefetch" else f"attack_kaslr_{method}_s"
        s = _cpu_seconds(bench, key.replace("-", "_"), run_break, setup=booted)
        parts.append(f"{method} {s:.3f} s ({'correct' if found['ok'] else 'WRONG'})")
    return "full KASLR break, isolation off: " + ", ".join(parts)


TARGETS += [
    Target("attack_leak_4k_s", 2, why="Meltdown: 4 KiB, isolation off, warm (CPU s)"),
    Target("attack_leak_4k_accuracy", 0.99, at_most=False, why="Meltdown: bytes right"),
    Target("attack_kaslr_s", 1, why="full KASLR break by prefetch (CPU s)"),
]
