"""Figures of the performance lab (matplotlib), shared by ``kaiser-edu perf --plot`` and
lesson 08. Each function draws on an Axes (a new figure if none is given) and returns it."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

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
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)[1]


def breakdown_bars(reports: Mapping[str, CostReport], ax=None, skip_user: bool = True):
    """Stacked bars: cycles per call by category, one bar per mode. ``skip_user`` leaves out
    the user work (the same in every mode) so the kernel's share stays readable."""
    ax = _axes(ax)
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
        ax.annotate(note, (i, bottom[i]), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("cycles per call" + (" (without user work)" if skip_user else ""))
    ax.set_ylim(0, bottom.max() * 1.25 if bottom.max() else 1)
    ax.legend(fontsize=7, loc="upper left", ncol=2)
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
        ax.annotate(f"{total:.0f}", (i, total), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("cycles of one system call")
    ax.set_ylim(0, bottom.max() * 1.15)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.figure.tight_layout()
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
    ax.legend(title="working set", fontsize=7, ncol=2)
    return ax


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
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, modes)
    ax.set_ylabel("lseek calls per second (M)")
    ax.legend(fontsize=8)
    return ax
