"""warm_up(), the first cell of every lesson, and the kernel status it reports."""

from __future__ import annotations

import configparser
import dataclasses
import re
from pathlib import Path

import nbformat
import pytest

from kaiser_edu.hw import jit
from kaiser_edu.widgets import warm_up
from kaiser_edu.widgets.warmup import READY, WHY, ready_text, warm_up_text

REPO = Path(__file__).resolve().parents[1]
LESSONS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_warm_up_says_before_and_after(capsys):
    warm_up()
    out = capsys.readouterr().out
    before, after = out.rstrip("\n").rsplit("\n", 1)
    assert before == warm_up_text()
    assert "numba" in before and "2-core laptop" in before
    assert re.fullmatch(rf"{READY} \d+\.\d s \(.+\)\.", after), after
    # Called again in the same process: the kernel is already there.
    warm_up()
    assert capsys.readouterr().out.rstrip().endswith(f"({WHY[jit.WARM]}).") \
        or jit.load_mmu_kernel().how == jit.NO_JIT


def test_load_mmu_kernel_reports_a_wrong_translation(monkeypatch):
    from kaiser_edu.hw import mmu

    real = mmu.MMU.access

    def off_by_a_page(self, *args, **kwargs):
        r = real(self, *args, **kwargs)
        return dataclasses.replace(r, pa=r.pa + 0x1000)

    monkeypatch.setattr(mmu.MMU, "access", off_by_a_page)
    status = jit.load_mmu_kernel()
    assert not status.ok and "0x5123" in status.problem


def _sanitize(text: str) -> str:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "tests" / "nbval_sanitize.cfg")
    for section in cfg.sections():
        text = re.sub(cfg[section]["regex"], cfg[section]["replace"], text)
    return text


def test_ready_line_is_sanitized_whatever_happened():
    lines = {_sanitize(ready_text(s, how)) for s, how in
             [(8.1, jit.COMPILED), (0.4, jit.CACHED), (0.0, jit.WARM), (9.0, jit.NO_JIT)]}
    assert len(lines) == 1, lines
@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_every_lesson_warms_up_in_its_first_code_cell(path):
    nb = nbformat.read(str(path), as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "warm_up()" in first.source, (
        f"{path.name}: the first code cell must call kaiser_edu.widgets.warm_up(), so the "
        "student is told about the numba compile before waiting for it")
    text = "".join(o.get("text", "") for o in first.outputs if o.output_type == "stream")
    assert warm_up_text() in text and READY in text, (
        f"{path.name}: the first code cell's committed output lacks the warm-up messages")


def test_every_kernel_status_has_words():
    assert set(WHY) == set(jit.HOW)
    assert max(len(ready_text(99.9, how)) for how in WHY) <= 100  # one line on a laptop
