"""Lesson 05, Meltdown on the simulated machine: the transient load, Flush+Reload, the leak.

Meltdown (Lipp et al., "Meltdown: Reading Kernel Memory from User Space", USENIX Security
2018, CVE-2017-5754) is three steps, all modelled here on the simulated kernel
(:class:`kaiser_edu.kernel.Kernel`):

1. **The transient load.** User code loads a byte from a kernel address. The load is
   translated by the *real* page walk (:func:`kaiser_edu.hw.walk.walk`) on the CR3 the task
   runs on. Architecturally it faults. On a CPU that Linux marks X86_BUG_CPU_MELTDOWN
   (:attr:`CpuModel.meltdown <kaiser_edu.kernel.cpu.CpuModel>`) the value is nevertheless
   forwarded to the next instructions, but only when the walk found a translation (P=1 at
   every level) and the fault is a *protection* fault (U/S=0: error code bit P set). A walk
   that stops at a not-present entry, as it does for kernel addresses in the user PGD under
   KAISER/PTI, forwards nothing. :func:`transient_load` returns that verdict and why.
2. **The covert channel.** The transient code computes ``probe[value * 4096]``: one line of a
   256-page probe array comes into the data cache, and stays there after the fault rolls the
   registers back.
3. **The receiver.** Flush+Reload (Yarom and Falkner, USENIX Security 2014): time a reload of
   each probe line; the fast one names the byte. Because a transient load that loses the race
   (or forwards nothing) leaves 0 in the register, line 0 lights without meaning anything
   (Meltdown's zero bias): it is ignored and the attempt retried, as IAIK's proof of concept
   does (libkdump.c: ``if (i >= 1)``; a byte reads as 0 only when no other line ever lit).

Timings come from the course's one cycle-cost table (:mod:`kaiser_edu.kernel.timing`; its
numbers not from a primary source say "assumed" there). The probe stride of 4096 bytes puts
every value in its own page, so the hardware prefetchers, which do not cross 4 KiB page
boundaries, cannot bring a neighbouring probe line in (the paper's reason for the stride):
the model has no prefetcher, and this is why it needs none.

Model choices of this module (the attack lab of issue 9, ``kaiser_edu.attacks``, was not on
this branch when the lesson was written; this module carries the small model the lesson
needs):

* the data is assumed to be in the cache (the paper makes sure of it for its kernel secret
  with a ``pread`` that touches it first); the race is lost in a fraction
  :data:`LOST_RACE` of the attempts (assumed), which then light line 0;
* the fault is delivered as SIGSEGV to a handler (``Timing.fault_delivery`` cycles; the
  paper's faster TSX suppression is not modelled), then all 256 lines are reloaded and
  flushed again; that is the cost per attempt behind the simulated leak rate.

The widgets are thin views: :class:`TransientStepper` steps through
:func:`transient_window`; :class:`MeltdownLab` runs :func:`leak` for a chosen isolation mode,
CPU model and target.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import ipywidgets as widgets
import numpy as np

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.walk import WalkResult, walk
from kaiser_edu.kernel.cpu import CPU_MODELS
from kaiser_edu.kernel.machine import Kernel, Task
from kaiser_edu.kernel.timing import Timing, timing
from kaiser_edu.widgets._view import (
    FAULT_COLOR,
    OK_COLOR,
    OKABE_ITO,
    OutputView,
    esc,
    figure_png,
    show,
    show_error,
)

LINES = 256  # one probe line per byte value
PROBE_STRIDE = 4096  # probe[value * 4096] (libkdump: mem + i * 4096)
LOST_RACE = 0.3  # share of attempts whose transient load loses the race (assumed)
EMPTY = 0.02  # share of attempts after which no line is found cached (assumed)
SPURIOUS = 0.01  # chance that an unrelated access lights one random line (assumed)
DEFAULT_RETRIES = 12
MIN_VOTES = 2  # a line lit in one round only may be an unrelated access (assumed rule)
MAX_LEAK_BYTES = 4096
VICTIM_SECRET = b"victim's password: correct horse battery staple"
ISOLATION_MODES = {"off": "no isolation", "kaiser": "KAISER (2017 Graz patch)",
                   "pti": "Linux PTI"}


# --- Flush+Reload primitives ------------------------------------------------------------------


def reload_times(t: Timing, cached: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Timed reloads (whole cycles, as rdtscp counts them) of lines that are ``cached`` or
    not: :attr:`Timing.reload_hit` or :attr:`Timing.reload_miss`, a normal noise core
    (``noise_sigma``), and with probability ``tail_prob`` an interrupt in the timed window that
    adds an exponential tail of mean ``tail_cycles``."""
    cached = np.asarray(cached, dtype=bool)
    base = np.where(cached, t.reload_hit, t.reload_miss)
    noise = rng.normal(0.0, t.noise_sigma, cached.shape)
    tail = np.where(rng.random(cached.shape) < t.tail_prob,
                    rng.exponential(t.tail_cycles, cached.shape), 0.0)
    return np.maximum(np.rint(base + noise + tail), 1).astype(np.int64)


