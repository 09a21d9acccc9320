"""``kaiser-edu bench``: how fast is the simulated MMU, measured against baselines.

An absolute time means little on its own (this machine may be busy, the next one faster),
so every speed is also shown as a ratio against a baseline measured in the same run:

* the *memory floor*: a numba loop doing only the memory traffic of a page walk (4
  dependent loads per access over an array as big as the simulated page tables), with none
  of the MMU's logic. A simulator cannot beat this by much; the ratio says how much the TLB
  model, permission checks and bookkeeping cost on top of it;
* the *reference walk*: :func:`kaiser_edu.hw.walk.walk`, the readable pure-Python
  specification the lessons show. The ratio says what numba buys.

The run is a list of measurements (:data:`MEASUREMENTS`), each a small function that
records numbers into a :class:`Bench` and returns one progress line; :data:`TARGETS` says
which numbers have goals. Adding a measurement is writing one function decorated with
:func:`measurement` (and, if it has a goal, appending a :class:`Target`).

Heavy imports (numba, the simulator) happen inside the functions so that building the
command-line parser stays quick.
"""

from __future__ import annotations

import argparse
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
        ``reps`` times, timing only ``fn``; record the median time per item of ``n`` in ns,
        with the spread of the repetitions."""
        fn(*setup())
        samples = []
        for _ in range(self.reps):
            args = setup()
            t0 = time.perf_counter()
            fn(*args)
            samples.append((time.perf_counter() - t0) * 1e9 / n)
        return self.record(key, statistics.median(samples), samples)

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
    """Time one trace through the MMU with ``record=False`` (counters only, how lessons push
    millions of accesses) and with ``record=True`` (per-access result arrays too), and
    record the TLB counters of one run so the reader sees what was exercised."""
    from kaiser_edu.hw import Trace

    trace = Trace.accesses(va, "read", cpl=3)
    n = len(trace)
    counters: dict[str, int] = {}

    def counters_only(mmu: MMU) -> None:
        counters.update(mmu.run(trace, record=False).counters)

    def fresh_mmu() -> tuple[MMU]:
        return (bench.new_mmu(),)

    ns = bench.timed(f"{name}_ns", counters_only, n, setup=fresh_mmu)
    rec = bench.timed(f"{name}_recorded_ns", lambda mmu: mmu.run(trace), n, setup=fresh_mmu)
    if counters["accesses"] != n or counters["page_faults"] or counters["general_protection"]:
        raise RuntimeError(f"{name} trace did not translate cleanly: {counters}")
    l1 = bench.record(f"{name}_l1_hit_rate", counters["l1_hits"] / n)
    l2 = bench.record(f"{name}_l2_hit_rate", counters["l2_hits"] / n)
    walks = bench.record(f"{name}_walks", counters["walks"])
    bench.record(f"{name}_accesses", n)
    return (
        f"{ns:.2f} ns/access ({1e3 / ns:.0f} M/s; spread {bench.spread_text(f'{name}_ns')}), "
        f"recorded {rec:.2f} ns; {n:,} accesses: TLB L1 {l1:.1%}, L2 {l2:.1%}, "
        f"walks {walks:,.0f} ({walks / n:.1%})"
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


GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio: a multiplicative hash


def _floor_loads(table: np.ndarray, addrs: np.ndarray) -> np.uint64:
    """Per address: 4 loads from ``table``, each at an index computed from the value the
    previous load returned and from the address, so they cannot overlap within an access
    (as the 4 levels of a walk cannot); the next address does not wait for this one, so
    the CPU overlaps consecutive accesses, as it may in the simulator. The first index is
    a hash of the address and the table holds random qwords, so the loads spread over the
    whole table whatever the trace's locality: the floor depends on the table's size (how
    far down the cache hierarchy it lives), not on the trace. Compiled by
    :func:`_floor_kernel`."""
    n = np.uint64(table.shape[0])
    acc = np.uint64(0)
    for i in range(addrs.shape[0]):
        va = addrs[i]
        v = va * GOLDEN  # off the chain of loads: computed as soon as the address is known
        for level in range(4):
            h = (v ^ (va >> np.uint64(12 + 9 * level))) >> np.uint64(32)
            v = table[np.int64((h * n) >> np.uint64(32))]  # in [0, n): multiply, not modulo
        acc ^= v  # use the result, so the loads are not optimised away
    return acc


def _floor_kernel() -> Callable[[np.ndarray, np.ndarray], np.uint64]:
    """:func:`_floor_loads` compiled (and cached like the MMU's kernels); numba is imported
    only here, when the benchmark runs."""
    from numba import njit

    return njit(cache=True)(_floor_loads)


@measurement
def memory_floor(bench: Bench) -> str:
    """(d) The memory floor: the loop of :func:`_floor_loads` over a table of random qwords
    the size of the page tables of the machine (its frames in use x 4 KiB), driven by the
    addresses of each trace. What no walk-per-access simulator can beat."""
    mem, _ = bench.machine
    random_bytes = np.random.default_rng(SEED).bytes(mem.frames_in_use * 4096)
    table = np.frombuffer(random_bytes, dtype=np.uint64).copy()
    kernel = _floor_kernel()
    floor = bench.timed("floor_ns", lambda: kernel(table, bench.hit_va), len(bench.hit_va))
    floor_r = bench.timed(
        "floor_random_ns", lambda: kernel(table, bench.random_va), len(bench.random_va)
    )
    bench.record("floor_table_mib", table.nbytes / 2**20)
    hit = bench.record("hit_over_floor", bench.results["hit_ns"] / floor)
    rnd = bench.record("random_over_floor", bench.results["random_ns"] / floor_r)
    return (
        f"memory floor (4 dependent loads/access over {table.nbytes / 2**20:.2f} MiB): "
        f"{floor:.2f} ns/access (spread {bench.spread_text('floor_ns')}) for the hit trace's "
        f"addresses, {floor_r:.2f} ns for the random ones; hit trace {hit:.1f}x floor, "
        f"random trace {rnd:.1f}x floor"
    )


def _subprocess_env() -> dict[str, str]:
    """This process's environment (so the same NUMBA_CACHE_DIR), with this checkout of the
    package importable."""
    import kaiser_edu

    env = dict(os.environ)
    root = str(Path(kaiser_edu.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _python(code: str, *args: str, clean_rusage: bool = False) -> tuple[float, str]:
    """Run ``code`` in a fresh interpreter; return (wall-clock seconds, stdout).

    With ``clean_rusage`` the interpreter is started by a small shell rather than by this
    process. Linux keeps ``ru_maxrss`` across fork and exec, so a child exec'd from here
    would report *this* process's resident size as its own peak; a shell in between
    (a few MiB) makes the figure the child's own.
    """
    cmd = [sys.executable, "-c", code, *args]
    if clean_rusage and os.name == "posix":
        cmd = ["/bin/sh", "-c", '"$@"; exit $?', "sh", *cmd]  # runs, not execs, the child
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=_subprocess_env(), capture_output=True, text=True,
                          timeout=300)
    elapsed = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed, proc.stdout


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
    fill it; the second is timed). What a student waits for when a notebook restarts."""
    first, _ = _python(WARM_START_CODE)
    second, out = _python(WARM_START_CODE)
    if out.strip() != "0x5123":
        raise RuntimeError(f"warm-start program printed {out!r}, expected 0x5123")
    bench.record("warm_start_s", second)
    return f"warm start: {second:.2f} s (first run, which may compile: {first:.2f} s)"


PEAK_CODE = """
import json, resource, sys
import numpy as np
from kaiser_edu.hw import MMU, FrameAllocator, PageTables, PhysMem, Registers, Trace, bits
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
def hwm():  # the kernel's own peak of this address space, to cross-check
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmHWM:"))
    except OSError:
        return -1.0
n, base = int(sys.argv[1]), int(sys.argv[2])
imported = rss()
mem = PhysMem(); alloc = FrameAllocator(mem); pt = PageTables(mem, alloc)
pt.map_range(base, alloc.alloc_contig(n), n, flags=bits.PAGE_SHARED)
page = np.random.default_rng(1).integers(0, n, n, dtype=np.uint64)
trace = Trace.accesses(np.uint64(base) + (page << np.uint64(12)), "read", cpl=3)
result = MMU(mem, Registers.long_mode(cr3=pt.cr3())).run(trace)
assert result.counters["page_faults"] == 0, result.counters
print(json.dumps({"imported": imported, "peak": rss(), "vmhwm": hwm(),
                  "frames": mem.frames_in_use}))
"""


@measurement
def peak_memory(bench: Bench) -> str:
    """Peak memory: a fresh process maps ``size(PEAK_PAGES)`` 4 KiB pages, runs as many
    random accesses (recorded), and reports its maximum resident set. The figure includes
    Python, numpy and numba themselves (shown separately as the RSS after the imports)."""
    n = bench.size(PEAK_PAGES)
    seconds, out = _python(PEAK_CODE, str(n), str(BASE_VA), clean_rusage=True)
    info = json.loads(out.strip().splitlines()[-1])
    peak = bench.record("peak_rss_mib_1e6_pages", info["peak"])
    bench.record("rss_after_import_mib", info["imported"])
    if info["vmhwm"] > 0:
        bench.record("peak_vmhwm_mib_1e6_pages", info["vmhwm"])
    return (
        f"peak memory with {n:,} pages mapped and {n:,} random accesses: {peak:.0f} MiB "
        f"(kernel's VmHWM {info['vmhwm']:.0f} MiB; {info['imported']:.0f} MiB after the "
        f"imports; page tables {info['frames'] * 4 / 1024:.1f} MiB; took {seconds:.1f} s)"
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


@measurement
def syscalls(bench: Bench) -> str:
    """Simulated system-call round trips per second on the simulated kernel (entry, 8
    kernel accesses, exit): isolation off, Linux PTI with PCIDs, PTI without. One round trip
    is ~20 MMU operations: the entry code's fetches and its write to the TSS on the user
    CR3, the CR3 switches, the pushes of pt_regs, do_syscall_64's accesses, the exit through
    the entry stack and the first user instruction. Without PCID every CR3 write flushes the
    TLB, so each round trip walks again: the cost KPTI was measured to have."""
    from kaiser_edu.kernel import Kernel

    parts = []
    for name, options in (("off", {"isolation": "off"}), ("pti_pcid", {"isolation": "pti"}),
                          ("pti_nopcid", {"isolation": "pti", "pcid": False})):
        n = bench.size(SYSCALLS // (4 if name == "pti_nopcid" else 1))
        counters: dict[str, int] = {}

        def booted(options: dict = options) -> tuple:
            kernel = Kernel(seed=SEED, **options)
            task = kernel.spawn("bench")
            kernel.switch_to(task)
            kernel.syscall(task)  # faults the user text page in
            return kernel, task

        def batch(kernel, task, n: int = n, counters: dict = counters) -> None:
            counters.update(kernel.entry.syscall_batch(task, n))

        ns = bench.timed(f"syscall_{name}_ns", batch, n, setup=booted)
        rate = bench.record(f"syscall_{name}_per_s", 1e9 / ns)
        bench.record(f"syscall_{name}_walks_per_call", counters["walks"] / n)
        parts.append(f"{name} {rate / 1e6:.2f} M/s ({counters['walks'] / n:.1f} walks each)")
    return "syscall round trips: " + ", ".join(parts)


TARGETS: list[Target] = [
    Target("hit_ns", 6, why="high-locality trace: >= 150 M accesses/s"),
    Target("hit_ns", 2.5, per="floor_ns", why="close to the memory floor"),
    Target("random_ns", 40, why="random trace, nearly every access walks"),
    Target("reference_hit_ns", 100, at_most=False, per="hit_ns", why="numba vs pure Python"),
    Target("reference_random_ns", 100, at_most=False, per="random_ns",
           why="numba vs pure Python"),
    Target("warm_start_s", 1, why="fresh process, compile cache present"),
    Target("peak_rss_mib_1e6_pages", 400, why="1e6 mapped pages, 1e6 accesses"),
    Target("syscall_off_per_s", 10e6, at_most=False, why="simulated syscalls, no isolation"),
    Target("syscall_pti_pcid_per_s", 10e6, at_most=False, why="simulated syscalls, PTI + PCID"),
    Target("syscall_pti_nopcid_per_s", 1e6, at_most=False, why="PTI without PCID: flushes"),
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
          f"warm-up; spread = min..max", file=log, flush=True)
    bench = Bench(scale=args.scale, reps=args.reps)
    elapsed = run_bench(bench, log)
    rows = evaluate(bench.results)
    missed = [t.label for t, _, ok in rows if not ok]
    if args.json:
        out = dict(bench.results, elapsed_s=elapsed, scale=args.scale, reps=args.reps)
        out["spread"] = {k: list(v) for k, v in bench.spread.items()}
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
