"""kaiser_edu.display: tables that never break a value, figures with alt text and 9 pt text.

The browser test (tests/test_browser.py) checks the same properties where a student sees
them, in JupyterLab at 1366 px; these tests check the pieces without a browser, and every
figure function of the lessons at the sizes the lessons use.
"""

from __future__ import annotations

import matplotlib.figure
import pytest

from kaiser_edu.display.figures import (
    MIN_FONT_PT,
    Figure,
    figure_bundle,
    text_report,
)
from kaiser_edu.display.tables import TextTable, cell_html, words_html
from kaiser_edu.errors import KaiserEduError

MAX_WIDTH_IN = 9.5  # what a laptop's JupyterLab output area shows unscaled at 100 dpi


def test_text_table_is_its_text_and_shows_as_html():
    t = TextTable("a  b\n1  not-present", ["a", "b"], [["1", "not-present <x>"]], wrap=("b",),
                  notes=("a note",))
    assert isinstance(t, str) and t.splitlines() == ["a  b", "1  not-present"]
    html = t._repr_html_()
    assert "white-space:nowrap'>1</td>" in html  # a value cell never wraps
    # the wrapping column keeps a hyphenated word whole, and escapes markup
    assert "<span style='white-space:nowrap'>not-present</span> &lt;x&gt;" in html
    assert "a note" in html


def test_text_table_pretty_prints_as_text():
    from IPython.lib.pretty import pretty

    assert pretty(TextTable("x\ny", ["c"], [["x"]])) == "x\ny"


def test_table_rows_must_match_columns():
    with pytest.raises(KaiserEduError, match="row 0 has 1 cells for 2 columns"):
        TextTable("", ["a", "b"], [["1"]])._repr_html_()


def test_words_html_keeps_slashes_and_hyphens_together():
    assert words_html("K/2 user-mode read") == (
        "<span style='white-space:nowrap'>K/2</span> "
        "<span style='white-space:nowrap'>user-mode</span> read")
    assert "nowrap" in cell_html("0x800000") and "normal" in cell_html("a b", wrap=True)


def test_text_report_measures_small_and_cut_text():
    fig = matplotlib.figure.Figure(figsize=(4, 2))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    ax.text(0.1, 0.5, "small", fontsize=6)
    ax.text(0.9, 0.5, "sticks out of the canvas", fontsize=10)
    r = text_report(fig)
    assert r.min_font_pt == 6 and r.cut == ("sticks out of the canvas",) and r.texts == 2


def test_figure_bundle_needs_alt_text_and_carries_the_measurements():
    fig = Figure(figsize=(3, 2), layout="constrained")  # without a layout the x tick
    fig.add_subplot().set_title("t", fontsize=12)  # labels stick out at the bottom
    with pytest.raises(KaiserEduError, match="alt text"):
        figure_bundle(fig, " ")
    fig.alt = "A title & nothing else"
    bundle = fig._repr_mimebundle_()
    assert set(bundle) == {"image/png", "text/html", "text/plain"}
    assert bundle["text/plain"] == "Figure: A title & nothing else"
    html = bundle["text/html"]
    assert "alt='A title &amp; nothing else'" in html and "width='300'" in html
    assert "data-min-font-pt='10.0'" in html  # the tick labels (10 pt) are the smallest
    assert "data-cut-labels='0'" in html and "data-dpi='100'" in html


