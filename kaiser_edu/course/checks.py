"""Exercise checks: run a student's function on many cases and explain what went wrong.

A :class:`Check` knows one exercise: its cases (generated from a seed, the expected answers
computed by the package's own engine), how to show an input, and a hint that looks at the
wrong answer. Calling it with the student's function returns a :class:`CheckResult`,
whatever the function does:

==================  ===================================================================
status              when
==================  ===================================================================
``passed``          every case gave the expected answer (the only way to earn points)
``failed``          some answer was wrong: the first wrong case is shown with the
                    expected value, the value that came back and a hint
``not_attempted``   the function still raises ``NotImplementedError`` (the stub left in
                    the exercise notebook)
``error``           the function raised any other exception: its type, message and the
                    line of the student's code where it happened (no internals)
==================  ===================================================================

A check never raises into the notebook, so an exercise notebook that is only partly done
still runs top to bottom (and under nbval). ``KeyboardInterrupt`` is the one exception let
through: it is how Jupyter (and ``kaiser-edu check --timeout``) stops a runaway loop.

The exception to that rule is grading with nbgrader, which gives a check cell its points
when the cell runs *without an error*. nbgrader sets ``NBGRADER_EXECUTION`` to
``autograde`` or ``validate`` while it runs a notebook; then a check that did not pass
raises :class:`CheckFailed` (an AssertionError carrying the same feedback), so the cell
earns nothing, exactly as an nbgrader test cell with a failing ``assert`` would.

In a notebook the result shows as a coloured banner (``_repr_html_``); its text form
(``repr``) is what nbval compares, so nothing in it varies between runs: cases come from a
fixed seed, and memory addresses are removed from messages.

These checks run in the student's own kernel: instant feedback, which a student who wants
the points without the work can fake. Grades come from a graded run
(:mod:`kaiser_edu.course.graded`), which calls the same checks in a process the student's
code cannot reach.

The report protocol
-------------------
When the environment variable ``KAISER_EDU_CHECK_REPORT`` names a file, every result is
also appended to it as one JSON line (:meth:`CheckResult.to_json`)::

    {"exercise": "lab01-split", "status": "failed", "points": 0, "max_points": 2, ...}

``kaiser-edu check`` sets it for the kernel that runs a student's notebook and reads the
lines back (:mod:`kaiser_edu.course.check_notebook`).
"""

from __future__ import annotations

import html
import json
import operator
import os
import random
import re
import sys
import textwrap
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PASSED = "passed"
FAILED = "failed"
NOT_ATTEMPTED = "not_attempted"
ERROR = "error"
MISSING = "missing"  # only in reports: a declared exercise whose check cell is gone
STATUSES = (PASSED, FAILED, NOT_ATTEMPTED, ERROR, MISSING)

#: What each status is called in notebooks and in the ``kaiser-edu check`` table.
LABELS = {PASSED: "PASSED", FAILED: "FAILED", NOT_ATTEMPTED: "NOT ATTEMPTED YET", ERROR: "ERROR",
          MISSING: "MISSING"}

REPORT_ENV = "KAISER_EDU_CHECK_REPORT"
REPORT_VERSION = 1
NBGRADER_ENV = "NBGRADER_EXECUTION"  # set by nbgrader autograde / validate

_MAX_TEXT = 300  # longest message or value shown (a huge repr would drown the feedback)
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # "<object at 0x7f...>": differs every run
_CELL_FILE = re.compile(r"(ipykernel_\d+[/\\]\d+\.py$)|(^<ipython-input-)")
_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])


class CheckFailed(AssertionError):
    """Raised by a check that did not pass, only while nbgrader grades the notebook."""


class _StoppedDuring(KeyboardInterrupt):  # noqa: N818 - it is a KeyboardInterrupt
    """A KeyboardInterrupt that names the call it stopped (the check reports it)."""

    def __init__(self, call: str):
        super().__init__(call)
        self.call = call


