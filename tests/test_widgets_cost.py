"""Lesson 08's widget: the model point and the view driven like a student would."""

from __future__ import annotations

import pytest

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.widgets.cost import CostExplorer, cost_figure, cost_point, render_text
from kaiser_edu.widgets.quizzes import quiz_questions


def test_model_point_pcid_and_huge_pages():
    nopcid = cost_point(50_000, 4096, pcid=False, calls=16)
    pcid = cost_point(50_000, 4096, pcid=True, calls=16)
    huge = cost_point(50_000, 4096, pcid=False, huge=True, calls=16)
    assert nopcid["mode"] == "pti-nopcid" and pcid["mode"] == "pti"
    assert 0 < pcid["overhead"] < nopcid["overhead"]
    assert huge["overhead"] < nopcid["overhead"]
    assert set(nopcid["reports"]) == {"off", "pti-nopcid"}
    text = render_text(nopcid)
    assert "pti-nopcid at 50,000 syscalls/s" in text and "flushes" in text
    assert len(cost_figure(nopcid).axes) == 1


def test_model_refuses_rates_out_of_range():
    with pytest.raises(KaiserEduError, match="rate must be between"):
        cost_point(rate=10)


def test_view_follows_its_controls():
    w = CostExplorer(calls=16)
    first = w.text
    assert "pti-nopcid" in first and w.point["overhead"] > 0
    w.pcid.value = True
    assert w.point["mode"] == "pti" and "pti at" in w.text
    w.rate.value = 1e6
    assert w.point["rate"] == pytest.approx(1e6)
    w.working_set.value = 16384
    assert "16384 KiB" in w.text
    w.huge.value = True
    assert "2 MiB pages" in w.text
    assert "image/png" in {k for o in w.output.outputs for k in o["data"]}
    assert repr(w).startswith("CostExplorer(rate=1,000,000")


def test_view_shows_an_error_instead_of_raising(monkeypatch):
    w = CostExplorer(calls=16)
    import kaiser_edu.widgets.cost as mod

    def boom(*a, **k):
        raise KaiserEduError("simulated failure")

    monkeypatch.setattr(mod, "cost_point", boom)
    w.pcid.value = not w.pcid.value
    assert w.point is None and "simulated failure" in w.error and "simulated failure" in w.text


def test_quiz_has_one_right_answer_each():
    qs = quiz_questions("08")
    assert len(qs) == 5 and all(sum(o.correct for o in q.options) == 1 for q in qs)
