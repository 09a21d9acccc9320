"""Lesson 02: endless practice problems, as a widget over
:func:`kaiser_edu.course.practice.make_problem` (the generator of ``kaiser-edu practice``).

The model is pure: :class:`PracticeState` (kind, seed, paging depth, difficulty, whether the
answer is shown) goes in, :func:`practice_view` gives the HTML and plain text to show;
:func:`next_problem` and :func:`toggle_answer` are what the two buttons do to the state.
:class:`PracticeWidget` only wires controls to these functions.

>>> state = PracticeState("translate", seed=4)
>>> html, text = practice_view(state)
>>> text.splitlines()[0]
'Practice problem: translate, seed 4 (4-level paging, medium)'
>>> next_problem(toggle_answer(state)).seed, next_problem(toggle_answer(state)).show_answer
(5, False)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import ipywidgets as widgets

from kaiser_edu.course.practice import DIFFICULTIES, KINDS, make_problem
from kaiser_edu.hw import bits as b
from kaiser_edu.widgets import _view

MAX_SEED = 2**53 - 1  # the largest integer a JavaScript number (the seed box) holds exactly


# --- model ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PracticeState:
    """Which problem is on screen, and whether its answer is revealed."""

    kind: str = "translate"
    seed: int = 0
    levels: int = 4
    difficulty: str = "medium"
    show_answer: bool = False


def next_problem(state: PracticeState) -> PracticeState:
    """"New problem": the next seed, answer hidden."""
    return replace(state, seed=(state.seed + 1) % (MAX_SEED + 1), show_answer=False)


def toggle_answer(state: PracticeState) -> PracticeState:
    """"Show answer" / "Hide answer"."""
    return replace(state, show_answer=not state.show_answer)


def practice_view(state: PracticeState) -> tuple[str, str]:
    """(HTML, plain text) of the problem, followed by the worked answer if revealed. The
    answer's border is blue if the access is allowed, vermillion if it faults."""
    problem = make_problem(state.kind, state.seed, levels=state.levels,
                           difficulty=state.difficulty)
    question = problem.text()
    pre = "margin:0.3em 0;padding:0.4em 0.6em;font-size:0.9em;line-height:1.3"
    parts = [f'<pre style="{pre}">{_view.esc(question)}</pre>']
    text = question
    if state.show_answer:
        ok = problem.result.outcome == b.OUTCOME_OK
        color = _view.OK_COLOR if ok else _view.FAULT_COLOR
        verdict = "&#10004; allowed" if ok else "&#10008; faults"
        answer = problem.answer()
        parts.append(f'<div style="border-left:4px solid {color};padding-left:6px">'
                     f'{_view.swatch(color)} <b>{verdict}</b>'
                     f'<pre style="{pre}">{_view.esc(answer)}</pre></div>')
        text += "\n\n" + answer
    else:
        parts.append("<p><i>Work it out, then press <b>Show answer</b>.</i></p>")
    return "\n".join(parts), text


# --- view -----------------------------------------------------------------------------------
class PracticeWidget(widgets.VBox):
    """Practice problems with a reveal button.

    Controls (attributes): ``kind``, ``difficulty`` (:class:`ipywidgets.Dropdown`),
    ``levels`` (:class:`ipywidgets.ToggleButtons`, 4 or 5), ``seed``
    (:class:`ipywidgets.BoundedIntText`), ``new_button`` ("New problem": next seed),
    ``answer_button`` ("Show answer" / "Hide answer") and ``output``
    (:class:`ipywidgets.Output`). ``state`` is the current :class:`PracticeState`;
    ``html`` and ``text`` are what ``output`` shows.
    """

    def __init__(self, kind: str = "translate", seed: int = 0, levels: int = 4,
                 difficulty: str = "medium") -> None:
        self.state = PracticeState(kind, seed, levels, difficulty)
        practice_view(self.state)  # refuse bad arguments before building anything
        self.html = self.text = ""
        self.kind = widgets.Dropdown(options=list(KINDS), value=kind, description="problem")
        self.difficulty = widgets.Dropdown(options=list(DIFFICULTIES), value=difficulty,
                                           description="difficulty")
        self.levels = widgets.ToggleButtons(options=[("4-level", 4), ("5-level (LA57)", 5)],
                                            value=levels, description="paging")
        self.seed = widgets.BoundedIntText(value=seed, min=0, max=MAX_SEED, description="seed",
                                           layout=widgets.Layout(width="16em"))
        self.new_button = widgets.Button(description="New problem", icon="refresh")
        self.answer_button = widgets.Button(description="Show answer", icon="eye",
                                            button_style="info")
        self.output = widgets.Output()
        super().__init__([
            widgets.HBox([self.kind, self.difficulty, self.seed]),
            widgets.HBox([self.levels, self.new_button, self.answer_button]),
            self.output,
        ])
        for control in (self.kind, self.difficulty, self.levels, self.seed):
            control.observe(self._on_control, names="value")
        self.new_button.on_click(self._on_new)
        self.answer_button.on_click(self._on_answer)
        self._render()

    # --- wiring ----------------------------------------------------------------------------
    def _on_control(self, _change: dict) -> None:
        self.state = PracticeState(self.kind.value, self.seed.value, self.levels.value,
                                   self.difficulty.value)
        self._render()

    def _on_new(self, _button: widgets.Button) -> None:
        self.state = next_problem(self.state)
        if self.seed.value != self.state.seed:
            self.seed.value = self.state.seed  # observed: renders with the answer hidden
        else:
            self._render()

    def _on_answer(self, _button: widgets.Button) -> None:
        self.state = toggle_answer(self.state)
        self._render()

    def _render(self) -> None:
        self.html, self.text = practice_view(self.state)
        self.answer_button.description = "Hide answer" if self.state.show_answer else \
            "Show answer"
        _view.show(self.output, self.html, self.text)
