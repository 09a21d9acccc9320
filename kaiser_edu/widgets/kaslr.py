"""Lesson 09, KASLR and the side channels KAISER was built to close: views over kaiser_edu.attacks.kaslr.

The breaks themselves are :func:`kaiser_edu.attacks.kaslr.break_kaslr` (prefetch, Gruss et
al., CCS 2016; double page fault, Hund et al., IEEE S&P 2013; EntryBleed, Liu et al., HASP
2023, CVE-2022-4543): each probes every candidate slot of the kernel image through the MMU
under the attacker's CR3 and prices what the translation did (a TLB hit, or a walk of N
entries) with the course's cycle-cost table. This module adds:

* :func:`kaslr_entropy`: what KASLR randomises in the simulated layout and how many bits each
  region gets (:mod:`kaiser_edu.kernel.layout`);
* :func:`run_break`: boot a machine, run one break, and say what it found, the model behind
  :class:`KaslrLab`;
* :func:`slot_figure`: the median probe time of every candidate slot against the threshold,
  with the true base marked (the lesson's figure and the widget's plot).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ipywidgets as widgets
import numpy as np

from kaiser_edu.attacks.kaslr import METHODS, KaslrResult, break_kaslr, direct_map_candidates
from kaiser_edu.attacks.kaslr import text_candidates as _text_candidates
from kaiser_edu.errors import KaiserEduError
from kaiser_edu.kernel.cpu import CPU_MODELS
from kaiser_edu.kernel.layout import KernelLayout
from kaiser_edu.kernel.machine import Kernel
from kaiser_edu.widgets._view import (
    FAULT_COLOR,
    OK_COLOR,
    OKABE_ITO,
    OutputView,
    esc,
    show,
    show_error,
)
from kaiser_edu.widgets.meltdown import ISOLATION_MODES

METHOD_NAMES = {"prefetch": "prefetch (Gruss et al. 2016)",
                "double-fault": "double page fault (Hund et al. 2013)",
                "entrybleed": "EntryBleed (Liu et al. 2023)"}


def text_candidates() -> np.ndarray:
    """Every ``_text`` KASLR may choose in the simulated layout (2 MiB slots)."""
    return _text_candidates()


@dataclass(frozen=True)
class Entropy:
    """One randomised region: its name, how many positions it may take, their spacing."""

    region: str
    positions: int
    step: str

    @property
    def bits(self) -> float:
        return math.log2(self.positions)


def kaslr_entropy() -> list[Entropy]:
    """The candidate positions the breaks search (:mod:`kaiser_edu.attacks.kaslr`): the
    kernel image in 2 MiB steps inside its 1 GiB window, the direct map in 1 GiB steps."""
    return [Entropy("kernel text (_text)", len(text_candidates()), "2 MiB"),
            Entropy("direct map (page_offset_base)", len(direct_map_candidates()), "1 GiB")]


def layouts(seeds: range | list[int]) -> list[tuple[int, int, int]]:
    """(seed, _text, page_offset_base) of a few boots: what KASLR moved."""
    out = []
    for seed in seeds:
        lay = KernelLayout.boot(seed)
        out.append((seed, lay.kernel_text, lay.page_offset))
    return out


def run_break(method: str, isolation: str, cpu: str = "skylake", seed: int = 0,
              rounds: int = 16) -> KaslrResult:
    """Boot a machine (KASLR from ``seed``), start an attacker, and run one break."""
    if isolation not in ISOLATION_MODES:
        raise KaiserEduError(f"unknown isolation mode {isolation!r}; "
                             f"known: {', '.join(ISOLATION_MODES)}")
    k = Kernel(isolation=isolation, cpu=cpu, seed=seed)
    attacker = k.spawn("attacker")
    k.switch_to(attacker)
    return break_kaslr(k, attacker, method=method, seed=seed, rounds=rounds)


def verdict(r: KaslrResult) -> str:
    """One line: what the break reported against the truth."""
    truth = r.text.truth
    if r.text_base is None:
        return f"text: nothing found (true base {truth:#x}): the break reports failure"
    mark = "correct" if r.text_correct else "WRONG"
    return f"text: {r.text_base:#x} ({mark}; true base {truth:#x})"


def slot_figure(r: KaslrResult, title: str | None = None):
    """Median probe time per candidate ``_text`` slot, the threshold, and the true base, as a
    :class:`kaiser_edu.display.Figure` with alt text (every text at least 9 pt)."""
    from kaiser_edu.display.figures import Figure

    fig = Figure(figsize=(7.5, 3.2), layout="constrained")
    ax = fig.add_subplot()
    slots = np.arange(len(r.candidates))
    truth = int(np.flatnonzero(r.candidates == np.uint64(r.text.truth))[0])
    ax.plot(slots, r.times, ".", color=OKABE_ITO["grey"], markersize=4,
            label="median probe time of a slot")
    mapped = np.flatnonzero(r.text.mapped)
    ax.plot(mapped, r.times[mapped], "o", color=OKABE_ITO["blue"], markersize=6,
            label="confirmed below the threshold")
    ax.axhline(r.threshold, color="black", linestyle="--",
               label=f"threshold {r.threshold:.0f} cycles")
    ax.axvline(truth, color=OKABE_ITO["vermillion"], linestyle=":",
               label=f"true _text (slot {truth})")
    ax.set_xlabel("candidate slot of _text (2 MiB each)", fontsize=10)
    ax.set_ylabel("probe time (cycles)", fontsize=10)
    top = max(float(np.max(r.times)), r.threshold) * 1.25
    ax.set_ylim(0, top)
    ax.tick_params(labelsize=9)
    ax.set_title(title or f"{METHOD_NAMES[r.method]}, {ISOLATION_MODES[r.isolation]}, {r.cpu}",
                 fontsize=11)
    ax.legend(fontsize=9, loc="lower right")
    found = ("none is confirmed below it" if not len(mapped) else
             f"{len(mapped)} slot{'s' if len(mapped) > 1 else ''} confirmed below it, from "
             f"slot {mapped[0]}")
    fig.alt = (f"Scatter plot, {METHOD_NAMES[r.method]} under {ISOLATION_MODES[r.isolation]} "
               f"on {r.cpu}: the median probe time of each of the {len(slots)} candidate slots "
               f"of _text, most about {np.median(r.times):.0f} cycles; the dashed threshold at "
               f"{r.threshold:.0f} cycles, {found}; the dotted line marks the true _text, "
               f"slot {truth}, at {r.times[truth]:.0f} cycles.")
    return fig


class KaslrLab(OutputView, widgets.VBox):
    """Pick a break, an isolation mode and a CPU; run it; see the time of every slot."""

    def __init__(self, method: str = "prefetch", isolation: str = "off",
                 cpu: str = "skylake", seed: int = 0):
        style = {"description_width": "initial"}
        self.method = widgets.Dropdown(options=[(v, k) for k, v in METHOD_NAMES.items()],
                                       value=method, description="break", style=style)
        self.isolation = widgets.Dropdown(options=[(v, k) for k, v in ISOLATION_MODES.items()],
                                          value=isolation, description="isolation",
                                          style=style)
        self.cpu = widgets.Dropdown(options=list(CPU_MODELS), value=cpu, description="CPU",
                                    style=style)
        self.seed = widgets.BoundedIntText(value=seed, min=0, max=10**6,
                                           description="boot seed", style=style)
        self.output = widgets.Output()
        self.result: KaslrResult | None = None
        for control in (self.method, self.isolation, self.cpu, self.seed):
            control.observe(lambda _: self.run(), names="value")
        super().__init__([widgets.HBox([self.method, self.isolation]),
                          widgets.HBox([self.cpu, self.seed]), self.output])
        self.run()

    def run(self) -> KaslrResult | None:
        if self.method.value not in METHODS:
            show_error(self.output, f"unknown break {self.method.value!r}")
            return None
        try:
            r = run_break(self.method.value, self.isolation.value, self.cpu.value,
                          self.seed.value)
        except KaiserEduError as e:
            self.result = None
            show_error(self.output, e)
            return None
        self.result = r
        lines = [verdict(r)]
        if r.direct_map is not None:
            dm = ("nothing found" if r.direct_map_base is None
                  else f"{r.direct_map_base:#x} ({'correct' if r.direct_map_correct else 'WRONG'})")
            lines.append(f"direct map: {dm} (true {r.direct_map.truth:#x})")
        lines.append(f"references: TLB hit {r.hit_reference:.0f} cycles, one-entry walk "
                     f"{r.walk_reference:.0f}; threshold {r.threshold:.0f}; "
                     f"{r.probes:,} probes, {r.seconds * 1e3:.2f} ms simulated")
        color = FAULT_COLOR if r.text_base is not None else OK_COLOR
        html = (f"<div style='font-family:monospace'><b style='color:{color}'>"
                f"{esc(lines[0])}</b><br>" + "<br>".join(esc(x) for x in lines[1:]) + "</div>")
        fig = slot_figure(r)
        show(self.output, html, "\n".join(lines), figure=fig, alt=fig.alt)
        return r

    def __repr__(self) -> str:
        return (f"KaslrLab(method={self.method.value!r}, isolation={self.isolation.value!r}, "
                f"cpu={self.cpu.value!r}, seed={self.seed.value})")
