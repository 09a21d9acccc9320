"""The self-check quiz at the end of every lesson.

A quiz is a list of multiple-choice :class:`Question` objects. Each option carries its own
feedback, so a wrong choice is answered with *why* it is wrong, not just "no". The model,
:func:`grade`, is a pure function from the chosen options to per-question verdicts; the
:class:`Quiz` view shows one ``RadioButtons`` per question and a "Check my answers" button.

>>> q = Question("Which bit of a PTE marks it present?",
...              [Option("bit 0 (P)", True, "P=0 and the CPU ignores the rest."),
...               Option("bit 63 (XD)", False, "XD forbids instruction fetches.")])
>>> [r.correct for r in grade([q], [1])]
[False]
>>> grade([q], [None])[0].feedback
'Not answered yet.'

The lessons' questions live beside this module, one module per lesson (``lesson06.py`` holds
``QUESTIONS``), not in the notebooks, so that a lesson's quiz cell is one line,
``quiz("06")``, and a student reading the notebook does not see which option is right.
"""

from __future__ import annotations

import hashlib
import importlib
import random
from dataclasses import dataclass

import ipywidgets as widgets

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.widgets._view import FAULT_COLOR, OK_COLOR, esc, show


@dataclass(frozen=True)
class Option:
    text: str
    correct: bool = False
    feedback: str = ""


@dataclass(frozen=True)
class Question:
    prompt: str
    options: list[Option]

    def __post_init__(self) -> None:
        if sum(o.correct for o in self.options) != 1:
            raise KaiserEduError(f"question {self.prompt!r} needs exactly one correct option")


@dataclass(frozen=True)
class Verdict:
    answered: bool
    correct: bool
    feedback: str


def grade(questions: list[Question], choices: list[int | None]) -> list[Verdict]:
    """Grade each question's chosen option index (None: not answered)."""
    if len(choices) != len(questions):
        raise KaiserEduError(f"{len(questions)} questions but {len(choices)} answers")
    verdicts = []
    for question, choice in zip(questions, choices, strict=True):
        if choice is None:
            verdicts.append(Verdict(False, False, "Not answered yet."))
            continue
        if not 0 <= choice < len(question.options):
            raise KaiserEduError(f"option {choice} does not exist for {question.prompt!r}")
        option = question.options[choice]
        right = next(o for o in question.options if o.correct)
        text = option.feedback or ("Right." if option.correct else f"No: {right.text}.")
        verdicts.append(Verdict(True, option.correct, text))
    return verdicts


def quiz_report(questions: list[Question], verdicts: list[Verdict]) -> tuple[str, str]:
    """(html, text) of the verdicts, one line per question and a score."""
    score = sum(v.correct for v in verdicts)
    lines_html, lines_text = [], []
    for n, (question, v) in enumerate(zip(questions, verdicts, strict=True), 1):
        mark = "✓" if v.correct else ("✗" if v.answered else "–")
        color = OK_COLOR if v.correct else (FAULT_COLOR if v.answered else "#777777")
        lines_html.append(f'<li><b style="color:{color}">{mark}</b> {esc(question.prompt)}'
                          f"<br><i>{esc(v.feedback)}</i></li>")
        lines_text.append(f"{mark} Q{n}: {v.feedback}")
    head = f"Score: {score} / {len(questions)}"
    return (f"<p><b>{head}</b></p><ol>{''.join(lines_html)}</ol>",
            "\n".join([head, *lines_text]))


_WRAP_OPTIONS = (
    "<style>.kaiser-quiz .widget-radio-box label{height:auto;min-height:"
    "var(--jp-widgets-inline-height);line-height:1.35;white-space:normal;"
    "align-items:flex-start;padding:2px 0}"
    ".kaiser-quiz .widget-radio-box input{flex-shrink:0;margin-top:0.3em}</style>"
)


class Quiz(widgets.VBox):
    """The view: radio buttons per question, a check button, feedback below."""

    def __init__(self, questions: list[Question], title: str = "Check yourself"):
        self.questions = questions
        self.choices = [
            widgets.RadioButtons(options=[o.text for o in q.options], value=None,
                                 layout=widgets.Layout(width="auto"))
            for q in questions
        ]
        self.check_button = widgets.Button(description="Check my answers",
                                           button_style="primary")
        self.output = widgets.Output()
        self.check_button.on_click(lambda _: self.check())
        # Long options wrap onto several lines: let each label grow with its text, so an
        # option never overlaps the next one or hides its radio button (ipywidgets gives
        # every label one line's height).
        items: list[widgets.Widget] = [widgets.HTML(_WRAP_OPTIONS + f"<h4>{esc(title)}</h4>")]
        for n, (question, radio) in enumerate(zip(questions, self.choices, strict=True), 1):
            items += [widgets.HTML(f"<b>{n}.</b> {esc(question.prompt)}"), radio]
        super().__init__(items + [self.check_button, self.output])
        self.add_class("kaiser-quiz")

    def answers(self) -> list[int | None]:
        return [None if r.value is None else r.options.index(r.value) for r in self.choices]

    def check(self) -> list[Verdict]:
        verdicts = grade(self.questions, self.answers())
        html, text = quiz_report(self.questions, verdicts)
        show(self.output, html, text)
        self.text = text
        return verdicts

    def __repr__(self) -> str:
        return f"Quiz({len(self.questions)} questions)"


def shuffled(question: Question) -> Question:
    """The question with its options in a fixed pseudo-random order.

    The order is seeded by the prompt's text, so it is the same on every run and machine
    (nbval compares it) but the right answer is not always first.
    """
    seed = int.from_bytes(hashlib.sha256(question.prompt.encode()).digest()[:8], "big")
    options = list(question.options)
    random.Random(seed).shuffle(options)
    return Question(question.prompt, options)


def quiz_questions(lesson: str) -> list[Question]:
    """The shuffled questions of a lesson (``"06"``), from :mod:`kaiser_edu.widgets.quizzes`."""
    name = f"kaiser_edu.widgets.quizzes.lesson{lesson}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError:
        raise KaiserEduError(f"no quiz for lesson {lesson!r} (expected module {name})") from None
    return [shuffled(q) for q in module.QUESTIONS]


def quiz(lesson: str, title: str = "Check yourself") -> Quiz:
    """The quiz of a lesson, ready to display: ``quiz("06")`` in the lesson's last cell."""
    return Quiz(quiz_questions(lesson), title)

