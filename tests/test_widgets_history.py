"""Lesson 10's model and widget: KAISER 2017 and PTI across versions, side by side.

The expectations are the history as the sources tell it (kaiser_edu/kernel/isolation.py and
versions.py cite them); each would fail if the simulator stopped showing it.
"""

from __future__ import annotations

import pytest

from kaiser_edu.display.figures import text_report
from kaiser_edu.errors import KaiserEduError
from kaiser_edu.widgets import history as H
from kaiser_edu.widgets.quizzes import quiz_questions

CALLS = 16


@pytest.fixture(scope="module")
def c():
    return {name: H.compare(name, calls=CALLS) for name in H.DESIGNS}


def test_isolation_shrinks_what_user_mode_reaches(c):
    off = c["off"].reach_kib
    assert off > 1 << 20  # the direct map of all RAM: everything is translated
    assert c["kaiser-hansen"].reach_kib < c["kaiser-graz"].reach_kib < 100
    # PTI clones the entry text's whole 2 MiB PMD: larger than KAISER's 4 KiB pages
    assert 2048 <= c["pti-6.1"].reach_kib < 4096
    assert "entry text (PMD)" in c["pti-6.1"].reach_ranges
    assert "kernel stack" in c["kaiser-graz"].reach_ranges
    assert "kernel stack" not in c["kaiser-hansen"].reach_ranges
    assert "percpu TSS" in c["pti-4.20"].reach_ranges
    assert "percpu TSS" not in c["pti-4.15"].reach_ranges  # SYSCALL via the trampoline


def test_fork_maps_a_kernel_stack_only_under_the_graz_patch(c):
    assert c["kaiser-graz"].fork_reach_kib == 16  # THREAD_SIZE
    assert c["kaiser-hansen"].fork_reach_kib == 0
    assert c["pti-6.1"].fork_reach_kib == 0
    assert c["off"].pgd_bytes == 4096
    assert {c[n].pgd_bytes for n in H.DESIGNS if n != "off"} == {8192}
    assert c["pti-6.1"].fork_frames > c["off"].fork_frames  # the second PGD page


def test_syscall_cost_follows_pcids(c):
    off = c["off"]
    assert off.cr3_writes == 0 and abs(off.overhead) < 1e-9
    graz, hansen, pti = c["kaiser-graz"], c["kaiser-hansen"], c["pti-6.1"]
    assert graz.cr3_writes == hansen.cr3_writes == pti.cr3_writes == 2
    assert graz.walks > 1 and hansen.walks < 0.5  # no PCIDs: every CR3 write flushes
    assert graz.syscall_cycles > hansen.syscall_cycles > off.syscall_cycles
    assert pti.overhead > 0


def test_attacks_across_the_history(c):
    assert c["off"].meltdown_secret.startswith("16/16")
    for name in H.DESIGNS:
        if name != "off":
            assert c[name].meltdown_secret == "nothing", name
        assert c[name].meltdown_idt == "_text", name  # the IDT is mapped everywhere
        assert c[name].kaslr["entrybleed"] == "text found", name
    assert c["kaiser-graz"].kaslr["prefetch"] == "nothing"
    assert c["pti-6.1"].kaslr["prefetch"] == "text found"


def test_version_rows_change_where_linux_changed(c):
    assert c["pti-4.15"].entry == "CEA trampoline"
    assert c["pti-4.20"].entry == "RSP in tss.sp2"
    assert c["kaiser-graz"].entry == "task stack (mapped)"
    assert (c["pti-6.1"].cea, c["pti-6.2"].cea) == ("fixed", "randomised")
    assert (c["pti-6.1"].nmi_restore, c["pti-6.9"].nmi_restore) == (
        "writes CR3", "skips CR3 write")
    assert [c[n].pti_on_mitigations_off for n in ("pti-6.1", "pti-6.9", "pti-mainline")] \
        == ["PTI on", "PTI off", "PTI on"]
    assert c["kaiser-hansen"].pti_on_mitigations_off == "-"


def test_table_and_figure(c):
    pair = [c["kaiser-graz"], c["pti-6.1"]]
    table = H.comparison_table(pair)
    assert table.columns == ["measure", "KAISER, Graz patch", "PTI 6.1"]
    assert len(table.rows) == len(H.ROWS)
    assert max(len(line) for line in table.splitlines()) <= 110
    few = H.comparison_table(pair, rows=H.VERSION_ROWS)
    assert [r[0] for r in few.rows] == list(H.VERSION_ROWS)
    fig = H.history_figure(list(c.values()))
    report = text_report(fig)
    assert report.min_font_pt >= 9 and not report.cut
    assert fig.get_figwidth() <= 9.5
    assert f"kaiser-graz {c['kaiser-graz'].reach_kib}," in fig.alt
    assert all(len(line) <= 110 for line in H.reach_text(c["off"]).splitlines())


def test_bad_input_is_refused():
    with pytest.raises(KaiserEduError, match="unknown design"):
        H.compare("kaiser-2016")
    with pytest.raises(KaiserEduError, match="calls must be"):
        H.compare("pti-6.1", calls=2)
    with pytest.raises(KaiserEduError, match="unknown rows"):
        H.comparison_table([H.compare("off", calls=CALLS)], rows=["speed"])
    with pytest.raises(KaiserEduError, match="at least one"):
        H.history_figure([])


def test_view_follows_its_controls(c):
    view = H.HistoryExplorer(left="kaiser-graz", right="pti-6.1", calls=CALLS)
    assert "KAISER, Graz patch" in view.text and "PTI 6.1" in view.text
    view.right.value = "pti-4.15"
    assert "PTI 4.15" in view.text and "CEA trampoline" in view.text
    assert [x.design.name for x in view.comparisons] == ["kaiser-graz", "pti-4.15"]
    assert "<table" in view.html and view.error == ""
    with pytest.raises(KaiserEduError):
        H.HistoryExplorer(left="nope")


def test_quiz_loads():
    assert len(quiz_questions("10")) == 5
