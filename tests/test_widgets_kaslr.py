"""Lesson 09's model functions and widget (kaiser_edu.widgets.kaslr)."""

from __future__ import annotations

import math

import pytest

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.widgets import kaslr as K


def test_entropy_counts_the_candidates():
    text, dmap = K.kaslr_entropy()
    assert text.positions == len(K.text_candidates()) == 472
    assert math.isclose(text.bits, math.log2(472))
    assert dmap.positions > text.positions


def test_layouts_move_with_the_seed():
    rows = K.layouts(range(3))
    assert len({text for _, text, _ in rows}) == 3


def test_breaks_without_and_with_kaiser():
    off = K.run_break("prefetch", "off", seed=2)
    assert off.text_correct and off.direct_map_correct
    kaiser = K.run_break("prefetch", "kaiser", seed=2)
    assert kaiser.text_base is None and "reports failure" in K.verdict(kaiser)
    assert K.run_break("entrybleed", "pti", seed=2).text_correct


def test_kaslr_lab_view():
    w = K.KaslrLab()
    assert "correct" in w.text and w.result.text_correct
    w.isolation.value = "kaiser"
    assert "nothing found" in w.text
    w.method.value = "entrybleed"
    assert "correct" in w.text
    assert repr(w) == "KaslrLab(method='entrybleed', isolation='kaiser', cpu='skylake', seed=0)"


def test_bad_isolation():
    with pytest.raises(KaiserEduError, match="unknown isolation mode"):
        K.run_break("prefetch", "nokaiser")
