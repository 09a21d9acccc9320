"""The figures and tables of lessons 05, 08 and 09 follow issue 13's rules.

Every figure these lessons (and their widgets) show is a :class:`kaiser_edu.display.Figure`
with alt text that states what the data show, at most 9.5 inches wide (so JupyterLab shows
it unscaled at laptop width), with no text under 9 pt and no label outside the canvas
(measured by :func:`kaiser_edu.display.figures.text_report`, the same measurement the
browser test reads back from the page). The wide tables go through
:func:`kaiser_edu.display.tables.text_table`: aligned text for nbval, HTML cells that keep
values whole for the browser.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from kaiser_edu.display.figures import MIN_FONT_PT, Figure, figure_bundle, text_report
from kaiser_edu.display.tables import TextTable, text_table
from kaiser_edu.errors import KaiserEduError

MAX_WIDTH_IN = 9.5


def _readable(fig, *numbers: str) -> None:
    """The figure's rules; ``numbers``: strings its alt text must contain (from the data)."""
    assert isinstance(fig, Figure), type(fig)
    assert fig.get_figwidth() <= MAX_WIDTH_IN + 1e-9, fig.get_figwidth()
    report = text_report(fig)
    assert report.min_font_pt >= MIN_FONT_PT, report
    assert not report.cut, report.cut
    assert fig.alt.strip() and not fig.alt.startswith("Figure: "), fig.alt  # not the default
    for n in numbers:
        assert n in fig.alt, (n, fig.alt)
    bundle = figure_bundle(fig, fig.alt)
    assert "data-min-font-pt" in bundle["text/html"] and "alt='" in bundle["text/html"]


def test_meltdown_figures():
    from kaiser_edu.attacks.flush_reload import calibrate
    from kaiser_edu.kernel.timing import timing
    from kaiser_edu.widgets import meltdown as M

    hits, misses, threshold = calibrate(timing("skylake"), 500, seed=0)
    _readable(M.histogram_figure(hits, misses, threshold, "skylake"),
              f"{np.median(hits):.0f} cycles", f"{threshold:.0f} cycles")
    times = np.full(256, 290.0)
    times[0x4B] = 44.0
    fig = M.probe_figure(times, threshold, "one round")
    _readable(fig, "0x4b")
    assert "0x4c" not in fig.alt


def test_kaslr_slot_figure_says_where_the_kernel_is():
    from kaiser_edu.widgets import kaslr as K

    r = K.run_break("prefetch", "off", seed=0)
    truth = int(np.flatnonzero(r.candidates == np.uint64(r.text.truth))[0])
    _readable(K.slot_figure(r), f"slot {truth}", f"{len(r.candidates)} candidate slots")


def test_perf_plots_without_pyplot():
    from kaiser_edu.kernel.timing import timing
    from kaiser_edu.perf import calibrate as C
    from kaiser_edu.perf import plots
    from kaiser_edu.perf import workloads as W

    reports = {mode: W.syscall(mode, work_cycles=0, working_set_kib=4, calls=20)
               for mode in ("off", "pti")}
    ax = plots.breakdown_bars(reports)
    _readable(ax.figure, f"off {reports['off'].cycles_per_call:.0f}")
    fit = C.fit()
    _readable(plots.fit_bars(fit).figure, f"{fit.measured['pti'] / 1e6:.2f} measured")
    steps = {mode: W.syscall_steps(mode) for mode in ("off", "pti-nopcid")}
    _readable(plots.event_bars(steps, timing("skylake")).figure, "pti-nopcid")
    sweep = W.sweep(rates=[1e4, 1e5], working_sets_kib=[16, 1024], modes=["pti-nopcid"],
                    calls=4)
    fig = plots.sweep_figure(sweep, ["pti-nopcid"])
    _readable(fig, "pti-nopcid", "16 KiB to 1024 KiB")


def test_text_table_text_and_html():
    t = text_table(["mode", "cycles", "note"], [("off", 770, "no CR3 write"),
                                                ("pti-nopcid", 1726, "two flushes")],
                   wrap=["note"], right=["cycles"], notes=["prices: Skylake preset"])
    assert isinstance(t, TextTable)
    assert str(t).splitlines() == ["mode        cycles  note",
                                   "off            770  no CR3 write",
                                   "pti-nopcid    1726  two flushes",
                                   "prices: Skylake preset"]
    html = t._repr_html_()
    # the hyphenated value stays on one line; the wrapping column may wrap between words
    assert re.search(r"white-space:nowrap'>pti-nopcid</td>", html), html
    assert "white-space:normal" in html
    with pytest.raises(KaiserEduError, match="row 0 has 2 cells for 3 columns"):
        text_table(["a", "b", "c"], [("x", "y")])