def lit_lines(byte: int | None, rounds: int, rng: np.random.Generator, *,
              lost: float = LOST_RACE, empty: float = EMPTY,
              spurious: float = SPURIOUS) -> np.ndarray:
    """Which probe lines are cached after each of ``rounds`` transient attempts (rows:
    attempts, columns: line = byte value). ``byte`` None means nothing was forwarded: the
    register reads 0 and line 0 lights. Otherwise line ``byte`` lights, except in a share
    ``lost`` of the attempts (line 0) and ``empty`` (no line); an unrelated access lights
    one random line with probability ``spurious`` per attempt."""
    cached = np.zeros((rounds, LINES), dtype=bool)
    u = rng.random(rounds)
    value = 0 if byte is None else byte
    hit = np.where(u < empty, -1, np.where(u < empty + lost, 0, value))
    rows = np.flatnonzero(hit >= 0)
    cached[rows, hit[rows]] = True
    stray = np.flatnonzero(rng.random(rounds) < spurious)
    cached[stray, rng.integers(1, LINES, stray.size)] = True
    return cached


def calibrate(hit_times: np.ndarray, miss_times: np.ndarray) -> float:
    """libkdump's ``detect_flush_reload_threshold()``: a third of the way from the average
    cached reload to the average flushed one, (miss + 2 * hit) / 3."""
    return (float(np.mean(miss_times)) + 2 * float(np.mean(hit_times))) / 3


def probe_hits(times: np.ndarray, threshold: float) -> list[int]:
    """One round of Flush+Reload: the lines reloaded faster than ``threshold``."""
    return [int(v) for v in np.flatnonzero(np.asarray(times) < threshold)]


def decode(rounds: np.ndarray, threshold: float) -> tuple[int, float]:
    """The byte the rounds carry and a confidence: the nonzero line that lit in the most
    rounds (line 0 is ignored: the zero bias), with the share of rounds it lit in; 0 with
    confidence 0 when no nonzero line lit in at least :data:`MIN_VOTES` rounds
    (libkdump_read() returns 0 when no nonzero value was seen)."""
    votes = np.count_nonzero(np.asarray(rounds) < threshold, axis=0)
    votes[0] = 0
    if votes.max() < MIN_VOTES:
        return 0, 0.0
    value = int(np.argmax(votes))
    return value, float(votes[value]) / len(rounds)