def _lesson_figures():
    """Every figure function of the lessons, at the arguments the lessons use (smaller runs)."""
    from kaiser_edu.kernel import Kernel
    from kaiser_edu.kernel.timeline import timeline_figure
    from kaiser_edu.widgets import address_bits_figure
    from kaiser_edu.widgets.figures import (
        flush_vs_pcid,
        miss_rate_vs_working_set,
        page_table_tree,
        tlb_runs_figure,
    )
    from kaiser_edu.widgets.shadow_pgd import demo_machine as shadow_machine
    from kaiser_edu.widgets.shadow_pgd import shadow_pgd_figure
    from kaiser_edu.widgets.tlb_lab import TLBParams, tlb_experiment
    from kaiser_edu.widgets.walk_stepper import demo_machine

    yield "address bits", address_bits_figure(0xFFFF_FFFF_8100_0000)
    yield "address bits, 5-level, not canonical", address_bits_figure(0x8000_0000_0000, 5)
    m = demo_machine(seed=0)
    yield "page-table tree", page_table_tree(m, [m.va(label) for label in (
        "user code (r-x)", "user data (rw-, NX)", "user 2 MiB page",
        "not present at the PD level", "direct map (1 GiB page)", "kernel text (2 MiB page)",
        "vsyscall (user page, kernel half)")])
    yield "TLB miss rate", miss_rate_vs_working_set(accesses=5000, progress=False)
    yield "flush vs PCID", flush_vs_pcid(accesses=5000, progress=False)
    yield "TLB lab runs", tlb_runs_figure([tlb_experiment(TLBParams(working_set=w,
                                                                   accesses=2000))
                                           for w in (16, 2048, 8192, 100, 300, 600)])
    for mode in ("off", "kaiser", "pti"):
        yield f"shadow PGD {mode}", shadow_pgd_figure(*shadow_machine(mode, seed=0))
    k = Kernel(isolation="pti", seed=0)
    task = k.spawn("demo")
    k.switch_to(task)
    for _ in range(15):
        k.syscall(task)
        k.interrupt(task)
    yield "timeline, 32 events", timeline_figure(k.events, title="PTI")


def test_every_lesson_figure_is_readable_at_laptop_width():
    problems = []
    for name, fig in _lesson_figures():
        report = text_report(fig)
        if report.min_font_pt < MIN_FONT_PT:
            problems.append(f"{name}: text at {report.min_font_pt} pt")
        if report.cut:
            problems.append(f"{name}: labels cut off: {report.cut}")
        if fig.get_figwidth() > MAX_WIDTH_IN:
            problems.append(f"{name}: {fig.get_figwidth():.2f} in wide (shown scaled down)")
        if not getattr(fig, "alt", "").strip():
            problems.append(f"{name}: no alt text")
    assert not problems, "\n".join(problems)


# --- the tables the lessons are built around ---------------------------------------------
def test_event_log_table_shows_html_and_explains_its_abbreviations():
    from kaiser_edu.kernel import Kernel

    k = Kernel(isolation="pti", seed=0)
    task = k.spawn("demo")
    k.switch_to(task)
    k.events.clear()
    k.syscall(task)
    k.interrupt(task, from_kernel=True)
    table = k.events.table()
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["seq", "kind", "CPL"] and len(lines) == 2 + 4
    # an interrupt during a syscall does not read like one from user mode
    assert "during a system call" in lines[-1] and "during a system call" not in lines[2]
    html = table._repr_html_()
    assert html.count("<tr") == 1 + 4
    assert "nf = NOFLUSH" in html and "FL = a flushing write" in html
    assert "<span style='white-space:nowrap'>(K/2:</span>" in html  # notes keep K/2 whole


def test_walkthrough_table_and_the_replayed_fault():
    from kaiser_edu.kernel.walkthrough import REPLAY_LABEL, walkthrough

    w = walkthrough("syscall", "pti", breakage="forget SWITCH_TO_USER_CR3")
    faults = [s for s in w.steps if s.fault]
    assert [s.replay for s in faults] == [False, True]
    assert faults[1].label == REPLAY_LABEL and faults[1].cells()[4].startswith("the same fault")
    table = w.table(len(w.steps) - 2)
    assert len(table.splitlines()) == 3 and table.splitlines()[-1].startswith("=> killed")
    assert table._repr_html_().count("<tr") == 1 + 2


def test_linux_map_keeps_the_marked_row_in_view():
    from kaiser_edu.widgets.linux_map import linux_map, linux_map_html

    html = linux_map_html(4, highlight=0xFFFF_FFFF_FF60_0000, window=2)  # vsyscall
    assert html.count("&#9654;") == 1 and "more regions above" in html
    assert html.count("<tr") == 1 + 1 + 5  # header, "more above", the window of 2 + 1 + 2
    assert "more region" not in linux_map_html(4)  # nothing marked: the whole map
    assert linux_map_html(4).count("<tr") == 1 + len(linux_map(4))
