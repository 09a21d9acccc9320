"""Figures of the performance lab (matplotlib), shared by ``kaiser-edu perf --plot`` and
lesson 08. Each function draws on an Axes and returns it. Given none, it draws on a new
:class:`kaiser_edu.display.Figure` (no pyplot state; at most 9.5 inches wide, so a laptop's
JupyterLab shows it unscaled) and gives it alt text that says what the data show, so a
lesson cell ending in ``plots.fit_bars(fit).figure`` shows the PNG with that alt text. Every
text is at least 9 pt (:data:`kaiser_edu.display.figures.MIN_FONT_PT`)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from kaiser_edu.display.figures import MIN_FONT_PT
from kaiser_edu.perf.cost import CATEGORIES, CostReport

COLORS = {
    "user_work": "#c7d7e8", "tlb_hits": "#9ecae1", "tlb_walks": "#e6550d",
    "cr3_writes": "#756bb1", "tlb_flushes": "#fd8d3c", "invlpg_invpcid": "#fdd0a2",
    "entry_exit": "#74c476", "kernel_work": "#31a354", "faults": "#636363",
}
MODE_COLORS = {"off": "#636363", "kaiser": "#d62728", "pti": "#1f77b4",
               "pti-nopcid": "#ff7f0e"}


def _axes(ax, size=(6.4, 3.6)):
    if ax is not None:
        return ax
    from kaiser_edu.display.figures import Figure

    return Figure(figsize=size, layout="constrained").add_subplot()


def _alt(ax, text: str) -> None:
    """Alt text for the figure ``ax`` is on (read by :class:`kaiser_edu.display.Figure`)."""
    ax.figure.alt = text


def _per_mode(values: Mapping[str, str]) -> str:
    return "; ".join(f"{mode} {value}" for mode, value in values.items())


def breakdown_bars(reports: Mapping[str, CostReport], ax=None, skip_user: bool = True,
                   size=(6.4, 3.6)):
    """Stacked bars: cycles per call by category, one bar per mode. ``skip_user`` leaves out
    the user work (the same in every mode) so the kernel's share stays readable."""
    ax = _axes(ax, size)
    names = list(reports)
    bottom = np.zeros(len(names))
    for cat in CATEGORIES:
        if skip_user and cat == "user_work":
            continue
        vals = np.array([reports[n].breakdown[cat] for n in names])
        if not vals.any():
            continue
        ax.bar(names, vals, bottom=bottom, label=cat.replace("_", " "), color=COLORS[cat])
        bottom += vals
    for i, n in enumerate(names):
        ov = reports[n].overhead
        note = f"{bottom[i]:.0f}" + (f"\n+{ov:.0%}" if ov else "")
        ax.annotate(note, (i, bottom[i]), ha="center", va="bottom", fontsize=MIN_FONT_PT)
    ax.set_ylabel("cycles per call" + (" (without user work)" if skip_user else ""))
    ax.set_ylim(0, bottom.max() * 1.4 if bottom.max() else 1)
    ax.legend(fontsize=MIN_FONT_PT, loc="upper left", ncol=2)
    _alt(ax, "Stacked bars: cycles per call by category (TLB, CR3 writes, flushes, entry and "
         "kernel work)" + (", without the user work" if skip_user else "") + ", per mode: "
         + _per_mode({n: f"{bottom[i]:.0f}" + (f" (+{reports[n].overhead:.0%})"
                                                if reports[n].overhead else "")
                      for i, n in enumerate(names)}) + ".")
    return ax


