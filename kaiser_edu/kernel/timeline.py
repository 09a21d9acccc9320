"""Drawing the event log as a timeline: where the CPU is, which PGD it uses, what it flushes.

The figure has two lanes, user mode (CPL 3) on top and kernel mode (CPL 0) below. A line
follows the CPU from event to event; its colour says which half of the 8 KiB PGD pair CR3
selects (bit 12: kernel or user PGD), so the classic PTI bug, running user code on the
kernel PGD after a missed SWITCH_TO_USER_CR3 (arch/x86/entry/calling.h), shows up as a
kernel-coloured stretch in the user lane. Each event is a dot labelled with the PGD half and
PCID after it (K/1 = kernel PGD, PCID 1; U/2049 = user PGD, user PCID of ASID 0); TLB flushes
are triangles in a row above the lanes (labelled with what was flushed), faults are red crosses with their name in a row below.

Built on matplotlib's Figure directly (:class:`kaiser_edu.display.figures.Figure`, with alt
text; no pyplot, no global state), 9 pt text and at most 9.5 inches wide, with no
randomness, so the same log always gives the same picture.

>>> from kaiser_edu.kernel.events import EventLog
>>> log = EventLog()
>>> _ = log.append("syscall_entry", cpl_before=3, cpl_after=0, cr3_before=0x1801 | 0x100000,
...                cr3_after=0x100001, noflush=True)
>>> fig = timeline_figure(log, title="one syscall")
>>> [len(c.get_offsets()) for c in fig.axes[0].collections if c.get_gid() == "events"]
[1]
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from matplotlib.collections import LineCollection
from matplotlib.lines import Line2D

from kaiser_edu.display.figures import MIN_FONT_PT, Figure
from kaiser_edu.kernel.events import Event, cr3_cell

KERNEL_PGD_COLOR = "#c0392b"  # red-ish: the tables that map all of the kernel
USER_PGD_COLOR = "#2471a3"  # blue: the shadow tables
FLUSH_COLOR = "#7d3c98"
FAULT_COLOR = "#e31a1c"
TRANSITION_COLOR = "#7f8c8d"

USER_LANE, KERNEL_LANE = 1.0, 0.0
FLUSH_ROW, FAULT_ROW = 1.55, -0.55


def _lane(cpl: int) -> float:
    return USER_LANE if cpl == 3 else KERNEL_LANE


def _half_color(half: str) -> str:
    return USER_PGD_COLOR if half == "user" else KERNEL_PGD_COLOR


def _short(text: str, limit: int = 22) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def timeline_figure(
    events: Iterable[Event],
    title: str = "Kernel/user transitions",
    *,
    width: float | None = None,
    annotate: bool = True,
) -> Figure:
    """Draw ``events`` (an :class:`~kaiser_edu.kernel.events.EventLog` or any iterable of
    :class:`~kaiser_edu.kernel.events.Event`) as a two-lane timeline; x is the event's seq.

    The axes' collections carry gids for tests and widgets: ``"events"`` (one dot per
    event), ``"flushes"`` (one triangle per event whose ``flushed`` is not "none"),
    ``"faults"`` (one cross per event with a fault or of a fault kind), ``"cpu_path"`` and
    ``"transitions"`` (the line segments). ``width`` overrides the automatic figure width
    (which grows with the number of events); ``annotate=False`` leaves out the per-event
    CR3/PCID labels.
    """
    evs = list(events)
    n = len(evs)
    if width is None:  # 9.5 in at most: a laptop's JupyterLab shows it unscaled
        width = min(9.5, max(6.5, 1.6 + 0.45 * n))
    # Per-event CR3 labels ("U/2050", about 0.45 in at 9 pt) only while they fit side by side.
    annotate = annotate and n <= (width - 1.6) / 0.45
    fig = Figure(figsize=(width, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_ylim(FAULT_ROW - 0.35, FLUSH_ROW + 0.35)
    ax.set_yticks(
        [KERNEL_LANE, USER_LANE], ["kernel mode\n(CPL 0)", "user mode\n(CPL 3)"]
    )
    for y in (KERNEL_LANE, USER_LANE):
        ax.axhline(y, color="#d5d8dc", linewidth=6, zorder=0, solid_capstyle="butt")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if not evs:
        ax.set_xlim(-0.5, 0.5)
        ax.set_xticks([])
        ax.text(0, 0.5, "no events", ha="center", va="center", color="gray")
        return fig

    xs = [e.seq for e in evs]
    fontsize = MIN_FONT_PT

    # The CPU's path: horizontal stretches coloured by the PGD in use, vertical transitions.
    path, path_colors, jumps = [], [], []
    first = evs[0]
    path.append([(xs[0] - 0.5, _lane(first.cpl_before)), (xs[0], _lane(first.cpl_before))])
    path_colors.append(_half_color(first.pgd_half_before))
    for i, e in enumerate(evs):
        x = xs[i]
        if _lane(e.cpl_before) != _lane(e.cpl_after):
            jumps.append([(x, _lane(e.cpl_before)), (x, _lane(e.cpl_after))])
        x_next = xs[i + 1] if i + 1 < n else x + 0.5
        path.append([(x, _lane(e.cpl_after)), (x_next, _lane(e.cpl_after))])
        path_colors.append(_half_color(e.pgd_half_after))
    path_lc = LineCollection(path, colors=path_colors, linewidths=2.5, zorder=2)
    path_lc.set_gid("cpu_path")
    ax.add_collection(path_lc)
    jump_lc = LineCollection(jumps, colors=TRANSITION_COLOR, linewidths=1.2,
                             linestyles="dashed", zorder=1)
    jump_lc.set_gid("transitions")
    ax.add_collection(jump_lc)

    # One dot per event, where the CPU is after it, coloured by the PGD it now uses.
    ys = [_lane(e.cpl_after) for e in evs]
    dots = ax.scatter(xs, ys, s=46, c=[_half_color(e.pgd_half_after) for e in evs],
                      edgecolors="black", linewidths=0.6, zorder=4)
    dots.set_gid("events")
    if annotate:
        for x, y, e in zip(xs, ys, evs):
            ax.annotate(cr3_cell(e.pgd_half_after, e.pcid_after), (x, y), xytext=(0, 7),
                        textcoords="offset points", ha="center", va="bottom",
                        fontsize=fontsize, color=_half_color(e.pgd_half_after), zorder=5)

    flushes = [e for e in evs if e.did_flush]
    fl = ax.scatter([e.seq for e in flushes], [FLUSH_ROW] * len(flushes), marker="v", s=60,
                    color=FLUSH_COLOR, zorder=4)
    fl.set_gid("flushes")
    for i, e in enumerate(flushes):  # neighbours alternate heights so labels do not collide
        ax.annotate(_short(e.flushed, 16), (e.seq, FLUSH_ROW), xytext=(0, 6 + 12 * (i % 2)),
                    textcoords="offset points", ha="center", va="bottom",
                    fontsize=fontsize, color=FLUSH_COLOR)

    faults = [e for e in evs if e.is_fault]
    fa = ax.scatter([e.seq for e in faults], [_lane(e.cpl_after) for e in faults], marker="X",
                    s=130, color=FAULT_COLOR, edgecolors="black", linewidths=0.6, zorder=6)
    fa.set_gid("faults")
    for i, e in enumerate(faults):  # "#PF 0x14", or the kind ("triple fault")
        code = re.search(r"#PF error code (0x[0-9a-f]+)", e.fault or "")
        label = f"#PF {code.group(1)}" if code else (e.fault or e.kind.replace("_", " "))
        ax.annotate(_short(label), (e.seq, FAULT_ROW), xytext=(0, 13 * (i % 2)),
                    textcoords="offset points", ha="center", va="center",
                    fontsize=fontsize, color=FAULT_COLOR)

    ax.set_xlim(xs[0] - 0.8, xs[-1] + 0.8)
    ticks = [f"{e.seq} {e.kind.replace('_', ' ')}" for e in evs]
    ax.set_xticks(xs, ticks, rotation=55 if n > 6 else 30, ha="right", rotation_mode="anchor",
                  fontsize=fontsize)
    ax.set_xlabel("event (sequence number order)")
    handles = [
        Line2D([], [], color=KERNEL_PGD_COLOR, linewidth=2.5, label="kernel PGD in CR3"),
        Line2D([], [], color=USER_PGD_COLOR, linewidth=2.5, label="user PGD in CR3"),
        Line2D([], [], color=FLUSH_COLOR, marker="v", linestyle="none", label="TLB flush"),
        Line2D([], [], color=FAULT_COLOR, marker="X", linestyle="none", label="fault"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=fontsize,
               frameon=False)
    fig.alt = _alt_text(evs, title)
    return fig


def _alt_text(evs: list, title: str | None) -> str:
    """The timeline in words, for a screen reader: what happened, in order."""
    writes = sum(e.cr3_changed for e in evs)
    flushes = sum(e.did_flush for e in evs)
    faults = [e for e in evs if e.is_fault]
    steps = "; ".join(f"{e.seq} {e.kind.replace('_', ' ')} CPL {e.cpl_before} to "
                      f"{e.cpl_after}, CR3 {cr3_cell(e.pgd_half_after, e.pcid_after)}"
                      for e in evs[:24])
    more = f"; and {len(evs) - 24} more" if len(evs) > 24 else ""
    return (f"Timeline{': ' + title if title else ''}. {len(evs)} kernel transitions between "
            f"the user-mode and kernel-mode lanes; CR3 changes in {writes}, the TLB is flushed "
            f"in {flushes}, {len(faults)} fault{'s' if len(faults) != 1 else ''}. "
            f"Events: {steps}{more}.")


__all__ = ["timeline_figure"]