# --- cases and results -------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One call of the student's function and the answer it must give.

    ``note`` says why the case is interesting ("top of the user half"); it is shown with
    the case when the answer is wrong.
    """

    args: tuple[Any, ...]
    expected: Any
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""

    def call_text(self, function: str, format_arg: Callable[[Any], str] = repr) -> str:
        """The call as the student would write it: ``split_address(0x7fff..., levels=4)``.

        >>> Case((4096,), 1, {"levels": 5}).call_text("f", hex)
        'f(0x1000, levels=5)'
        """
        parts = [format_arg(a) for a in self.args]
        parts += [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{function}({', '.join(parts)})"


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: what ``kaiser-edu check`` reports and the notebook shows.

    ``points`` is what was earned: all of ``max_points`` if every case passed, else 0.
    """

    exercise: str
    title: str
    status: str
    points: int
    max_points: int
    feedback: str
    cases: int = 0
    passed_cases: int = 0

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def __bool__(self) -> bool:
        return self.passed

    @property
    def label(self) -> str:
        return LABELS[self.status]

    def text(self) -> str:
        """The plain-text report (also ``repr``, which nbval compares)."""
        head = (f"[{self.label}] {self.title} ({self.exercise}): "
                f"{self.points}/{self.max_points} points")
        body = "\n".join("  " + line if line else "" for line in self.feedback.splitlines())
        return f"{head}\n{body}" if body else head

    __repr__ = text
    __str__ = text

    def _repr_html_(self) -> str:
        colour, background, mark = _BANNER[self.status]
        return (
            f'<div style="border-left:6px solid {colour};background:{background};'
            'padding:6px 12px;margin:4px 0;color:#222;font-family:sans-serif">'
            f'<div style="font-weight:bold;color:{colour}">{mark} {html.escape(self.label)}'
            f" &middot; {html.escape(self.title)} &middot; {self.points}/{self.max_points}"
            " points</div>"
            '<pre style="white-space:pre-wrap;margin:4px 0 0 0;background:none;color:#222">'
            f"{html.escape(self.feedback)}</pre></div>"
        )

    def _ipython_display_(self) -> None:
        """Shown as display data, not as the cell's result: nbgrader reads a grade cell's
        ``execute_result`` text as partial credit and warns that "[PASSED] ..." "cannot be
        converted to a float"; display data it leaves alone (nbgrader.utils.determine_grade)."""
        from IPython.display import display

        display({"text/plain": self.text(), "text/html": self._repr_html_()}, raw=True)

    def to_json(self) -> dict[str, Any]:
        """One line of the report protocol (see the module docstring)."""
        return {
            "version": REPORT_VERSION,
            "exercise": self.exercise,
            "title": self.title,
            "status": self.status,
            "points": self.points,
            "max_points": self.max_points,
            "feedback": self.feedback,
            "cases": self.cases,
            "passed_cases": self.passed_cases,
        }


# colour, background, mark: green for done, amber for "not yet", red for a problem
_BANNER = {
    PASSED: ("#1b7a34", "#e6f4ea", "&#10004;"),
    NOT_ATTEMPTED: ("#a35c00", "#fff4dc", "&#9998;"),
    FAILED: ("#b3261e", "#fdecea", "&#10008;"),
    ERROR: ("#b3261e", "#fdecea", "&#9888;"),
}


def record(result: CheckResult) -> None:
    """Append ``result`` to the report file named by ``$KAISER_EDU_CHECK_REPORT``, if any."""
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    line = json.dumps(result.to_json(), sort_keys=True)
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    except OSError as e:
        print(f"kaiser_edu: could not write the check report to {path}: {e}", file=sys.stderr)


# --- comparing and describing ------------------------------------------------------------


def as_int(value: Any) -> int | None:
    """``value`` as a Python int if it is an integer of any kind (numpy too), else None
    (bool is refused: True is not an address)."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def equal(expected: Any, got: Any) -> bool:
    """``expected == got``, and False (not an exception) when they cannot be compared."""
    try:
        return bool(expected == got)
    except Exception:
        return False


def hex_or_repr(value: Any) -> str:
    """How feedback shows a value: an integer (numpy too, not bool) in hex, a tuple or list
    of integers as hex items, anything else as its cleaned repr.

    >>> hex_or_repr(4096), hex_or_repr((1, 255)), hex_or_repr(True), hex_or_repr("x")
    ('0x1000', '(0x1, 0xff)', 'True', "'x'")
    """
    number = as_int(value)
    if number is not None:
        return hex(number)
    if isinstance(value, tuple | list) and value and all(as_int(v) is not None for v in value):
        inner = ", ".join(hex(as_int(v)) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    return clean(repr(value))


def clean(text: str) -> str:
    """Make a message safe to show and stable between runs: no addresses, not too long.

    >>> clean("<function f at 0x7f3a2c1b5e40> is broken")
    '<function f> is broken'
    """
    text = _ADDRESS.sub("", text)
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


def wrap(text: str, width: int = 92) -> str:
    """Fill a long line of feedback; continuation lines are indented by two spaces."""
    return textwrap.fill(text, width=width, subsequent_indent="  ", break_long_words=False,
                         break_on_hyphens=False)


def _is_internal(filename: str) -> bool:
    """Frames of this package, the standard library or installed packages: not the student's."""
    if filename.startswith("<frozen"):
        return True
    path = os.path.abspath(filename) if not filename.startswith("<") else filename
    prefixes = {_PACKAGE_DIR, sys.prefix, sys.base_prefix, sys.exec_prefix}
    return any(path.startswith(p + os.sep) for p in prefixes)


