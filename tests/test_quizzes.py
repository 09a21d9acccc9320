"""The lessons' quizzes do not give their answers away.

Each lesson's quiz lives in ``kaiser_edu/widgets/quizzes/lessonNN.py`` and its notebook cell is
``quiz("NN")``. These tests read the committed notebooks (no kernel needed):

- every lesson shows its quiz through ``quiz("NN")``, for a module that exists;
- no code cell a student can see contains a quiz's answer key: no ``Option(``/``Question(``
  constructor, no right option's text, no right option's feedback (cells whose source is
  hidden with JupyterLab's ``source_hidden`` metadata are exempt, but none needs it today);
- after the deterministic shuffle the right answers are spread over the positions: never
  always first, nowhere more than 40 % of all questions.
"""

from __future__ import annotations

import importlib
import re
from collections import Counter
from pathlib import Path

import nbformat
import pytest

from kaiser_edu.widgets.quizzes import quiz_questions

REPO = Path(__file__).resolve().parents[1]
LESSONS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
QUIZ_CALL = re.compile(r"""\bquiz\(\s*["'](\d\d)["']""")


def _lesson(path: Path) -> str:
    return path.name[:2]


def _visible_code(path: Path) -> list[str]:
    nb = nbformat.read(str(path), as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code"
            and not c.get("metadata", {}).get("jupyter", {}).get("source_hidden")]


def _answer_key(nn: str) -> list[str]:
    """The strings that would give lesson nn's answers away: each right option's text (when
    it is long enough to be unambiguous) and its feedback."""
    module = importlib.import_module(f"kaiser_edu.widgets.quizzes.lesson{nn}")
    key = []
    for question in module.QUESTIONS:
        right = next(o for o in question.options if o.correct)
        if len(right.text) >= 12:
            key.append(right.text)
        if right.feedback:
            key.append(right.feedback)
    return key


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_lesson_quiz_is_one_call(path: Path) -> None:
    calls = [m.group(1) for src in _visible_code(path) for m in QUIZ_CALL.finditer(src)]
    assert calls == [_lesson(path)], (
        f"{path.name}: the quiz cell must be quiz({_lesson(path)!r}) (found calls {calls})")
    assert quiz_questions(_lesson(path))


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_no_answer_key_in_visible_code(path: Path) -> None:
    key = _answer_key(_lesson(path))
    for n, source in enumerate(_visible_code(path), 1):
        assert "Option(" not in source and "Question(" not in source, (
            f"{path.name}, code cell {n}: quiz questions belong in kaiser_edu/widgets/quizzes/")
        flat = " ".join(source.split())
        leaks = [k for k in key if " ".join(k.split()) in flat]
        assert not leaks, f"{path.name}, code cell {n} shows the answer key: {leaks[:2]}"


def test_right_answers_are_spread() -> None:
    positions: Counter[int] = Counter()
    for path in LESSONS:
        questions = quiz_questions(_lesson(path))
        mine = [next(i for i, o in enumerate(q.options) if o.correct) for q in questions]
        if len(mine) >= 3:
            assert len(set(mine)) >= 2, f"{path.name}: every right answer at position {mine[0]}"
            assert mine.count(0) <= len(mine) / 2, f"{path.name}: right answers first: {mine}"
        positions.update(mine)
    total = sum(positions.values())
    assert total and max(positions.values()) <= 0.4 * total, (
        f"right-answer positions over all lessons: {dict(positions)}")


def test_no_literal_markup_in_quiz_text() -> None:
    """Options and prompts are shown as plain text: backticks or asterisks would show."""
    for path in LESSONS:
        for q in quiz_questions(_lesson(path)):
            for text in [q.prompt, *(o.text for o in q.options), *(o.feedback for o in q.options)]:
                assert "`" not in text and "**" not in text, f"lesson {_lesson(path)}: {text!r}"


def test_quiz_call_works_after_the_module_was_imported() -> None:
    """The quiz module is kaiser_edu.widgets.quizzes, so importing it rebinds no package
    attribute called quiz: the lessons' ``from kaiser_edu.widgets import quiz`` always gets
    the function."""
    import kaiser_edu.widgets.quizzes  # noqa: F401
    from kaiser_edu.widgets import quiz

    assert repr(quiz("01")) == f"Quiz({len(quiz_questions('01'))} questions)"