def calibration_samples(cpu: str, n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` timed reloads of a cached line and ``n`` of a flushed one on ``cpu``'s timings."""
    t = timing(cpu)
    rng = np.random.default_rng(seed)
    return (reload_times(t, np.ones(n, bool), rng), reload_times(t, np.zeros(n, bool), rng))


# --- the transient load on the real walk ------------------------------------------------------


@dataclass(frozen=True)
class TransientLoad:
    """What a user-mode load of ``va`` does on the CPU: the walk, the architectural fault,
    and whether the value reaches the dependent instructions before the fault is taken."""

    va: int
    cr3: int
    walk: WalkResult
    pa: int | None  # the translation the walk found, even if the access is refused
    forwarded: bool
    value: int | None  # the byte forwarded (None: nothing)
    reason: str

    @property
    def error_code(self) -> int | None:
        return self.walk.error_code


def _read_byte(kernel: Kernel, pa: int) -> int:
    return kernel.mem.read_qword(pa & ~7) >> (8 * (pa & 7)) & 0xFF


def _running(kernel: Kernel, task: Task) -> None:
    if not task.alive:
        raise KaiserEduError(f"pid {task.pid} is not alive ({task.exit_reason})")
    if kernel.current is not task:
        kernel.switch_to(task)


def transient_load(kernel: Kernel, task: Task, va: int) -> TransientLoad:
    """A user-mode byte load of ``va`` by ``task``, walked on the CR3 it runs on.

    The walk is the readable walk of the course (:func:`kaiser_edu.hw.walk.walk`) on the
    machine's memory and registers, with A/D updates off (a transient access that faults
    leaves no architectural trace). Forwarding needs all three: a Meltdown-affected CPU, a
    translation (P=1 at every level) and a protection fault (P set in the error code, RSVD
    clear). No lookup of "is this the secret": the page tables decide.
    """
    _running(kernel, task)
    regs = kernel.mmu.regs
    w = walk(kernel.mem, regs, va, "read", cpl=3, set_ad=False)
    pa = None
    if w.outcome == b.OUTCOME_OK:
        pa = w.pa
    elif w.outcome == b.OUTCOME_PF and w.error_code & b.X86_PF_PROT \
            and not w.error_code & b.X86_PF_RSVD:
        leaf = w.steps[-1]
        size = 1 << b.level_shift(leaf.level)
        pa = (leaf.entry & b.phys_addr_mask(regs.maxphyaddr) & ~(size - 1)) | (va & (size - 1))
    if w.outcome == b.OUTCOME_GP:
        return TransientLoad(va, regs.cr3, w, None, False, None,
                             "#GP: not a canonical address; nothing is translated")
    if w.outcome == b.OUTCOME_OK:
        return TransientLoad(va, regs.cr3, w, pa, True, _read_byte(kernel, pa),
                             "a user page: an ordinary load, no fault at all")
    names = {5: "PML5E", 4: "PGD (PML4E)", 3: "PUD (PDPTE)", 2: "PMD (PDE)", 1: "PTE"}
    stop = names[w.steps[-1].level]
    if pa is None:
        return TransientLoad(va, regs.cr3, w, None, False, None,
                             f"#PF {w.error_code:#x}: the walk stops at a not-present {stop}; "
                             "there is no translation, so no data to forward")
    if not kernel.cpu.meltdown:
        return TransientLoad(va, regs.cr3, w, pa, False, None,
                             f"#PF {w.error_code:#x}: mapped but supervisor-only; "
                             f"{kernel.cpu.name} checks the permission before forwarding")
    return TransientLoad(va, regs.cr3, w, pa, True, _read_byte(kernel, pa),
                         f"#PF {w.error_code:#x}: mapped but supervisor-only (U/S=0); on "
                         f"{kernel.cpu.name} the value is forwarded before the fault is taken")


# --- the leak -------------------------------------------------------------------------------


@dataclass
class LeakRun:
    """The result of :func:`leak`: the bytes read, and what it cost."""

    address: int
    data: bytes
    confidence: np.ndarray
    truth: bytes | None  # read through the kernel's own mapping, where it has one
    verdict: TransientLoad
    cycles: float
    clock_ghz: float
    host_seconds: float
    threshold: float
    last_rounds: np.ndarray = field(repr=False)

    @property
    def accuracy(self) -> float | None:
        """Share of bytes equal to the ground truth."""
        if self.truth is None:
            return None
        return sum(a == b_ for a, b_ in zip(self.data, self.truth)) / len(self.data)

    @property
    def bytes_per_second(self) -> float:
        return len(self.data) / (self.cycles / (self.clock_ghz * 1e9))


def ground_truth(kernel: Kernel, va: int, length: int) -> bytes | None:
    """What a supervisor read through the kernel's own page tables returns, or None."""
    out = bytearray()
    for a in range(va, va + length):
        pa = kernel.kernel_tables.translate(a)
        if pa is None:
            return None
        out.append(_read_byte(kernel, pa))
    return bytes(out)


def byte_rounds(load: TransientLoad, t: Timing, retries: int,
                rng: np.random.Generator) -> np.ndarray:
    """The reload times of the 256 probe lines after each of ``retries`` attempts of
    ``load`` (rows: attempts): line ``load.value`` where the load forwards, else line 0."""
    return reload_times(t, lit_lines(load.value if load.forwarded else None, retries, rng), rng)


def cpu_timing(kernel: Kernel) -> Timing:
    """The cycle-cost preset of the kernel's CPU model."""
    return timing(next(n for n, m in CPU_MODELS.items() if m == kernel.cpu))


def leak(kernel: Kernel, task: Task, address: int, length: int, *,
         retries: int = DEFAULT_RETRIES, seed: int = 0,
         calibrator: Callable[[np.ndarray, np.ndarray], float] | None = None,
         decoder: Callable[[np.ndarray, float], int] | None = None) -> LeakRun:
    """Meltdown from ``task``: read ``length`` bytes at ``address`` with Flush+Reload.

    Per byte: ``retries`` transient attempts, each followed by the fault's delivery and a
    timed reload + clflush of all 256 probe lines; the threshold is calibrated first
    (:func:`calibrate`, or ``calibrator(hit_times, miss_times)``), the byte decoded with
    :func:`decode` (or ``decoder(rounds, threshold)``, lab 05's student decoder; its
    confidence is then the share of rounds in which the line it chose lit).
    """
    if not 0 < length <= MAX_LEAK_BYTES:
        raise KaiserEduError(f"length must be 1..{MAX_LEAK_BYTES} bytes, got {length}")
    if retries < 1:
        raise KaiserEduError(f"retries must be at least 1, got {retries}")
    start = time.process_time()
    t = cpu_timing(kernel)
    rng = np.random.default_rng(seed)
    hits, misses = reload_times(t, np.ones(1000, bool), rng), reload_times(
        t, np.zeros(1000, bool), rng)
    threshold = float((calibrator or calibrate)(hits, misses))
    data, conf = bytearray(), np.zeros(length)
    first = transient_load(kernel, task, address)
    rounds = np.zeros((retries, LINES), np.int64)
    cycles = 2000 * (t.reload_hit + t.reload_miss)  # the calibration
    for i in range(length):
        load = first if i == 0 else transient_load(kernel, task, address + i)
        rounds = byte_rounds(load, t, retries, rng)
        if decoder is None:
            value, conf[i] = decode(rounds, threshold)
        else:
            value = int(decoder(rounds, threshold)) & 0xFF
            conf[i] = np.count_nonzero(rounds[:, value] < threshold) / retries if value else 0
        data.append(value)
        cycles += retries * (t.fault_delivery + rounds.sum(dtype=float) / retries
                             + LINES * t.clflush)
    return LeakRun(address, bytes(data), conf, ground_truth(kernel, address, length), first,
                   cycles, t.clock_ghz, time.process_time() - start, threshold, rounds)


# --- targets ---------------------------------------------------------------------------------

TARGETS = {
    "secret": "the kernel image's secret (.data)",
    "victim": "another process's memory, through the direct map",
    "cea": "the cpu_entry_area (GDT page)",
    "entry": "the entry text (entry_SYSCALL_64)",
}


@dataclass
class Machine:
    """A booted kernel with an attacker and a victim process, for the lesson and widget."""

    kernel: Kernel
    attacker: Task
    victim: Task
    victim_va: int

    def target(self, name: str) -> tuple[int, int]:
        """(address, length) of a named target (:data:`TARGETS`)."""
        k = self.kernel
        if name == "secret":
            from kaiser_edu.kernel.image import SECRET_TEXT
            return k.image.secret, len(SECRET_TEXT)
        if name == "victim":
            pa = k.translate_user(self.victim, self.victim_va)
            return k.layout.direct_map(pa), len(VICTIM_SECRET)
        if name == "cea":
            return k.cea("GDT"), 16
        if name == "entry":
            return k.image.symbol("entry_SYSCALL_64"), 16
        raise KaiserEduError(f"unknown target {name!r}; known: {', '.join(TARGETS)}")


def machine(isolation: str = "off", cpu: str = "skylake", seed: int = 0) -> Machine:
    """Boot a kernel, start a victim that keeps :data:`VICTIM_SECRET` in its heap, and an
    attacker process, which is left running."""
    if isolation not in ISOLATION_MODES:
        raise KaiserEduError(f"unknown isolation mode {isolation!r}; "
                             f"known: {', '.join(ISOLATION_MODES)}")
    k = Kernel(isolation=isolation, cpu=cpu, seed=seed)
    victim = k.spawn("victim")
    k.switch_to(victim)
    buf = k.mmap(victim, b.PAGE_SIZE)
    padded = VICTIM_SECRET.ljust(-(-len(VICTIM_SECRET) // 8) * 8, b"\0")
    for off in range(0, len(padded), 8):
        k.user_store(victim, buf + off, int.from_bytes(padded[off:off + 8], "little"))
    attacker = k.spawn("attacker")
    k.switch_to(attacker)
    return Machine(k, attacker, victim, buf)


def show_bytes(data: bytes) -> str:
    """Printable ASCII as is, anything else as a dot (as hexdump -C does)."""
    return "".join(chr(c) if 32 <= c < 127 else "." for c in data)


def attack_summary(isolation: str, cpu: str, target: str, length: int | None = None,
                   seed: int = 0, retries: int = DEFAULT_RETRIES) -> dict:
    """The model behind :class:`MeltdownLab`: run the attack and say what came back."""
    m = machine(isolation, cpu, seed)
    address, size = m.target(target)
    run = leak(m.kernel, m.attacker, address, size if length is None else length,
               retries=retries, seed=seed)
    return {"isolation": isolation, "cpu": cpu, "target": target, "address": address,
            "run": run, "recovered": show_bytes(run.data),
            "truth": None if run.truth is None else show_bytes(run.truth),
            "accuracy": run.accuracy, "rate": run.bytes_per_second,
            "verdict": run.verdict.reason, "forwarded": run.verdict.forwarded}


# --- stepping through the transient window ----------------------------------------------------


@dataclass(frozen=True)
class WindowStep:
    """One moment of the transient window: what happens, the architectural state, and the
    probe line (if any) that is in the cache at that moment."""

    title: str
    what: str
    rax: str  # the architectural value of rax, as a program could observe it
    in_flight: str  # what the out-of-order core holds that the program cannot see
    cached_line: int | None


def transient_window(load: TransientLoad) -> list[WindowStep]:
    """The steps of one Meltdown attempt (libkdump's ``meltdown_nonull`` macro:
    ``movb (%rcx),%al; shl $12,%rax; jz 1b; movq (%rbx,%rax,1),%rbx``) for ``load``."""
    va = load.va
    value = load.value if load.forwarded else 0
    line = value if load.forwarded and value else None
    fault = (f"#PF error code {load.error_code:#x} "
             f"({b.describe_error_code(load.error_code)})" if load.error_code is not None
             else "no fault" if load.walk.ok else "#GP")
    steps = [
        WindowStep("1 · flush", "clflush all 256 probe lines: none is cached.", "0", "-", None),
        WindowStep("2 · the load", f"movb ({va:#x}), %al issues. The MMU walks CR3 "
                   f"{load.cr3:#x}: {load.reason}.", "0", f"load of {va:#x} in flight", None),
    ]
    if load.forwarded:
        steps.append(WindowStep(
            "3 · forwarding", f"The loaded byte {value:#04x} is forwarded to the waiting "
            "instructions before the load retires.", "0",
            f"al = {value:#04x} (not retired)", None))
        steps.append(WindowStep(
            "4 · dependent access", f"shl $12, %rax; movq (%rbx,%rax), %rbx: reads "
            f"probe[{value:#04x} * 4096], which brings line {value:#04x} into the cache.",
            "0", f"rbx = probe[{value * 4096:#x}] (not retired)", line))
    else:
        steps.append(WindowStep(
            "3 · nothing forwarded", "The load has no data to forward: al reads 0, and the "
            "jz loop spins until the fault is taken.", "0", "al = 0 (not retired)", None))
        steps.append(WindowStep(
            "4 · no dependent access", "The access probe[value * 4096] never runs with a "
            "secret value.", "0", "-", None))
    steps += [
        WindowStep("5 · the fault", f"The load reaches retirement: {fault}. The CPU delivers "
                   "it; the handler (SIGSEGV) runs.", "0", "pipeline flushed", line),
        WindowStep("6 · roll-back", "Every register the transient instructions wrote is "
                   "restored: rax and rbx hold what they held before. Architecturally "
                   "nothing was read.", "0", "-", line),
        WindowStep("7 · the line stays", "The cache is not rolled back. Flush+Reload times a "
                   "reload of every probe line: " + (
                       f"line {line:#04x} is fast, and names the byte." if line is not None
                       else "none is fast (line 0 would be ignored: the zero bias)."),
                   "0", "-", line),
    ]
    return steps


# --- figures ----------------------------------------------------------------------------------


def histogram_figure(hits: np.ndarray, misses: np.ndarray, threshold: float, cpu: str):
    """Histogram of cached and flushed reload times with the calibrated threshold."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 3.2), layout="constrained")
    ax = fig.add_subplot()
    top = float(np.percentile(misses, 99.5)) * 1.15
    bins = np.arange(0, top, 4)
    ax.hist(np.clip(hits, 0, top), bins=bins, color=OKABE_ITO["blue"],
            label=f"cached line (median {np.median(hits):.0f} cycles)")
    ax.hist(np.clip(misses, 0, top), bins=bins, color=OKABE_ITO["vermillion"],
            label=f"flushed line (median {np.median(misses):.0f} cycles)")
    ax.axvline(threshold, color="black", linestyle="--",
               label=f"threshold {threshold:.0f} cycles")
    ax.set_xlabel("timed reload (cycles, rdtscp)", fontsize=10)
    ax.set_ylabel("reloads", fontsize=10)
    ax.set_title(f"Flush+Reload on the {cpu} timing model", fontsize=11)
    ax.tick_params(labelsize=9)
    ax.legend(fontsize=9)
    return fig


def probe_figure(times: np.ndarray, threshold: float, title: str):
    """Reload time of each of the 256 probe lines in one round, with the threshold."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 3.0), layout="constrained")
    ax = fig.add_subplot()
    times = np.asarray(times)
    fast = times < threshold
    ax.bar(np.flatnonzero(~fast), np.minimum(times[~fast], 600), width=1.0,
           color=OKABE_ITO["grey"], label="slow: not cached")
    ax.bar(np.flatnonzero(fast), times[fast], width=3.0, color=OKABE_ITO["blue"],
           label="fast: cached")
    for v in np.flatnonzero(fast):
        ax.annotate(f"{v:#04x} '{chr(v) if 32 <= v < 127 else '.'}'", (v, times[v]),
                    xytext=(0, 8), textcoords="offset points", ha="center", fontsize=9)
    ax.axhline(threshold, color="black", linestyle="--", label="threshold")
    ax.set_xlim(-2, 258)
    ax.set_ylim(0, 600)
    ax.set_xlabel("probe line = byte value", fontsize=10)
    ax.set_ylabel("reload (cycles)", fontsize=10)
    ax.set_title(title, fontsize=11)
    ax.tick_params(labelsize=9)
    ax.legend(fontsize=9, loc="lower right")
    return fig


# --- views -----------------------------------------------------------------------------------


def _dropdown(options, value, description):
    return widgets.Dropdown(options=options, value=value, description=description,
                            style={"description_width": "initial"})


class TransientStepper(OutputView, widgets.VBox):
    """Step through one Meltdown attempt on a chosen machine and target."""

    def __init__(self, isolation: str = "off", cpu: str = "skylake", target: str = "secret"):
        self.isolation = _dropdown([(v, k) for k, v in ISOLATION_MODES.items()], isolation,
                                   "isolation")
        self.cpu = _dropdown(list(CPU_MODELS), cpu, "CPU")
        self.target = _dropdown([(v, k) for k, v in TARGETS.items()], target, "target")
        self.step = widgets.IntSlider(value=0, min=0, max=6, description="step")
        self.output = widgets.Output()
        self._steps: list[WindowStep] = []
        for control in (self.isolation, self.cpu, self.target):
            control.observe(lambda _: self.recompute(), names="value")
        self.step.observe(lambda _: self.render(), names="value")
        super().__init__([widgets.HBox([self.isolation, self.cpu]), self.target, self.step,
                          self.output])
        self.recompute()

    def recompute(self) -> None:
        try:
            m = machine(self.isolation.value, self.cpu.value)
            address, _ = m.target(self.target.value)
            self._steps = transient_window(transient_load(m.kernel, m.attacker, address))
        except KaiserEduError as e:
            self._steps = []
            show_error(self.output, e)
            return
        self.step.max = len(self._steps) - 1
        self.render()

    def render(self) -> None:
        if not self._steps:
            return
        s = self._steps[self.step.value]
        cached = ("none" if s.cached_line is None
                  else f"line {s.cached_line:#04x} of 256")
        color = OK_COLOR if s.cached_line is None else FAULT_COLOR
        html = (f"<h4>{esc(s.title)}</h4><p>{esc(s.what)}</p>"
                f"<table><tr><td><b>rax (architectural)</b></td><td><code>{esc(s.rax)}"
                f"</code></td></tr><tr><td><b>in flight (invisible)</b></td><td><code>"
                f"{esc(s.in_flight)}</code></td></tr><tr><td><b>probe line in the cache"
                f"</b></td><td style='color:{color}'>{esc(cached)}</td></tr></table>")
        text = (f"{s.title}: {s.what}\n  rax={s.rax}; in flight: {s.in_flight}; "
                f"cached probe line: {cached}")
        show(self.output, html, text)

    def __repr__(self) -> str:
        return (f"TransientStepper(isolation={self.isolation.value!r}, cpu={self.cpu.value!r}, "
                f"target={self.target.value!r}, step={self.step.value}/{self.step.max})")


class MeltdownLab(OutputView, widgets.VBox):
    """Pick the isolation mode, the CPU and the target; run Meltdown; see what came back."""

    def __init__(self, isolation: str = "off", cpu: str = "skylake", target: str = "secret"):
        self.isolation = _dropdown([(v, k) for k, v in ISOLATION_MODES.items()], isolation,
                                   "isolation")
        self.cpu = _dropdown(list(CPU_MODELS), cpu, "CPU")
        self.target = _dropdown([(v, k) for k, v in TARGETS.items()], target, "target")
        self.run_button = widgets.Button(description="Run the attack", button_style="primary")
        self.output = widgets.Output()
        self.result: dict | None = None
        self.run_button.on_click(lambda _: self.run())
        for control in (self.isolation, self.cpu, self.target):
            control.observe(lambda _: self.run(), names="value")
        super().__init__([widgets.HBox([self.isolation, self.cpu]),
                          widgets.HBox([self.target, self.run_button]), self.output])
        self.run()

    def run(self) -> dict | None:
        try:
            r = attack_summary(self.isolation.value, self.cpu.value, self.target.value)
        except KaiserEduError as e:
            self.result = None
            show_error(self.output, e)
            return None
        self.result = r
        run: LeakRun = r["run"]
        acc = "n/a" if r["accuracy"] is None else f"{r['accuracy']:.0%}"
        lines = [
            f"target {TARGETS[r['target']]} at {r['address']:#x}",
            f"transient load: {r['verdict']}",
            f"recovered: {r['recovered']!r}",
            f"truth:     {r['truth']!r}",
            f"bytes right: {acc}; mean confidence {run.confidence.mean():.2f}; "
            f"simulated rate {r['rate'] / 1024:.1f} KiB/s at {run.clock_ghz} GHz",
        ]
        color = FAULT_COLOR if (r["accuracy"] or 0) > 0.5 and r["forwarded"] else OK_COLOR
        html = ("<div style='font-family:monospace;white-space:pre'>"
                + "<br>".join(esc(x) for x in lines[:2])
                + f"<br><span style='color:{color}'><b>{esc(lines[2])}</b></span><br>"
                + "<br>".join(esc(x) for x in lines[3:]) + "</div>")
        fig = probe_figure(run.last_rounds[0], run.threshold,
                           "probe lines after the last byte's first attempt")
        show(self.output, html, "\n".join(lines), figure_png(fig))
        return r

    def __repr__(self) -> str:
        return (f"MeltdownLab(isolation={self.isolation.value!r}, cpu={self.cpu.value!r}, "
                f"target={self.target.value!r})")