def where(exc: BaseException) -> str:
    """The student's line where ``exc`` was raised, e.g. ``in f(), line 3 of its cell: x/0``.

    The deepest frame outside kaiser_edu, the standard library and installed packages: if
    the student's code called into the package with a bad argument, that is the student's
    call, not the package line that noticed. Notebook cells are named "its cell" (the
    kernel's file name for a cell changes with every run). An exception that came back
    from a graded run's sandbox carries the student's frames as ``student_frames``
    (:mod:`kaiser_edu.course.graded`): (file, line, function, code) each.
    """
    remote = getattr(exc, "student_frames", None)
    if remote:
        _, lineno, name, code = remote[-1]
        text = f"in {name}(), line {lineno} of its cell"
        return f"{text}:\n    {code}" if code else text
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not _is_internal(f.filename)]
    if not frames:
        return ""
    frame = frames[-1]
    place = "its cell" if _CELL_FILE.search(frame.filename) else Path(frame.filename).name
    code = (frame.line or "").strip()
    text = f"in {frame.name}(), line {frame.lineno} of {place}"
    return f"{text}:\n    {code}" if code else text


def raiser(exc: BaseException) -> str:
    """The qualified name of the function that raised ``exc`` (``SmallTLB.fill``), or ""
    (also for an exception that came back from a graded run's sandbox)."""
    remote = getattr(exc, "student_qualname", None)
    if remote is not None:
        return remote
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return getattr(code, "co_qualname", code.co_name)


def describe_exception(exc: BaseException) -> str:
    """``TypeError: unsupported operand ...``: what a student needs, without a traceback."""
    message = clean(str(exc))
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


# --- what a graded run gives the answers ---------------------------------------------------


@dataclass(frozen=True)
class AnswerKit:
    """What a lab's answers may use in a graded run, where ``kaiser_edu`` cannot be imported
    (:mod:`kaiser_edu.course.graded`; the protocol is in :mod:`kaiser_edu.course.labs`).

    - ``constants``: names bound to plain values (ints, strings, tuples ...), copied in;
    - ``functions``: helpers the answers may call (``table_index``); they run in the
      grader, and the answers see only a function that takes and returns plain values;
    - ``records``: dataclasses the answers build (lab 03's ``Entry``): the sandbox gets a
      dataclass with the same name and fields, and the grader turns them back into these;
    - ``objects``: for each type of object a check hands to the student's code, the
      attributes and methods the code may use (``"__call__"`` if it may call the object).
      Anything else on the object is out of reach.
    """

    constants: Mapping[str, Any] = field(default_factory=dict)
    functions: tuple[Callable[..., Any], ...] = ()
    records: tuple[type, ...] = ()
    objects: Mapping[type, tuple[str, ...]] = field(default_factory=dict)
    modules: Mapping[str, str] = field(default_factory=dict)


# --- the check ---------------------------------------------------------------------------


def _default_hint(case: Case, got: Any) -> str:
    return "Compare your function with the explanation above this exercise."