def event_bars(steps: Mapping[str, list], timing, ax=None):
    """Stacked bars from the event log of one system call per mode
    (:func:`kaiser_edu.perf.workloads.syscall_steps`): each category split into the entry
    half (solid) and the exit half (hatched) of the round trip."""
    from kaiser_edu.perf.cost import breakdown

    ax = _axes(ax, (8.5, 3.8))
    names = list(steps)
    bottom = np.zeros(len(names))
    for half, hatch in (("entry", ""), ("exit", "//")):
        for cat in CATEGORIES:
            vals = np.array([sum(breakdown(c, timing)[cat] for e, c in steps[n]
                                 if e.kind.endswith(half)) for n in names])
            if not vals.any():
                continue
            ax.bar(names, vals, bottom=bottom, color=COLORS[cat], hatch=hatch,
                   edgecolor="white", label=f"{cat.replace('_', ' ')} ({half})")
            bottom += vals
    for i, total in enumerate(bottom):
        ax.annotate(f"{total:.0f}", (i, total), ha="center", va="bottom",
                    fontsize=MIN_FONT_PT)
    ax.set_ylabel("cycles of one system call")
    ax.set_ylim(0, bottom.max() * 1.15)
    ax.legend(fontsize=MIN_FONT_PT, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _alt(ax, "Stacked bars: the cycles of one system call per mode, by category, the entry "
         "half solid and the exit half hatched: "
         + _per_mode({n: f"{bottom[i]:.0f} cycles" for i, n in enumerate(names)}) + ".")
    return ax


def sweep_curves(sweep, mode: str | None = None, ax=None):
    """Overhead against syscall rate, one curve per working set, for one mode."""
    ax = _axes(ax)
    mode = mode or sweep.modes[-1]
    m = sweep.modes.index(mode)
    cmap = __import__("matplotlib").colormaps["viridis"]
    for w, ws in enumerate(sweep.working_sets_kib):
        label = f"{ws / 1024:g} MiB" if ws >= 1024 else f"{ws:g} KiB"
        ax.plot(sweep.rates, 100 * sweep.overhead[m, :, w], marker="o", ms=3,
                color=cmap(w / max(1, len(sweep.working_sets_kib) - 1)), label=label)
    ax.set_xscale("log")
    ax.set_xlabel("system calls per second")
    ax.set_ylabel("overhead (%)")
    ax.set_title(f"{mode} on {sweep.cpu}" + (", 2 MiB pages" if sweep.huge else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="working set", fontsize=MIN_FONT_PT, title_fontsize=MIN_FONT_PT, ncol=2)
    last = 100 * sweep.overhead[m, -1, :]
    _alt(ax, f"Line chart: the overhead of {mode} in percent against system calls per second "
         f"(log scale, {sweep.rates[0]:,.0f} to {sweep.rates[-1]:,.0f}), one line per working "
         f"set ({sweep.working_sets_kib[0]:g} KiB to {sweep.working_sets_kib[-1]:g} KiB); "
         f"every line climbs with the rate, at the highest rate from {last.min():.1f}% to "
         f"{last.max():.1f}%.")
    return ax


def sweep_figure(sweep, modes: list[str]):
    """:func:`sweep_curves` for each of ``modes`` side by side, on a log scale from 0.005%
    to 100%: a :class:`kaiser_edu.display.Figure` with alt text."""
    from kaiser_edu.display.figures import Figure

    fig = Figure(figsize=(9.4, 4.2), layout="constrained")
    axes = fig.subplots(1, len(modes), sharey=True, squeeze=False)[0]
    alts = []
    for mode, ax in zip(modes, axes, strict=True):
        sweep_curves(sweep, mode, ax=ax)
        ax.set_yscale("log")
        ax.set_ylim(0.005, 100)
        alts.append(fig.alt)
    fig.alt = " ".join(alts)
    return fig


def working_set_curves(sweeps: Mapping[str, object], ax=None):
    """Overhead against working set at one rate: 4 KiB pages against 2 MiB pages."""
    ax = _axes(ax)
    for name, s in sweeps.items():
        ax.plot(s.working_sets_kib, 100 * s.overhead[0, 0, :], marker="o",
                label=f"{name} pages")
    some = next(iter(sweeps.values()))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("working set (KiB)")
    ax.set_ylabel("overhead (%)")
    ax.set_title(f"{some.modes[0]} at {some.rates[0]:,.0f} calls/s")
    ax.grid(True, alpha=0.3)
    ax.legend()
    peaks = {name: (100 * s.overhead[0, 0, :].max(),
                    s.working_sets_kib[int(np.argmax(s.overhead[0, 0, :]))])
             for name, s in sweeps.items()}
    _alt(ax, f"Line chart: the overhead of {some.modes[0]} at {some.rates[0]:,.0f} calls/s "
         "in percent against the working set (log scale), one line per page size; "
         + _per_mode({f"{name} pages": f"peak {pct:.1f}% at {kib:g} KiB"
                      for name, (pct, kib) in peaks.items()}) + ".")
    return ax


def fit_bars(the_fit, ax=None):
    """Hansen's lseek1 rates against the calibrated model."""
    ax = _axes(ax, (5.2, 3.2))
    modes = list(the_fit.measured)
    x = np.arange(len(modes))
    ax.bar(x - 0.2, [the_fit.measured[m] / 1e6 for m in modes], 0.4, label="Hansen (measured)",
           color="#bbbbbb")
    ax.bar(x + 0.2, [the_fit.model[m] / 1e6 for m in modes], 0.4, label="model (fitted)",
           color=[MODE_COLORS[m] for m in modes])
    for i, m in enumerate(modes):
        ax.annotate(f"{the_fit.residuals[m]:+.1%}", (i + 0.2, the_fit.model[m] / 1e6),
                    ha="center", va="bottom", fontsize=MIN_FONT_PT)
    ax.set_xticks(x, modes)
    ax.set_ylabel("lseek calls per second (M)")
    ax.legend(fontsize=MIN_FONT_PT)
    _alt(ax, "Bar chart: Hansen's measured lseek1 rates (grey) against the fitted model, in "
         "millions of calls per second: " + _per_mode(
             {m: f"{the_fit.measured[m] / 1e6:.2f} measured, {the_fit.model[m] / 1e6:.2f} "
                 f"model ({the_fit.residuals[m]:+.1%})" for m in modes}) + ".")
    return ax
