"""Lesson 05, Meltdown on the simulated machine: views and figures over kaiser_edu.attacks.

The attack itself lives in :mod:`kaiser_edu.attacks` (Meltdown: :func:`~kaiser_edu.attacks.meltdown.leak`;
what one transient load forwards: :func:`~kaiser_edu.attacks.transient.transient_loads`, on the
MMU under the attacker's CR3; Flush+Reload: :mod:`kaiser_edu.attacks.flush_reload`). This
module adds what the lesson and lab 05 draw and step through:

* :func:`transient_load`: one load's verdict with the readable walk that explains it (where
  the walk on the attacker's CR3 ended, and why the value was or was not forwarded);
* :class:`TransientStepper`, which steps through :func:`~kaiser_edu.attacks.meltdown.story`
  (one Meltdown attempt, recorded by the attack model);
* per-line Flush+Reload rounds (:func:`reload_times`, :func:`lit_lines`) and a reference
  receiver (:func:`probe_hits`, :func:`decode`), because the attack's numba loop draws the 255
  untouched lines in aggregate and a figure or an exercise needs every line's time. The noise
  is the attack's: the timing table's normal core and, with ``tail_prob``, ``tail_cycles``
  added by an interrupt (:mod:`kaiser_edu.kernel.timing`);
* :class:`MeltdownLab`, which runs :func:`~kaiser_edu.attacks.meltdown.leak` for a chosen
  isolation mode, CPU model and target, and the lesson's figures.

The zero bias (Lipp et al., USENIX Security 2018): a transient load that loses the race
against the fault yields 0. IAIK's proof of concept loops on it (``jz 1b`` in libkdump.c's
``meltdown_nonull``), so a lost race transmits nothing, as the attack model does; without the
loop (``meltdown_fast``) it touches ``probe[0]``. Either way a lit line 0 is no evidence, and
libkdump ignores it (``if (i >= 1)``): a real 0 byte cannot be told from "nothing read".
:func:`lit_lines` can draw rounds of either kind (``zero_line``).
"""

from __future__ import annotations

from dataclasses import dataclass

import ipywidgets as widgets
import numpy as np

from kaiser_edu.attacks import meltdown as attack
from kaiser_edu.attacks.transient import P_FORWARD_CACHED, REASONS, transient_loads
from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.walk import WalkResult, walk
from kaiser_edu.kernel.cpu import CPU_MODELS
from kaiser_edu.kernel.idt import GATE_SIZE
from kaiser_edu.kernel.image import SECRET_TEXT
from kaiser_edu.kernel.machine import Kernel, Task
from kaiser_edu.kernel.timing import Timing, timing
from kaiser_edu.widgets._view import (
    FAULT_COLOR,
    OK_COLOR,
    OKABE_ITO,
    OutputView,
    esc,
    show,
    show_error,
)

LINES = 256  # one probe line per byte value
PROBE_STRIDE = 4096  # probe[value * 4096] (libkdump: mem + i * 4096)
MIN_VOTES = 2  # a line lit in one round only may be an unrelated access (assumed rule)
ISOLATION_MODES = {"off": "no isolation", "kaiser": "KAISER (2017 Graz patch)",
                   "pti": "Linux PTI"}
LEVEL_NAMES = {5: "PML5E", 4: "PGD", 3: "PUD", 2: "PMD", 1: "PTE"}


# --- Flush+Reload, line by line ----------------------------------------------------------------


