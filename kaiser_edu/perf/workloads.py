"""Workloads that run on the simulated kernel and come back as counters (then priced).

Each workload boots a :class:`~kaiser_edu.kernel.machine.Kernel` in one isolation mode,
runs user code and kernel entries *through the simulated MMU*, and returns a
:class:`~kaiser_edu.perf.cost.Counts`; :mod:`kaiser_edu.perf.cost` turns that into cycles.

Modes (:data:`MODES`), as Hansen's measurements name them:

* ``off``: no isolation (``nopti``);
* ``kaiser``: the 2017 Graz patch as simulated (shadow PGD, no PCIDs, no global pages);
* ``pti``: Linux PTI as merged, with PCIDs where the CPU has them ("KAISER+PCID" in
  Hansen's v2 cover letter: his series already used PCIDs, so it is this mode, not ours
  called kaiser);
* ``pti-nopcid``: PTI on a kernel booted with ``nopcid``: every CR3 write flushes.

The user program (:class:`Machine`) is Gregg's microbenchmark in miniature: between two
system calls it computes for ``work_cycles`` cycles, and while doing so touches one random
page of its working set every ``touch_cycles`` cycles (an assumed density: one new page per
``touch_cycles`` cycles of work; the touched pages are drawn from a seeded generator, the
same for every mode, so ``off`` and PTI run the *same* program). The working set is mapped
up front (MAP_POPULATE) with 4 KiB pages or 2 MiB pages (huge pages), so the steady state
has no page faults and every cost difference between modes is a TLB or CR3 event.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.kernel.timing import TIMINGS, timing
from kaiser_edu.perf.cost import CostReport, Counts

MODES: dict[str, dict] = {
    "off": {"isolation": "off"},
    "kaiser": {"isolation": "kaiser"},
    "pti": {"isolation": "pti"},
    "pti-nopcid": {"isolation": "pti", "pcid": False},
}
WS_BASE = 0x10_0000_0000  # where the working set is mapped (1 GiB-aligned user address)
MAX_WS_KIB = 64 * 1024  # the largest working set a Machine maps by default
TOUCH_CYCLES = 200  # assumed: user work per touch of a (random) working-set page
TOUCH_BUDGET = 160_000  # user touches simulated per measurement (fewer calls at low rates)
MIN_CALLS = 8
SEED = 20180103


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise KaiserEduError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
    return mode


def check_cpu(cpu: str) -> str:
    if cpu not in TIMINGS:
        raise KaiserEduError(f"unknown CPU model {cpu!r}; known: {', '.join(TIMINGS)}")
    return cpu


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    if not isinstance(value, (int, float, np.integer, np.floating)) or not (
            value >= 0 if allow_zero else value > 0):
        raise KaiserEduError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


class Machine:
    """A booted kernel in one mode with one task whose working set is mapped.

    ``max_ws_kib`` of memory is mapped at :data:`WS_BASE`, with 2 MiB pages if ``huge``;
    a run with a smaller working set uses its first pages. Booting costs ~0.2 s, so a sweep
    boots one Machine per mode and reuses it (each run starts with warm-up calls).
    """

    def __init__(self, mode: str, cpu: str = "skylake", huge: bool = False,
                 max_ws_kib: int = MAX_WS_KIB, seed: int = 0):
        from kaiser_edu.kernel import Kernel

        self.mode, self.cpu, self.huge = check_mode(mode), check_cpu(cpu), bool(huge)
        _positive("max_ws_kib", max_ws_kib)
        options = dict(MODES[mode])
        if options.get("isolation") == "pti" and "pcid" not in options:
            options["pcid"] = None  # the CPU's PCID support decides
        self.kernel = Kernel(cpu=cpu, seed=seed, **options)
        self.task = self.kernel.spawn("perf")
        self.kernel.switch_to(self.task)
        self.page_size = b.PMD_SIZE if huge else b.PAGE_SIZE
        self.max_ws_bytes = -(-max_ws_kib * 1024 // self.page_size) * self.page_size
        self._map_working_set()
        self.kernel.syscall(self.task)  # faults the user text in, performs pending flushes
        self._sys = self.kernel.entry.syscall_trace(self.task)

    def _map_working_set(self) -> None:
        """mmap(MAP_POPULATE) of the working set: a VMA and its pages, present from the
        start (2 MiB leaves when ``huge``, as a THP-backed mapping would get)."""
        from kaiser_edu.kernel.mm import PROT_READ, PROT_WRITE, vm_page_prot

        k, task = self.kernel, self.task
        k.mmap(task, self.max_ws_bytes, PROT_READ | PROT_WRITE, addr=WS_BASE, name="[ws]")
        flags = vm_page_prot(PROT_READ | PROT_WRITE)
        frames = self.max_ws_bytes // b.PAGE_SIZE
        if self.huge:
            pa = k.alloc.alloc_contig(frames, align=b.PMD_SIZE)
            for off in range(0, self.max_ws_bytes, b.PMD_SIZE):
                task.mm.tables.map(WS_BASE + off, pa + off, b.PMD_SIZE, flags)
        else:
            task.mm.tables.map_range(WS_BASE, k.alloc.alloc_contig(frames), frames, flags)

    @property
    def timing(self):
        return timing(self.cpu)

    def touches(self, work_cycles: float, ws_kib: float, n_calls: int, rng: np.random.Generator,
                touch_cycles: float = TOUCH_CYCLES) -> np.ndarray:
        """(n_calls, touches per call) user addresses: random 4 KiB pages of the first
        ``ws_kib`` KiB of the working set, one per ``touch_cycles`` cycles of work."""
        _positive("work_cycles", work_cycles, allow_zero=True)
        _positive("working set (KiB)", ws_kib)
        _positive("touch_cycles", touch_cycles)
        ws_bytes = int(ws_kib * 1024)
        if ws_bytes > self.max_ws_bytes:
            raise KaiserEduError(f"working set {ws_kib} KiB is larger than this machine's "
                                 f"{self.max_ws_bytes >> 10} KiB (max_ws_kib)")
        per_call = int(round(work_cycles / touch_cycles))
        pages = max(1, ws_bytes // b.PAGE_SIZE)
        idx = rng.integers(0, pages, (n_calls, per_call), dtype=np.uint64)
        return np.uint64(WS_BASE) + (idx << np.uint64(12)) + np.uint64(0x80)

    def run_syscalls(self, work_cycles: float, ws_kib: float, calls: int = 200,
                     touch_cycles: float = TOUCH_CYCLES, seed: int = SEED,
                     warmup: int | None = None) -> Counts:
        """The syscall loop: ``calls`` x (one system call round trip, then ``work_cycles``
        of user work touching the working set), as ONE MMU trace, after ``warmup`` calls of
        the same program that are not counted. The number of calls is reduced (never below
        :data:`MIN_CALLS`) so that at most :data:`TOUCH_BUDGET` user touches are simulated:
        a call at a low rate has thousands of touches and its average is already stable."""
        _positive("calls", calls)
        per_call = int(round(work_cycles / touch_cycles))
        n = int(min(calls, max(MIN_CALLS, TOUCH_BUDGET // max(per_call, 1))))
        warm = int(warmup if warmup is not None else max(4, n // 4))
        rng = np.random.default_rng(seed)
        if warm:
            self._run(self._trace(self.touches(work_cycles, ws_kib, warm, rng, touch_cycles)))
        addrs = self.touches(work_cycles, ws_kib, n, rng, touch_cycles)
        counters = self._run(self._trace(addrs))
        return Counts(mmu=counters, kernel_entries=n, user_cycles=float(work_cycles) * n,
                      calls=n, extra={"touches": int(addrs.size), "simulated_calls": n + warm})

    def _trace(self, touches: np.ndarray):
        """One trace: per row of ``touches``, the syscall round trip then the user reads."""
        from kaiser_edu.hw.mmu import OPS, Trace

        sys = self._sys
        n, t = touches.shape
        s = len(sys)
        op = np.empty((n, s + t), dtype=np.uint8)
        addr = np.empty((n, s + t), dtype=np.uint64)
        arg = np.empty((n, s + t), dtype=np.uint16)
        op[:, :s], addr[:, :s], arg[:, :s] = sys.op, sys.addr, sys.arg
        op[:, s:], addr[:, s:], arg[:, s:] = OPS["read"], touches, 3
        return Trace(op.ravel(), addr.ravel(), arg.ravel())

    def _run(self, trace) -> dict[str, int]:
        result = self.kernel.mmu.run(trace, record=False)
        c = result.counters
        if c["page_faults"] or c["general_protection"]:
            raise KaiserEduError(f"the workload faulted on a populated working set: {c}")
        return c


# --- one system call, step by step ------------------------------------------------------------
def syscall_steps(mode: str, cpu: str = "skylake", seed: int = 0) -> list[tuple[object, Counts]]:
    """One steady-state system call of the simulated kernel (``Kernel.syscall``), as the
    two events it logs (``syscall_entry`` up to the way out, ``syscall_exit`` from there),
    each with the MMU counters of exactly its own operations: (event, counts) pairs. The
    kernel entry (SYSCALL/SYSRET and the handler's work) is counted with the entry half."""
    machine = Machine(mode, cpu, max_ws_kib=4, seed=seed)  # its boot made one syscall
    k = machine.kernel
    captured: list[dict[str, int]] = []
    real = k.mmu.run

    def run(trace, *args, **kwargs):
        result = real(trace, *args, **kwargs)
        captured.append(result.counters)
        return result

    k.mmu.run = run  # observe only: every MMU run of this one syscall
    try:
        before = len(k.events)
        out = k.syscall(machine.task)
    finally:
        del k.mmu.run
    events = list(k.events)[before:]
    if not out.ok or len(events) != len(captured):
        raise KaiserEduError(f"syscall under {mode} did not run as two logged steps: {out}")
    return [(e, Counts(mmu=c, kernel_entries=int(e.kind.endswith("_entry"))))
            for e, c in zip(events, captured, strict=True)]


# --- the syscall loop ---------------------------------------------------------------------------
def syscall(mode: str = "pti", cpu: str = "skylake", work_cycles: float = 2000,
            working_set_kib: float = 64, calls: int = 200, huge: bool = False,
            touch_cycles: float = TOUCH_CYCLES, seed: int = SEED,
            baseline: bool = True) -> CostReport:
    """One syscall-loop figure: ``mode`` on ``cpu``, priced, with the overhead against the
    same program under ``off`` (``baseline``)."""
    max_ws = max(int(np.ceil(working_set_kib)), 4)
    base = None
    if baseline:
        off = Machine("off", cpu, huge, max_ws).run_syscalls(
            work_cycles, working_set_kib, calls, touch_cycles, seed)
        base = CostReport("off", cpu, off, timing(cpu)).cycles_per_call
    counts = Machine(mode, cpu, huge, max_ws).run_syscalls(
        work_cycles, working_set_kib, calls, touch_cycles, seed)
    return CostReport(mode, cpu, counts, timing(cpu), base)


def work_for_rate(rate: float, cpu: str = "skylake") -> float:
    """User cycles between calls for a nominal syscall ``rate`` per second: the clock's
    cycles per call (the rate is that of the program's user time alone)."""
    _positive("rate", rate)
    return timing(cpu).clock_ghz * 1e9 / rate


@dataclass
class Sweep:
    """Overheads over syscall rates x working sets for each mode (Gregg's figure)."""

    cpu: str
    modes: list[str]
    rates: list[float]
    working_sets_kib: list[float]
    huge: bool
    overhead: np.ndarray  # (mode, rate, working set): fraction against off
    cycles_per_call: np.ndarray  # (mode incl. off first, rate, working set)
    mmu_ops: int = 0  # MMU operations simulated, warm-up included (for the benchmark)
    syscalls: int = 0  # simulated system calls, warm-up included

    def as_rows(self) -> list[dict]:
        rows = []
        for m, mode in enumerate(self.modes):
            for r, rate in enumerate(self.rates):
                for w, ws in enumerate(self.working_sets_kib):
                    rows.append({"mode": mode, "rate": rate, "working_set_kib": ws,
                                 "huge": self.huge,
                                 "cycles_per_call": float(self.cycles_per_call[m + 1, r, w]),
                                 "overhead": float(self.overhead[m, r, w])})
        return rows


GREGG_RATES = [1e3, 3e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 2e6]
GREGG_WORKING_SETS_KIB = [16, 64, 256, 1024, 4096, 8192, 16384, 65536]
SWEEP_MODES = ["kaiser", "pti", "pti-nopcid"]


def sweep(rates: Sequence[float] = GREGG_RATES,
          working_sets_kib: Sequence[float] = GREGG_WORKING_SETS_KIB,
          modes: Iterable[str] = SWEEP_MODES, cpu: str = "skylake", huge: bool = False,
          calls: int = 64, touch_cycles: float = TOUCH_CYCLES, progress: bool = False,
          seed: int = SEED) -> Sweep:
    """Gregg's microbenchmark over every (rate, working set), for ``off`` and each mode:
    one booted :class:`Machine` per mode, the same seeded program in every mode."""
    from tqdm import tqdm

    modes = [check_mode(m) for m in modes if m != "off"]
    rates, sets = [float(r) for r in rates], [float(w) for w in working_sets_kib]
    if not rates or not sets:
        raise KaiserEduError("need at least one rate and one working set")
    for w in sets:
        _positive("working set (KiB)", w)
    cyc = np.zeros((len(modes) + 1, len(rates), len(sets)))
    ops = syscalls = 0
    with tqdm(total=cyc.size, desc="perf sweep", unit="run", disable=not progress,
              leave=False) as bar:
        for m, mode in enumerate(["off", *modes]):
            machine = Machine(mode, cpu, huge, max_ws_kib=int(np.ceil(max(sets))))
            before = machine.kernel.mmu.counters["ops"]
            for r, rate in enumerate(rates):
                work = work_for_rate(rate, cpu)
                for w, ws in enumerate(sets):
                    counts = machine.run_syscalls(work, ws, calls, touch_cycles, seed)
                    cyc[m, r, w] = CostReport(mode, cpu, counts, timing(cpu)).cycles_per_call
                    syscalls += counts.extra["simulated_calls"]
                    bar.update()
            ops += machine.kernel.mmu.counters["ops"] - before
    return Sweep(cpu, modes, rates, sets, huge, cyc[1:] / cyc[0] - 1.0, cyc, ops, syscalls)


def working_set(mode: str = "pti-nopcid", cpu: str = "skylake", rate: float = 5e4,
                working_sets_kib: Sequence[float] = GREGG_WORKING_SETS_KIB,
                calls: int = 64, touch_cycles: float = TOUCH_CYCLES,
                progress: bool = False) -> dict[str, Sweep]:
    """The working-set sweep at one syscall rate, with 4 KiB pages and with 2 MiB pages."""
    return {name: sweep([rate], working_sets_kib, [mode], cpu, huge, calls, touch_cycles,
                        progress)
            for name, huge in (("4k", False), ("2m", True))}


# --- context switches --------------------------------------------------------------------------
def context_switch(mode: str = "pti", cpu: str = "skylake", processes: int = 2,
                   rounds: int = 20, work_cycles: float = 20_000, working_set_kib: float = 64,
                   touch_cycles: float = TOUCH_CYCLES, seed: int = SEED,
                   baseline: bool = True) -> CostReport:
    """Ping-pong between ``processes`` tasks: each time slice a timer interrupt enters the
    kernel, ``switch_mm`` loads the next task's address space (an ASID from the 6-slot
    cache, or a flush when the slot was reused), and the task works on its own working set.
    One call = one context switch. With PCIDs, up to 6 processes keep their TLB entries
    across switches; a 7th makes every switch evict the least recently used ASID."""
    counts = _context_switch_counts(mode, cpu, processes, rounds, work_cycles,
                                    working_set_kib, touch_cycles, seed)
    base = None
    if baseline:
        off = _context_switch_counts("off", cpu, processes, rounds, work_cycles,
                                     working_set_kib, touch_cycles, seed)
        base = CostReport("off", cpu, off, timing(cpu)).cycles_per_call
    return CostReport(mode, cpu, counts, timing(cpu), base)


def _context_switch_counts(mode: str, cpu: str, processes: int, rounds: int,
                           work_cycles: float, ws_kib: float, touch_cycles: float,
                           seed: int) -> Counts:
    from kaiser_edu.hw.mmu import Trace

    if not isinstance(processes, int) or not 1 <= processes <= 64:
        raise KaiserEduError(f"processes must be an integer in 1..64, got {processes!r}")
    if not isinstance(rounds, int) or rounds < 2:
        raise KaiserEduError(f"rounds must be an integer >= 2, got {rounds!r}")
    first = Machine(mode, cpu, max_ws_kib=max(4, int(np.ceil(ws_kib))))
    k = first.kernel
    tasks = [first.task] + [k.fork(first.task) for _ in range(processes - 1)]
    rng = np.random.default_rng(seed)
    total = None
    for rnd in range(rounds):
        before = k.mmu.counters
        for task in tasks:
            out = k.switch_to(task)
            if not out.ok:
                raise KaiserEduError(f"context switch to pid {task.pid} failed: {out.detail}")
            addrs = first.touches(work_cycles, ws_kib, 1, rng, touch_cycles).ravel()
            if addrs.size:
                first._run(Trace.accesses(addrs, "read", cpl=3))
        if rnd == 0:
            continue  # the first round faults the forked tasks' pages in: warm-up
        after = k.mmu.counters
        c = Counts(mmu={n: after[n] - before[n] for n in after}, kernel_entries=len(tasks),
                   user_cycles=float(work_cycles) * len(tasks), calls=len(tasks))
        total = c if total is None else total + c
    total.extra["processes"] = processes
    return total
