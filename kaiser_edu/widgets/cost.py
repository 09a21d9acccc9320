"""Lesson 08: what isolation costs, for a syscall rate, a working set, PCID and huge pages.

The model is :func:`cost_point`: it runs the syscall loop of :mod:`kaiser_edu.perf.workloads`
on the simulated kernel twice, isolation off and PTI (with or without PCIDs), with the same
seeded program, and prices both with the calibrated table. :func:`render_text` and
:func:`cost_figure` draw the result; :class:`CostExplorer` only wires four controls to it.

>>> p = cost_point(rate=50_000, working_set_kib=64, pcid=False, huge=False, calls=16)
>>> p["mode"], p["overhead"] > 0
('pti-nopcid', True)
"""

from __future__ import annotations

import ipywidgets as widgets

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.widgets import _view

WORKING_SETS_KIB = (16, 64, 256, 1024, 4096, 8192, 16384, 65536)
MIN_RATE, MAX_RATE = 1e3, 2e6


def cost_point(rate: float = 50_000, working_set_kib: float = 1024, pcid: bool = True,
               huge: bool = False, cpu: str = "skylake", calls: int = 32) -> dict:
    """PTI against off for Gregg's microbenchmark at one point: ``rate`` system calls per
    second, user work on ``working_set_kib`` KiB (2 MiB pages if ``huge``), PTI with PCIDs
    or booted ``nopcid``. Returns the two :class:`~kaiser_edu.perf.cost.CostReport`\\ s
    (``"off"``, ``"pti"``), the mode, the overhead and the extra cycles per call."""
    from kaiser_edu.kernel.timing import timing
    from kaiser_edu.perf import workloads as W
    from kaiser_edu.perf.cost import CostReport

    if not MIN_RATE <= rate <= MAX_RATE:
        raise KaiserEduError(f"rate must be between {MIN_RATE:,.0f} and {MAX_RATE:,.0f} "
                             f"calls/s, got {rate!r}")
    mode = "pti" if pcid else "pti-nopcid"
    work = W.work_for_rate(rate, cpu)
    max_ws = max(4, int(working_set_kib))
    t = timing(cpu)
    off = CostReport("off", cpu, W.Machine("off", cpu, huge, max_ws).run_syscalls(
        work, working_set_kib, calls), t)
    on = CostReport(mode, cpu, W.Machine(mode, cpu, huge, max_ws).run_syscalls(
        work, working_set_kib, calls), t, off.cycles_per_call)
    return {"mode": mode, "rate": rate, "working_set_kib": working_set_kib, "huge": huge,
            "cpu": cpu, "overhead": on.overhead, "reports": {"off": off, mode: on},
            "extra_cycles": on.cycles_per_call - off.cycles_per_call}


def _per_call(report, key: str) -> float:
    return report.counts.mmu[key] / report.counts.calls


def render_text(point: dict) -> str:
    """The point in words: overhead, extra cycles, and the counters that explain them."""
    off, on = point["reports"]["off"], point["reports"][point["mode"]]
    ws = point["working_set_kib"]
    lines = [
        f"{point['mode']} at {point['rate']:,.0f} syscalls/s, working set "
        f"{ws:g} KiB in {'2 MiB' if point['huge'] else '4 KiB'} pages: "
        f"overhead {point['overhead']:+.2%} ({point['extra_cycles']:+,.0f} cycles per call)",
        f"  per call, off: {off.cycles_per_call:,.0f} cycles, {_per_call(off, 'walks'):.1f} "
        f"walks, {_per_call(off, 'cr3_writes'):.0f} CR3 writes",
        f"  per call, {point['mode']}: {on.cycles_per_call:,.0f} cycles, "
        f"{_per_call(on, 'walks'):.1f} walks, {_per_call(on, 'cr3_writes'):.0f} CR3 writes, "
        f"{_per_call(on, 'flushes'):.0f} flushes",
    ]
    return "\n".join(lines)


def cost_figure(point: dict):
    """Stacked bars of the kernel-side cycles per call, off against PTI, as a
    :class:`kaiser_edu.display.Figure` with alt text."""
    from kaiser_edu.perf import plots

    return plots.breakdown_bars(point["reports"], size=(6.4, 3.6)).figure


class CostExplorer(_view.OutputView, widgets.VBox):
    """Controls (attributes): ``rate`` (FloatLogSlider, calls/s), ``working_set``
    (SelectionSlider, KiB), ``pcid`` and ``huge`` (Checkboxes), ``output``. State:
    ``point`` (the last :func:`cost_point`, None after an error) and ``error``."""

    def __init__(self, rate: float = 50_000, working_set_kib: int = 1024, pcid: bool = False,
                 huge: bool = False, cpu: str = "skylake", calls: int = 32) -> None:
        if working_set_kib not in WORKING_SETS_KIB:
            raise KaiserEduError(f"working_set_kib must be one of {WORKING_SETS_KIB}")
        self.cpu, self.calls = cpu, calls
        self.point: dict | None = None
        self.error = ""
        self.rate = widgets.FloatLogSlider(value=rate, base=10, min=3, max=6.3, step=0.1,
                                           description="syscalls/s", readout_format=",.0f",
                                           continuous_update=False,
                                           layout=widgets.Layout(width="30em"))
        self.working_set = widgets.SelectionSlider(
            options=[(f"{w:g} KiB" if w < 1024 else f"{w // 1024:g} MiB", w)
                     for w in WORKING_SETS_KIB], value=working_set_kib,
            description="working set", continuous_update=False,
            layout=widgets.Layout(width="30em"))
        self.pcid = widgets.Checkbox(value=pcid, description="PCID")
        self.huge = widgets.Checkbox(value=huge, description="2 MiB pages")
        self.output = widgets.Output()
        super().__init__([self.rate, self.working_set,
                          widgets.HBox([self.pcid, self.huge]), self.output])
        for control in (self.rate, self.working_set, self.pcid, self.huge):
            control.observe(lambda _c: self._update(), names="value")
        self._update()

    def _update(self) -> None:
        try:
            self.point = cost_point(self.rate.value, self.working_set.value, self.pcid.value,
                                    self.huge.value, self.cpu, self.calls)
            self.error = ""
        except Exception as exc:  # never raise into the front end: show it
            self.point, self.error = None, f"{type(exc).__name__}: {exc}"
            _view.show_error(self.output, self.error)
            return
        text = render_text(self.point)
        html = "<pre style='font-size:85%'>" + _view.esc(text) + "</pre>"
        fig = cost_figure(self.point)
        _view.show(self.output, html, text, figure=fig, alt=fig.alt)

    def __repr__(self) -> str:
        return (f"CostExplorer(rate={self.rate.value:,.0f}, working_set_kib="
                f"{self.working_set.value}, pcid={self.pcid.value}, huge={self.huge.value})")
