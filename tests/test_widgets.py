"""The widgets and figures of lessons 01-03 (kaiser_edu/widgets/).

Pure model functions are checked against numbers computed independently (address.split,
the reference walk, the MMU counters); the views are driven the way a student drives them -
set a control's ``.value``, ``.click()`` a button - and what they show afterwards is read
back from their Output widget. Figures are rendered with Agg and their artists counted.
"""

from __future__ import annotations

import base64
import sys

import matplotlib
import pytest

matplotlib.use("Agg")

from kaiser_edu.errors import KaiserEduError  # noqa: E402
from kaiser_edu.hw import bits as b  # noqa: E402
from kaiser_edu.hw.address import split  # noqa: E402
from kaiser_edu.widgets import figures, linux_map  # noqa: E402
from kaiser_edu.widgets.address_explorer import (  # noqa: E402
    AddressExplorer,
    explore_address,
    parse_address,
)
from kaiser_edu.widgets.tlb_lab import (  # noqa: E402
    StaleTLBWidget,
    TLBLab,
    TLBParams,
    stale_tlb_demo,
    tlb_experiment,
)
from kaiser_edu.widgets.walk_stepper import (  # noqa: E402
    WalkStepper,
    demo_machine,
    error_code_bits,
    walk_view,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def machine():
    return demo_machine(seed=0)


# --- linux_map -----------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [4, 5])
def test_linux_map_covers_every_address_once(levels):
    regions = linux_map.linux_map(levels)
    assert regions[0].start == 0 and regions[-1].end == (1 << 64) - 1
    for lower, upper in zip(regions, regions[1:]):
        assert upper.start == lower.end + 1, (lower, upper)


@pytest.mark.parametrize("va, name", [
    (0x40_0000, "user space"),
    (0x0000_8000_0000_0000, "non-canonical hole"),
    (0xFFFF_8000_0000_0000, "guard hole"),
    (0xFFFF_8880_0000_0000, "direct map"),
    (0xFFFF_C900_0000_0000, "vmalloc"),
    (0xFFFF_FE00_0000_0000, "cpu_entry_area"),
    (0xFFFF_FF00_0000_0000, "espfix"),
    (0xFFFF_FFFF_8000_0000, "kernel text"),
    (0xFFFF_FFFF_A000_0000, "modules"),
    (0xFFFF_FFFF_FF5F_F000, "fixmap"),
    (0xFFFF_FFFF_FF60_0000, "vsyscall"),
])
def test_region_of_names_the_mm_rst_areas(va, name):
    assert linux_map.region_of(va).name == name


def test_linux_map_html_marks_the_region():
    html = linux_map.linux_map_html(4, highlight=0xFFFF_FE00_0000_1000)
    assert "mm.rst" in html and html.count("&#9654;") == 1
    marked = html.split("&#9654;")[1].split("</tr>")[0]
    assert "cpu_entry_area" in marked


# --- address explorer ------------------------------------------------------------------------
@pytest.mark.parametrize("va, levels", [
    (0x0000_7F00_0000_1234, 4), (0xFFFF_8880_0000_0000, 4), (0x0000_8000_0000_0000, 4),
    (0xFF11_0000_1234_5678, 5), (0x0100_0000_0000_0000, 5), (0xFFFF_FFFF_FFFF_FFFF, 4),
])
def test_explore_address_fields_match_split(va, levels):
    info = explore_address(va, levels)
    assert info.indices == split(va, levels)
    by_name = {f.name: f.value for f in info.fields}
    for name, value in split(va, levels).items():
        assert by_name[name] == value
    assert sum(f.width for f in info.fields) == 64
    n = 12 + 9 * levels
    top = va >> (n - 1)
    canonical = top in (0, (1 << (65 - n)) - 1)
    assert info.canonical == canonical
    assert info.half == ("non-canonical" if not canonical else "user" if top == 0 else "kernel")


def test_parse_address_accepts_hex_and_refuses_the_rest():
    assert parse_address("0xFFFF_8880_0000_0000") == 0xFFFF_8880_0000_0000
    assert parse_address("7fff`ffff`f000") == 0x7FFF_FFFF_F000
    for bad in ("", "0xg", "12 34 z", "1" * 17):
        with pytest.raises(KaiserEduError, match="hex|64 bits"):
            parse_address(bad)


def test_address_explorer_follows_text_slider_and_levels():
    w = AddressExplorer()
    assert repr(w) == "AddressExplorer(address=0x7ffffffff000, levels=4)"
    assert "PML4 = <b>255</b>" in w.html and "canonical" in w.html
    assert "half: user" in w.text

    w.address.value = "ffff888000001234"
    assert "PML4 = <b>273</b>" in w.html and "direct map" in w.html
    assert "offset = <b>0x234</b>" in w.html
    assert "half: kernel" in w.text

    before = w.text
    w.slider.value = 512  # the first address above the user half: non-canonical
    assert w.address.value == "0x0000800000000000"
    assert w.text != before and "canonical: NO" in w.text and "#GP" in w.html
    assert "non-canonical hole" in w.text

    w.levels.value = 5  # with LA57 the same address is an ordinary user address
    assert "PML5[56:48]=0" in w.text and "canonical: yes" in w.text

    w.address.value = "not an address"
    assert w.info is None and "not a hexadecimal address" in w.text
    w.address.value = "0x400000"
    assert w.info is not None and w.info.va == 0x400000


# --- walk stepper ------------------------------------------------------------------------------
def test_demo_machine_is_deterministic_and_seeded():
    a, a2, c = demo_machine(3), demo_machine(3), demo_machine(4)
    assert a.mem.nonzero_qwords() == a2.mem.nonzero_qwords()
    assert a.mem.nonzero_qwords() != c.mem.nonzero_qwords()


def test_demo_machine_shows_every_rule(machine):
    m = machine
    assert m.walk(m.va("user 2 MiB page")).page_size == b.PMD_SIZE
    assert m.walk(m.va("direct map (1 GiB page)"), cpl=0).page_size == b.PUD_SIZE
    assert m.walk(m.va("user read-only"), "write").error_code == 0x7
    assert m.walk(m.va("user data (rw-, NX)"), "fetch").error_code == 0x15
    assert m.walk(m.va("vmalloc (supervisor-only)")).error_code == 0x5
    not_present = m.walk(m.va("not present at the PD level"))
    assert not_present.error_code == 0x4 and len(not_present.steps) == 3
    assert m.walk(m.va("not present at the PML4 level")).error_code == 0x4
    assert m.walk(m.va("user data, reserved bit 50 set")).error_code & b.X86_PF_RSVD
    assert m.walk(m.va("user rw page under a read-only PDE"), "write").error_code == 0x7
    assert m.walk(m.va("user PTE under a supervisor PDE")).error_code == 0x5
    assert m.walk(m.va("non-canonical")).outcome == b.OUTCOME_GP
    assert m.walk(m.va("user code (r-x)"), "fetch", cpl=0, smep=True).error_code == 0x11
    assert m.walk(m.va("user data (rw-, NX)"), cpl=0, smap=True).error_code == 0x1
    assert m.walk(m.va("user data (rw-, NX)"), cpl=0, ac=True, smap=True).ok
    assert m.walk(m.va("kernel rodata (read-only)"), "write", cpl=0, wp=False).ok


@pytest.mark.parametrize("regs", [
    {}, {"wp": False}, {"smep": True, "smap": True}, {"nxe": False},
])
def test_walk_view_agrees_with_the_reference_walk(machine, regs):
    for a in machine.addresses:
        for kind in ("read", "write", "fetch"):
            for cpl, ac in ((3, False), (0, False), (0, True)):
                view = walk_view(machine, a.va, kind, cpl, ac, **regs)
                ref = machine.walk(a.va, kind, cpl, ac, **regs)
                assert (view.result.outcome, view.result.pa, view.result.error_code) == (
                    ref.outcome, ref.pa, ref.error_code)
                assert [(r.entry_pa, r.value) for r in view.rows] == [
                    (s.entry_pa, s.entry) for s in ref.steps]
                assert view.stages == len(ref.steps) + 1
                if ref.error_code is not None:
                    assert f"{ref.error_code:#x}" in view.outcome


def test_walk_view_accumulates_rights(machine):
    view = walk_view(machine, machine.va("user rw page under a read-only PDE"), "write")
    assert [r.writable for r in view.rows] == [True, True, False, False]
    assert "PDE" in view.reason and "ANDed" in view.reason
    assert error_code_bits(0x7) == "P=1 W=1 U=1 RSVD=0 I=0 PK=0"


def test_walk_stepper_steps_resets_and_follows_controls(machine):
    snapshot = machine.mem.nonzero_qwords()
    w = WalkStepper(machine)
    va = machine.addresses[0].va
    assert w.preset.value == va and w.revealed == 0
    entries = list(machine.pt.entries(va))
    def row(e):  # how the table shows an entry's address
        return f"<code>{e.pa:#x}</code>"

    assert row(entries[0]) not in w.html  # nothing revealed yet

    w.step_button.click()
    assert row(entries[0]) in w.html and row(entries[1]) not in w.html
    for _ in entries[1:]:
        w.step_button.click()
    assert f"{entries[-1].value:#018x}" in w.html and not w.finished
    w.step_button.click()
    assert w.finished
    pa = machine.walk(va).pa
    assert f"physical address {pa:#x}" in w.text and "translated" in w.html
    w.step_button.click()  # past the end: nothing changes
    assert w.revealed == len(entries) + 1

    w.reset_button.click()
    assert w.revealed == 0 and row(entries[0]) not in w.html

    w.preset.value = machine.va("user read-only")
    assert w.address.value == hex(machine.va("user read-only"))
    w.kind.value = "write"
    for _ in range(5):
        w.step_button.click()
    assert "error code 0x7" in w.text and "fault" in w.html
    w.cpl.value = 0  # supervisor write to a read-only page: CR0.WP decides
    for _ in range(5):
        w.step_button.click()
    assert "error code 0x3" in w.text
    w.wp.value = False
    for _ in range(5):
        w.step_button.click()
    assert "CR0.WP=0" in w.text and "physical address" in w.text

    w.kind.value = "read"
    w.smap.value = True
    for _ in range(5):
        w.step_button.click()
    assert "error code 0x1" in w.text and "SMAP" in w.text
    w.ac.value = True
    for _ in range(5):
        w.step_button.click()
    assert "RFLAGS.AC=1" in w.text and "physical address" in w.text

    w.address.value = "0x800000000000"
    w.step_button.click()
    assert "#GP" in w.text and w.preset.value == machine.va("non-canonical")
    w.address.value = "0x1234567"  # not a preset: the dropdown lets go
    assert w.preset.value is None
    w.address.value = "nope"
    w.step_button.click()
    assert w.view is None and "not a hexadecimal address" in w.text
    assert repr(w).startswith("WalkStepper(address='nope'")
    assert machine.mem.nonzero_qwords() == snapshot  # stepping never changes the tables


# --- TLB lab ---------------------------------------------------------------------------------
def test_tlb_experiment_counters_add_up_and_are_deterministic():
    r = tlb_experiment(TLBParams(working_set=300, accesses=20_000, seed=5))
    assert r["l1_hits"] + r["l2_hits"] + r["walks"] == r["accesses"] == 20_000
    assert r == tlb_experiment({"working_set": 300, "accesses": 20_000, "seed": 5})
    assert r["walks"] == 0  # 300 pages fit in the 1536-entry L2


def test_tlb_experiment_misses_rise_past_the_tlb_reach():
    rates = [tlb_experiment(working_set=ws, l1_entries=16, l2_entries=256,
                            accesses=20_000)["miss_rate"] for ws in (64, 256, 512, 2048)]
    assert rates[0] == rates[1] == 0.0
    assert 0.3 < rates[2] < rates[3] < 1.0


def test_pcid_lowers_misses_under_frequent_switches():
    common = {"working_set": 64, "switch_every": 20, "accesses": 20_000}
    flush = tlb_experiment(pcid=False, **common)
    tagged = tlb_experiment(pcid=True, **common)
    assert flush["cr3_writes"] == tagged["cr3_writes"] == 1000
    assert flush["miss_rate"] > 0.5 and tagged["miss_rate"] < 0.01
    rare = tlb_experiment(pcid=False, **{**common, "switch_every": 5000})
    assert rare["miss_rate"] < flush["miss_rate"] / 10


def test_tlb_experiment_refuses_bad_parameters():
    for bad in ({"working_set": 0}, {"accesses": 10**9}, {"pattern": "zigzag"},
                {"l1_entries": 100}, {"switch_every": -1}):
        with pytest.raises(KaiserEduError):
            tlb_experiment(**bad)
    with pytest.raises(KaiserEduError, match="unknown"):
        tlb_experiment({"workingset": 3})


def test_stale_tlb_demo_reads_old_data_until_invlpg():
    first, stale, fresh = stale_tlb_demo()
    assert first.tlb == "walk" and not first.stale and first.data == b"old page"
    assert stale.tlb in ("L1", "L2") and stale.stale and stale.pa == first.pa
    assert stale.data == b"old page" and stale.pte_frame != first.pte_frame
    assert fresh.tlb == "walk" and not fresh.stale and fresh.data == b"NEW PAGE"
    assert fresh.pa == stale.pte_frame
    assert "STALE" in str(stale)


def test_stale_tlb_widget_reveals_one_read_per_click():
    w = StaleTLBWidget()
    assert "press Next step" in w.text
    w.step_button.click()
    assert "old page" in w.text and "STALE" not in w.text
    w.step_button.click()
    assert "STALE" in w.text and "stale" in w.html
    w.step_button.click()
    w.step_button.click()
    assert w.text.count("\n") == 2 and "NEW PAGE" in w.text
    assert repr(w) == "StaleTLBWidget(step=3/3)"
    w.reset_button.click()
    assert w.revealed == 0


def test_tlb_lab_reruns_when_controls_change():
    w = TLBLab(TLBParams(accesses=20_000))
    assert repr(w) == ("TLBLab(l1=64, l2=1536, working_set=256, switch_every=0, "
                       "pcid=False)")
    assert "page walks 0" in w.text
    png = [o for o in w.output.outputs if "image/png" in o["data"]]
    assert base64.b64decode(png[0]["data"]["image/png"]).startswith(PNG_MAGIC)

    before = w.text
    w.working_set.value = 4096
    expected = tlb_experiment(TLBParams(accesses=20_000, working_set=4096))
    assert w.text != before and f"page walks {expected['walks']}" in w.text
    assert f"{expected['miss_rate']:.1%}" in w.html

    w.working_set.value = 64
    w.switch_every.value = 10
    flush = w.result["miss_rate"]
    w.pcid.value = True
    assert w.result["miss_rate"] < flush and "PCID on" in w.text
    assert w.result == tlb_experiment(TLBParams(accesses=20_000, working_set=64,
                                                switch_every=10, pcid=True))
    w.l1_entries.value = 16
    w.l2_entries.value = 64
    assert "L1 16 entries" in w.text and "L2 64 entries" in w.text
    w.run_button.click()
    assert len(w.history) == w.keep


# --- figures ---------------------------------------------------------------------------------
def _gids(fig, gid):
    return [p for ax in fig.axes for p in ax.patches if p.get_gid() == gid]


def test_page_table_tree_draws_one_box_per_table(machine):
    vas = [machine.va("user code (r-x)"), machine.va("user read-only"),
           machine.va("direct map (1 GiB page)"), machine.va("kernel text (2 MiB page)"),
           machine.va("not present at the PD level"), machine.va("non-canonical")]
    tables, frames, edges = set(), set(), set()
    for va in vas[:-1]:
        for e in machine.pt.entries(va):
            tables.add(e.pa & ~0xFFF)
            if e.present:
                edges.add(e.pa)
                if e.is_leaf:
                    frames.add(machine.pt.translate(va) & ~((1 << b.level_shift(e.level)) - 1))
    fig = figures.page_table_tree(machine, vas)
    assert len(_gids(fig, "table")) == len(tables)
    assert len(_gids(fig, "frame")) == len(frames) == 4
    assert len(_gids(fig, "arrow")) == len(edges) + 1  # + CR3 -> top table
    text = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "not present" in text and "not canonical" in text and "CR3 = " in text
    assert fig._repr_png_().startswith(PNG_MAGIC)


def test_miss_rate_figure_has_one_curve_per_config():
    fig = figures.miss_rate_vs_working_set([(16, 64), (64, 512)], [16, 128, 1024],
                                           accesses=5000, progress=False)
    (ax,) = fig.axes
    curves = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert len(curves) == 2 and len(ax.get_legend().get_texts()) == 2
    for line in curves:
        ys = list(line.get_ydata())
        assert ys == sorted(ys) and ys[0] == 0 and ys[-1] > 40
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()


def test_flush_vs_pcid_figure_and_data():
    data = figures.flush_vs_pcid_data([10, 100, 1000], accesses=6000, progress=False)
    for f, p in zip(data["flush"], data["pcid"]):
        assert p["miss_rate"] <= f["miss_rate"]
    assert data["flush"][0]["miss_rate"] > data["flush"][-1]["miss_rate"]
    fig = figures.flush_vs_pcid([10, 100, 1000], accesses=6000, progress=False)
    (ax,) = fig.axes
    assert len(ax.get_lines()) == 3 and len(ax.get_legend().get_texts()) == 3
    assert "PCID" in ax.get_title()


def test_address_bits_figure_has_64_cells():
    fig = figures.address_bits_figure(0xFFFF_8880_0000_1234)
    cells = _gids(fig, "bit")
    assert len(cells) == 64 and not [c for c in cells if c.get_hatch()]
    bad = _gids(figures.address_bits_figure(0x0000_8000_0000_0000), "bit")
    assert len([c for c in bad if c.get_hatch()]) == 16  # bits 63:48 differ from bit 47
    five = _gids(figures.address_bits_figure(0xFF11_0000_0000_0000, levels=5), "bit")
    assert len(five) == 64 and not [c for c in five if c.get_hatch()]


def test_tlb_runs_figure_and_no_pyplot_leaks():
    runs = [tlb_experiment(working_set=ws, accesses=2000) for ws in (8, 4096)]
    fig = figures.tlb_runs_figure(runs)
    assert len(fig.axes[0].patches) == 3 * len(runs)
    assert repr(fig).startswith("<Figure size")
    if "matplotlib.pyplot" in sys.modules:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []


# --- the quiz ---------------------------------------------------------------------------
def _quiz_questions():
    from kaiser_edu.widgets.quizzes import Option, Question

    return [
        Question("Which bit marks a PTE present?",
                 [Option("bit 0 (P)", True, "Right: with P=0 the CPU ignores the rest."),
                  Option("bit 63 (XD)", False, "No: XD forbids instruction fetches.")]),
        Question("A non-canonical address raises...",
                 [Option("#PF", False, "No: #PF needs a canonical address."),
                  Option("#GP", True)]),
    ]


def test_quiz_grades_and_explains():
    from kaiser_edu.widgets.quizzes import Quiz

    quiz = Quiz(_quiz_questions())
    quiz.check_button.click()
    assert "Score: 0 / 2" in quiz.text and "Not answered yet." in quiz.text
    quiz.choices[0].value = "bit 63 (XD)"
    quiz.choices[1].value = "#GP"
    quiz.check_button.click()
    assert "Score: 1 / 2" in quiz.text
    assert "XD forbids instruction fetches" in quiz.text  # the wrong option's own feedback
    assert "Right." in quiz.text  # an option without feedback gets a default
    quiz.choices[0].value = "bit 0 (P)"
    quiz.check_button.click()
    assert quiz.text.startswith("Score: 2 / 2")


def test_quiz_refuses_ambiguous_questions():
    from kaiser_edu.errors import KaiserEduError
    from kaiser_edu.widgets.quizzes import Option, Question

    with pytest.raises(KaiserEduError, match="exactly one correct option"):
        Question("?", [Option("a", True), Option("b", True)])