@dataclass(frozen=True, repr=False)
class Check:
    """One exercise's check. Call it with the student's function: ``check(split_address)``.

    - ``exercise``: a stable id (``lab01-split``): the key in ``kaiser-edu check`` reports.
    - ``title``: what the banner says (``Exercise 1: split an address``).
    - ``function``: the name the student's function has in the exercise, for messages.
    - ``cases``: builds the cases from a seeded ``random.Random`` (same seed, same cases).
    - ``hint(case, got)``: a hint specific to this wrong answer.
    - ``same(expected, got)``: the comparison (default ``==``).
    - ``format_arg`` / ``format_value``: how inputs and answers are written (e.g. ``hex``).
    """

    exercise: str
    title: str
    function: str
    cases: Callable[[random.Random], Sequence[Case]]
    points: int = 1
    hint: Callable[[Case, Any], str] = _default_hint
    seed: int = 0
    same: Callable[[Any, Any], bool] = equal
    format_arg: Callable[[Any], str] = repr
    format_value: Callable[[Any], str] = repr

    def __repr__(self) -> str:
        return f"<Check {self.exercise}: {self.title} ({self.points} points)>"

    def __call__(self, student_fn: Any, *, seed: int | None = None) -> CheckResult:
        """Run every case through ``student_fn``; never raises (except KeyboardInterrupt, and
        CheckFailed while nbgrader grades: see the module docstring)."""
        try:
            result = self._run(student_fn, self.seed if seed is None else seed)
        except _StoppedDuring as e:  # interrupted (Jupyter's stop, or check --timeout)
            record(self._result(ERROR, f"Stopped while running {e.call}: an endless loop? "
                                       "Check the loop's exit condition for that input."))
            raise KeyboardInterrupt(f"while running {e.call}") from None
        except Exception as e:  # the check itself is broken: say so, and whose fault it is
            result = self._result(
                ERROR,
                f"The check itself failed ({describe_exception(e)}).\n"
                "This is a bug in kaiser_edu, not in your code: please tell your lecturer.",
            )
        record(result)
        if not result.passed and os.environ.get(NBGRADER_ENV) in ("autograde", "validate"):
            raise CheckFailed(result.text())
        return result

    # The work, in the order a student meets the outcomes.

    def _run(self, student_fn: Any, seed: int) -> CheckResult:
        if not callable(student_fn):
            return self._result(
                ERROR,
                f"This check needs your function {self.function} itself, got "
                f"{clean(_safe_repr(student_fn))} (a {type(student_fn).__name__}).\n"
                f"Hint: pass the function itself, without calling it: {self.function}, "
                f"not {self.function}(...).",
            )
        cases = list(self.cases(random.Random(seed)))
        if not cases:  # a check that tries nothing would pass anything, even a stub
            raise ValueError(f"check {self.exercise} has no cases")
        first_wrong: tuple[Case, Any] | None = None
        wrong = 0
        for number, case in enumerate(cases):
            try:
                got = student_fn(*case.args, **case.kwargs)
            except KeyboardInterrupt:
                raise _StoppedDuring(self.call_text(case)) from None
            except NotImplementedError:
                if first_wrong is None:
                    return self._not_attempted(case, number, len(cases))
                wrong += 1
                continue
            except (Exception, SystemExit) as e:
                if first_wrong is None:
                    return self._error(case, e, number, len(cases))
                wrong += 1
                continue
            try:
                right = bool(self.same(case.expected, got))
            except Exception:  # an answer that cannot even be compared is not right
                right = False
            if right:
                continue
            wrong += 1
            if first_wrong is None:
                first_wrong = (case, got)
        if first_wrong is None:
            return self._result(
                PASSED,
                f"All {len(cases)} cases correct: {self.function} agrees with kaiser_edu's "
                "model.",
                cases=len(cases), passed_cases=len(cases),
            )
        return self._wrong(*first_wrong, wrong, len(cases))

    def _result(self, status: str, feedback: str, cases: int = 0,
                passed_cases: int = 0) -> CheckResult:
        return CheckResult(
            exercise=self.exercise, title=self.title, status=status,
            points=self.points if status == PASSED else 0, max_points=self.points,
            feedback=feedback, cases=cases, passed_cases=passed_cases,
        )

    def _not_attempted(self, case: Case, number: int, total: int) -> CheckResult:
        if number == 0:
            text = (f"{self.function} still raises NotImplementedError.\n"
                    "Replace `raise NotImplementedError()` with your code, run that cell, "
                    "then this check.")
        else:
            text = (f"{self.function} is not finished: {number} of {total} cases passed, then\n"
                    f"  {self.call_text(case)}\nraised NotImplementedError.")
        return self._result(NOT_ATTEMPTED, text, cases=total, passed_cases=number)

    def _error(self, case: Case, exc: BaseException, number: int, total: int) -> CheckResult:
        lines = [f"Your code raised {describe_exception(exc)}"]
        lines.extend("  " + line for line in where(exc).splitlines())
        lines.append(f"while running {self.call_text(case)}"
                     + (f"  ({case.note})" if case.note else ""))
        lines.append("Hint: the line above is where Python stopped. Fix it, run your cell "
                     "again, then this check.")
        return self._result(ERROR, "\n".join(lines), cases=total, passed_cases=number)

    def _wrong(self, case: Case, got: Any, wrong: int, total: int) -> CheckResult:
        try:
            hint = self.hint(case, got)
        except Exception:  # a hint that cannot cope with this answer: fall back, never crash
            hint = _default_hint(case, got)
        if got is None and case.expected is not None:
            hint = f"{self.function} returned None: did you forget `return`?"
        lines = [
            f"{self.call_text(case)}" + (f"  ({case.note})" if case.note else ""),
            f"  expected: {clean(self.format_value(case.expected))}",
            f"  got:      {clean(self._show(got))}",
            wrap(f"Hint: {hint}"),
            f"{wrong} of {total} cases wrong; this is the first.",
        ]
        return self._result(FAILED, "\n".join(lines), cases=total, passed_cases=total - wrong)

    def call_text(self, case: Case) -> str:
        return case.call_text(self.function, self.format_arg)

    def _show(self, got: Any) -> str:
        try:
            return self.format_value(got)
        except Exception:
            return _safe_repr(got)


def _safe_repr(value: Any) -> str:
    """``repr(value)``, or a description if the object's ``__repr__`` itself fails."""
    try:
        return repr(value)
    except Exception:
        return f"<a {type(value).__name__} that cannot be shown>"