def reload_times(t: Timing, cached: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Timed reloads (whole cycles, as rdtscp counts them) of lines that are ``cached`` or
    not: :attr:`Timing.reload_hit` or :attr:`Timing.reload_miss`, a normal noise core
    (``noise_sigma``), and with probability ``tail_prob`` an interrupt in the timed window that
    adds ``tail_cycles`` (the same noise as :mod:`kaiser_edu.attacks.flush_reload`)."""
    cached = np.asarray(cached, dtype=bool)
    base = np.where(cached, t.reload_hit, t.reload_miss)
    noise = rng.normal(0.0, t.noise_sigma, cached.shape)
    tail = (rng.random(cached.shape) < t.tail_prob) * t.tail_cycles
    return np.maximum(np.rint(base + noise + tail), 1).astype(np.int64)


def lit_lines(byte: int | None, rounds: int, rng: np.random.Generator, *,
              lost: float = 1 - P_FORWARD_CACHED, empty: float = 0.0, spurious: float = 0.0,
              zero_line: bool = False) -> np.ndarray:
    """Which probe lines are cached after each of ``rounds`` transient attempts (rows:
    attempts, columns: line = byte value). ``byte`` None: nothing is forwarded, every attempt
    is lost. Otherwise line ``byte`` lights, except in a share ``lost`` of the attempts (the
    race is lost: line 0 lights if ``zero_line``, as without libkdump's ``jz`` loop, else
    nothing) and ``empty`` (no line: evicted before the reload). An unrelated access lights
    one random line with probability ``spurious`` per attempt. A 0 byte behaves like a lost
    race in every attempt."""
    cached = np.zeros((rounds, LINES), dtype=bool)
    u = rng.random(rounds)
    value = 0 if byte is None else byte
    won = (u >= empty + lost) & (value != 0)
    lost_rows = (u >= empty) & ~won
    cached[np.flatnonzero(won), value] = True
    if zero_line:
        cached[np.flatnonzero(lost_rows), 0] = True
    stray = np.flatnonzero(rng.random(rounds) < spurious)
    cached[stray, rng.integers(1, LINES, stray.size)] = True
    return cached


def probe_hits(times: np.ndarray, threshold: float) -> list[int]:
    """One round of Flush+Reload: the lines reloaded faster than ``threshold``
    (libkdump's ``flush_reload()``: ``end - start < threshold``)."""
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


# --- one transient load, explained --------------------------------------------------------------


@dataclass(frozen=True)
class TransientLoad:
    """What a user-mode load of ``va`` does: the attack model's verdict
    (:func:`~kaiser_edu.attacks.transient.transient_loads`) and the readable walk on the same
    CR3 that explains it."""

    va: int
    cr3: int
    walk: WalkResult
    forwarded: bool
    value: int | None  # the byte forwarded (None: nothing)
    verdict: str  # REASONS of kaiser_edu.attacks.transient
    reason: str  # the verdict with where the walk ended

    @property
    def error_code(self) -> int | None:
        return self.walk.error_code

    @property
    def walk_end(self) -> str:
        """The table level where the walk ended (its leaf, or the not-present entry)."""
        return LEVEL_NAMES[self.walk.steps[-1].level] if self.walk.steps else "-"


def transient_load(kernel: Kernel, task: Task, va: int) -> TransientLoad:
    """One user-mode byte load of ``va`` by ``task`` (scheduled first if it is not running),
    decided by the attack model on the MMU, and walked again with the readable walk (A/D
    updates off) to say where the walk ended."""
    if not task.alive:
        raise KaiserEduError(f"pid {task.pid} is not alive ({task.exit_reason})")
    if kernel.current is not task:
        kernel.switch_to(task)
    loads = transient_loads(kernel, np.array([va], np.uint64))
    regs = kernel.mmu.regs
    w = walk(kernel.mem, regs, va, "read", cpl=3, set_ad=False)
    forwarded = bool(loads.forwarded[0])
    verdict = REASONS[int(loads.reason[0])]
    if w.outcome == b.OUTCOME_PF:
        end = LEVEL_NAMES[w.steps[-1].level]
        where = (f"#PF {w.error_code:#x}, the walk ends at a not-present {end}"
                 if not w.error_code & b.X86_PF_PROT else
                 f"#PF {w.error_code:#x}, the walk reaches the leaf ({end}) and U/S=0 refuses")
        reason = f"{where}: {verdict}"
    else:
        reason = verdict
    return TransientLoad(va, regs.cr3, w, forwarded,
                         int(loads.value[0]) if forwarded else None, verdict, reason)


# --- targets ---------------------------------------------------------------------------------

TARGETS = {
    "secret": "the kernel image's secret (.data)",
    "victim": "another process's memory, through the direct map",
    "cea": "the cpu_entry_area (the IDT's #PF gate)",
    "entry": "the entry text (entry_SYSCALL_64)",
}


@dataclass
class Machine:
    """A booted kernel with a victim process and an attacker process (left running)."""

    kernel: Kernel
    attacker: Task
    victim: Task
    victim_va: int

    def target(self, name: str) -> tuple[int, int]:
        """(address, length) of a named target (:data:`TARGETS`)."""
        k = self.kernel
        if name == "secret":
            return attack.secret_address(k), len(SECRET_TEXT)
        if name == "victim":
            return (attack.direct_map_address(k, self.victim, self.victim_va),
                    len(attack.VICTIM_SECRET))
        if name == "cea":
            return k.cea("IDT (read-only)") + 14 * GATE_SIZE, GATE_SIZE  # vector 14: #PF
        if name == "entry":
            return k.image.symbol("entry_SYSCALL_64"), 16
        raise KaiserEduError(f"unknown target {name!r}; known: {', '.join(TARGETS)}")


def machine(isolation: str = "off", cpu: str = "skylake", seed: int = 0) -> Machine:
    """Boot a kernel, start a victim holding :data:`kaiser_edu.attacks.meltdown.VICTIM_SECRET`
    (:func:`~kaiser_edu.attacks.meltdown.spawn_victim`) and an attacker, which is left
    running."""
    if isolation not in ISOLATION_MODES:
        raise KaiserEduError(f"unknown isolation mode {isolation!r}; "
                             f"known: {', '.join(ISOLATION_MODES)}")
    k = Kernel(isolation=isolation, cpu=cpu, seed=seed)
    victim, va = attack.spawn_victim(k)
    attacker = k.spawn("attacker")
    k.switch_to(attacker)
    return Machine(k, attacker, victim, va)


def show_bytes(data: bytes) -> str:
    """Printable ASCII as is, anything else as a dot (as hexdump -C does)."""
    return "".join(chr(c) if 32 <= c < 127 else "." for c in data)


def attack_summary(isolation: str, cpu: str, target: str, seed: int = 0) -> dict:
    """The model behind :class:`MeltdownLab`: run the attack and say what came back."""
    m = machine(isolation, cpu, seed)
    address, size = m.target(target)
    first = transient_load(m.kernel, m.attacker, address)
    run = attack.leak(m.kernel, m.attacker, address, size, seed=seed)
    return {"isolation": isolation, "cpu": cpu, "target": target, "address": address,
            "run": run, "first": first, "recovered": show_bytes(run.data),
            "truth": None if run.truth is None else show_bytes(run.truth)}


# --- figures ----------------------------------------------------------------------------------


def histogram_figure(hits: np.ndarray, misses: np.ndarray, threshold: float, cpu: str):
    """Histogram of cached and flushed reload times with the calibrated threshold, as a
    :class:`kaiser_edu.display.Figure` with alt text (every text at least 9 pt)."""
    from kaiser_edu.display.figures import Figure

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
    clipped = int(np.count_nonzero(hits >= top) + np.count_nonzero(misses >= top))
    fig.alt = (f"Histogram of timed reloads on the {cpu} timing model: cached lines (blue) "
               f"cluster around {np.median(hits):.0f} cycles, flushed ones (vermillion) around "
               f"{np.median(misses):.0f}; the dashed threshold at {threshold:.0f} cycles "
               f"separates them. {clipped} slower reloads (an interrupt in the timed window) "
               "lie beyond the right edge.")
    return fig


def probe_figure(times: np.ndarray, threshold: float, title: str):
    """Reload time of each of the 256 probe lines in one round, with the threshold, as a
    :class:`kaiser_edu.display.Figure` with alt text."""
    from kaiser_edu.display.figures import Figure

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
    lit = ", ".join(f"{v:#04x}" for v in np.flatnonzero(fast)) or "none"
    fig.alt = (f"Bar chart, {title}: the reload time of each of the 256 probe lines. Lines "
               f"below the dashed threshold at {threshold:.0f} cycles (cached): {lit}; all "
               f"others take about {np.median(times):.0f} cycles.")
    return fig


# --- views -----------------------------------------------------------------------------------


def _dropdown(options, value, description):
    return widgets.Dropdown(options=options, value=value, description=description,
                            style={"description_width": "initial"})


class _MachineControls:
    """The isolation, CPU and target dropdowns both views share; ``on_change`` runs when any
    of them changes."""

    def _controls(self, isolation: str, cpu: str, target: str, on_change) -> None:
        self.isolation = _dropdown([(v, k) for k, v in ISOLATION_MODES.items()], isolation,
                                   "isolation")
        self.cpu = _dropdown(list(CPU_MODELS), cpu, "CPU")
        self.target = _dropdown([(v, k) for k, v in TARGETS.items()], target, "target")
        self.output = widgets.Output()
        for control in (self.isolation, self.cpu, self.target):
            control.observe(lambda _: on_change(), names="value")


class TransientStepper(_MachineControls, OutputView, widgets.VBox):
    """Step through one Meltdown attempt on a chosen machine and target
    (:func:`kaiser_edu.attacks.meltdown.story`): the load, the forwarding, the dependent
    access, the fault, the roll-back, and the cache line that stays."""

    def __init__(self, isolation: str = "off", cpu: str = "skylake", target: str = "secret"):
        self._controls(isolation, cpu, target, lambda: self.recompute())
        self.step = widgets.IntSlider(value=0, min=0, max=5, description="step")
        self.story: attack.Story | None = None
        self._steps: list[tuple[str, str]] = []
        self.step.observe(lambda _: self.render(), names="value")
        super().__init__([widgets.HBox([self.isolation, self.cpu]), self.target, self.step,
                          self.output])
        self.recompute()

    def recompute(self) -> None:
        try:
            m = machine(self.isolation.value, self.cpu.value)
            address, _ = m.target(self.target.value)
            self.story = attack.story(m.kernel, m.attacker, address, seed=0)
        except KaiserEduError as e:
            self.story, self._steps = None, []
            show_error(self.output, e)
            return
        self._steps = self.story.steps()
        self.step.max = len(self._steps) - 1
        self.render()

    def cached_line(self) -> int | None:
        """The probe line in the cache at the current step (from the dependent access on)."""
        return self.story.line if self.story and self.step.value >= 2 else None

    def render(self) -> None:
        if not self._steps:
            return
        n = self.step.value
        title, what = self._steps[n]
        line = self.cached_line()
        cached = "none" if line is None else f"line {line:#04x} of 256"
        color = OK_COLOR if line is None else FAULT_COLOR
        html = (f"<h4>{n + 1} · {esc(title)}</h4><p>{esc(what)}</p>"
                f"<p><b>probe line in the cache:</b> <span style='color:{color}'>"
                f"{esc(cached)}</span></p>")
        text = f"{n + 1} · {title}: {what}\n  cached probe line: {cached}"
        fig = None
        if n == len(self._steps) - 1:
            fig = probe_figure(self.story.reload_times, self.story.threshold,
                               "the reloads after the fault")
        show(self.output, html, text, figure=fig, alt=fig.alt if fig is not None else "")

    def __repr__(self) -> str:
        return (f"TransientStepper(isolation={self.isolation.value!r}, cpu={self.cpu.value!r}, "
                f"target={self.target.value!r}, step={self.step.value}/{self.step.max})")


class MeltdownLab(_MachineControls, OutputView, widgets.VBox):
    """Pick the isolation mode, the CPU and the target; run Meltdown; see what came back."""

    def __init__(self, isolation: str = "off", cpu: str = "skylake", target: str = "secret"):
        self._controls(isolation, cpu, target, lambda: self.run())
        self.run_button = widgets.Button(description="Run again (new seed)",
                                         button_style="primary")
        self.seed = 0
        self.result: dict | None = None
        self.run_button.on_click(lambda _: self.run_again())
        super().__init__([widgets.HBox([self.isolation, self.cpu]),
                          widgets.HBox([self.target, self.run_button]), self.output])
        self.run()

    def run_again(self) -> dict | None:
        """The same machine and target with the next seed: other noise, another KASLR."""
        self.seed += 1
        return self.run()

    def run(self) -> dict | None:
        try:
            r = attack_summary(self.isolation.value, self.cpu.value, self.target.value,
                               seed=self.seed)
        except KaiserEduError as e:
            self.result = None
            show_error(self.output, e)
            return None
        self.result = r
        run = r["run"]
        first: TransientLoad = r["first"]
        acc = "n/a" if run.accuracy is None else f"{run.accuracy:.0%}"
        lines = [
            f"target {TARGETS[r['target']]} at {r['address']:#x} (seed {self.seed})",
            f"first byte's load: {first.reason}",
            f"recovered: {r['recovered']!r}",
            f"truth:     {r['truth']!r}",
            f"bytes right: {acc}; bytes with any observation: {int(run.recovered.sum())} of "
            f"{run.length}; simulated rate {run.bytes_per_second / 1024:.1f} KiB/s",
        ]
        leaked = bool(run.recovered.any()) and (run.accuracy or 0) > 0.5
        color = FAULT_COLOR if leaked else OK_COLOR
        html = ("<div style='font-family:monospace;white-space:pre'>"
                + "<br>".join(esc(x) for x in lines[:2])
                + f"<br><span style='color:{color}'><b>{esc(lines[2])}</b></span><br>"
                + "<br>".join(esc(x) for x in lines[3:]) + "</div>")
        t = timing(self.cpu.value)
        cached = lit_lines(first.value if first.forwarded else None, 1,
                           np.random.default_rng(0), lost=0.0)[0]
        fig = probe_figure(reload_times(t, cached, np.random.default_rng(1)), run.threshold,
                           "one Flush+Reload round after the first byte's attempt")
        show(self.output, html, "\n".join(lines), figure=fig, alt=fig.alt)
        return r

    def __repr__(self) -> str:
        return (f"MeltdownLab(isolation={self.isolation.value!r}, cpu={self.cpu.value!r}, "
                f"target={self.target.value!r})")
