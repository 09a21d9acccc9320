"""Graded mode: ``kaiser-edu check --graded NOTEBOOK``, a result the student's code cannot fake.

``kaiser-edu check`` (without ``--graded``) runs the student's notebook and its checks in
one kernel: quick feedback while working, but the student's code could reach the checks,
the expected answers and the report file. A graded run keeps all of that in the grader's
own process (this module) and lets the student's code only compute:

1. **What the lab declares** comes from the authored lab, never from the submission
   (:func:`load_lab`): ``solutions/labNN_*.ipynb`` says which exercises exist, their
   points (nbgrader metadata of each check cell), the check each one runs and the
   function it checks (the check cell's source, ``check_split(split_address)``);
   ``kaiser_edu.course.labs.labNN`` holds the checks and the lab's :class:`AnswerKit`.
2. **The student's answer cells** (matched to the solution's by nbgrader grade id, else by
   cell id) run in a *sandbox*: a fresh ``python -I`` running
   :mod:`kaiser_edu.course.sandbox`, one per exercise, where no ``kaiser_edu`` module can
   be imported (an import guard says so) and no report file exists.
3. **The grader's checks call the student's functions** through proxies
   (:class:`RemoteFunction`): the inputs go over as plain values, the answers come back as
   plain values (ints, bools, strings, tuples, lists, dicts; the lab's record types), and
   the check compares them with its own reference, here. An answer that is any other
   object comes back as a :class:`NotPlain` that equals nothing. Objects a check hands to
   the student's code (``read_qword``, ``pti``) stay here too: the sandbox gets a stand-in
   that forwards the uses the lab declares (``read_qword(pa)``, ``pti.alloc_table()``) and
   nothing else.
4. **Every declared exercise gets a row**: a deleted check cell is ``missing`` (0 points),
   an edited one is noted and ignored (the lab's check runs), a missing answer function is
   an error row. Each exercise has a time budget (``--timeout``): an endless loop is
   stopped and the row names the call that was running; a sandbox that dies (``os._exit``,
   a crash) is named with the exercise and the call.

What it does not guarantee: the sandbox is a separate process, not a security boundary.
Code that deliberately dismantles the import guard, or copies the engine's source into an
answer, is not stopped by this module (the first is detected when it loads a
``kaiser_edu`` module; the second is plagiarism, for a person to judge). Run class grading
in a container or on a JupyterHub, as nbgrader's autograder does.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kaiser_edu.course import checks as ck
from kaiser_edu.course import metadata as md
from kaiser_edu.course import sandbox as sb
from kaiser_edu.errors import KaiserEduError

SANDBOX = Path(sb.__file__).resolve()
CHECK_CALL = re.compile(r"^\s*(\w+)\((\w+)\)\s*$")
LAB_NAME = re.compile(r"^(lab\d\d)_\w+$")
DEFAULT_BUDGET = 60.0  # seconds the student's code may run for one exercise
#: What an answer cell may mention only to try to fake a result (each becomes a note).
SUSPECT = (
    ("kaiser_edu", "imports kaiser_edu (the engine and the checks)"),
    ("get_ipython", "uses get_ipython() (there is no IPython in a graded run)"),
    (ck.REPORT_ENV, f"uses ${ck.REPORT_ENV} (a graded run has no report file)"),
)


class LabProtocolError(KaiserEduError):
    """A lab does not follow the protocol of :mod:`kaiser_edu.course.labs` (a lab bug)."""


class AnswerStopped(BaseException):  # noqa: N818 - not an error of the grader: a verdict
    """The sandbox stopped answering: ``kind`` is ``timeout``, ``died`` or ``protocol``.

    A BaseException, so that no check mistakes it for the student's exception: it leaves
    the check and becomes the exercise's row (:func:`grade_exercise`).
    """

    def __init__(self, kind: str, call: str, detail: str = ""):
        super().__init__(f"{kind} during {call}: {detail}")
        self.kind, self.call, self.detail = kind, call, detail


class StudentException(Exception):
    """An exception of the student's code whose type is not a Python builtin."""


# --- the lab, as declared by its author -------------------------------------------------------


@dataclass(frozen=True)
class Exercise:
    """One autograded exercise of a lab: its check cell in the solution and its check."""

    grade_id: str
    points: int
    check: ck.Check
    function: str  # the name the student's answer defines
    source: str  # the check cell's source in the solution
    cell_id: str


@dataclass(frozen=True)
class AnswerCell:
    grade_id: str
    cell_id: str


@dataclass(frozen=True)
class Lab:
    """Everything a graded run needs to know about a lab, all from the author's side."""

    name: str  # "lab01_addresses"
    solution: Path
    exercises: tuple[Exercise, ...]
    answers: tuple[AnswerCell, ...]
    kit: ck.AnswerKit
    check_names: frozenset[str]
    cell_ids: frozenset[str] = frozenset()  # every cell id of the solution

    @property
    def max_score(self) -> int:
        return sum(e.points for e in self.exercises)


def solutions_dir(explicit: str | Path | None = None) -> Path:
    """``explicit``, else ``solutions/`` of the course checkout (:mod:`lab_cli`)."""
    from kaiser_edu.course.lab_cli import course_root

    if explicit is not None:
        folder = Path(explicit)
    else:
        try:
            folder = course_root(None) / "solutions"
        except ValueError as e:
            raise LabProtocolError(str(e)) from None
    if not folder.is_dir():
        raise LabProtocolError(f"no solutions folder at {folder} (graded runs read the "
                               "authored labs; pass --solutions DIR)")
    return folder


def solution_for(lab: str, folder: str | Path | None = None) -> Path:
    """The solution notebook of ``lab`` ("01", "lab01", "lab01_addresses" or a file name)."""
    base = solutions_dir(folder)
    stem = Path(lab).stem
    match = re.match(r"^(?:lab)?(\d{1,2})(?:_|$)", stem)
    if not match:
        raise LabProtocolError(f"{lab!r} does not name a lab (labNN or labNN_topic)")
    found = sorted(base.glob(f"lab{int(match[1]):02d}_*.ipynb"))
    if not found:
        have = ", ".join(p.stem for p in sorted(base.glob("lab*.ipynb"))) or "none"
        raise LabProtocolError(f"no lab {int(match[1]):02d} in {base} (labs: {have})")
    return found[0]


_LABS: dict[Path, Lab] = {}


def load_lab(solution: str | Path) -> Lab:
    """Read a lab's declaration from its solution notebook and check module (cached)."""
    import nbformat

    path = Path(solution).resolve()
    if path in _LABS:
        return _LABS[path]
    stem = LAB_NAME.match(path.stem)
    if not stem:
        raise LabProtocolError(f"{path.name}: a lab notebook is named labNN_topic.ipynb")
    module = importlib.import_module(f"kaiser_edu.course.labs.{stem[1]}")
    nb = nbformat.read(str(path), as_version=4)
    exercises, answers = [], []
    for number, cell in enumerate(nb.cells, start=1):
        meta = md.nbgrader(cell)
        if md.is_check(cell):
            call = CHECK_CALL.match(cell.source)
            check = getattr(module, call[1], None) if call else None
            if not isinstance(check, ck.Check):
                raise LabProtocolError(
                    f"{path.name}, cell {number}: a check cell must be exactly "
                    f"`check_name(function)` with check_name a Check of {module.__name__}")
            exercises.append(Exercise(meta["grade_id"], md.points(cell), check, call[2],
                                      cell.source, cell.get("id", "")))
        elif cell.cell_type == "code" and md.is_answer(cell):
            answers.append(AnswerCell(meta["grade_id"], cell.get("id", "")))
    if not exercises:
        raise LabProtocolError(f"{path.name}: no check cells (nbgrader grade cells)")
    names = frozenset(k for k, v in vars(module).items() if isinstance(v, ck.Check))
    lab = Lab(path.stem, path, tuple(exercises), tuple(answers),
              getattr(module, "ANSWER_KIT", ck.AnswerKit()), names,
              frozenset(c.get("id", "") for c in nb.cells))
    _LABS[path] = lab
    return lab


# --- the sandbox, seen from the grader --------------------------------------------------------


def _call_text(name: str, args: tuple, kwargs: dict) -> str:
    parts = [ck.hex_or_repr(a) for a in args] + [f"{k}={v!r}"
                                                 for k, v in kwargs.items()]
    return ck.clean(f"{name}({', '.join(parts)})")


class NotPlain:
    """An answer that was not a plain value: equal to nothing, and says what it was."""

    def __init__(self, type_name: str):
        self.type_name = type_name

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"<a {self.type_name} object: not a plain value (int, str, tuple, list, dict)>"


class RemoteFunction:
    """The student's function, callable here; it runs in the sandbox."""

    def __init__(self, proc: AnswerProcess, ref: int, name: str, owner: str = ""):
        self._proc, self._ref, self.__name__ = proc, ref, name
        self._owner = owner

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._proc.call(self._ref, "", args, kwargs, _call_text(self.__name__, args,
                                                                        kwargs))

    def __repr__(self) -> str:
        return f"<function {self.__name__}>"


class RemoteInstance:
    """Base of the stand-ins for the student's classes (see :meth:`AnswerProcess.cls`)."""

    _proc: AnswerProcess
    _ref: int

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._proc.get(self._ref, name)


class AnswerProcess:
    """One sandbox: started, given the answer cells, asked to call; stopped after use."""

    def __init__(self, lab: Lab, budget: float = DEFAULT_BUDGET):
        self.lab, self.budget = lab, budget
        self.records = {r.__name__: r for r in lab.kit.records}
        self.handles: dict[int, tuple[Any, tuple[str, ...]]] = {}
        self.errors: dict[int, BaseException] = {}
        self.not_plain: list[str] = []
        self._buffer = b""
        env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "SYSTEMROOT")
               if k in os.environ}
        self.proc = subprocess.Popen(
            [sys.executable, "-I", str(SANDBOX)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
            cwd=os.path.dirname(SANDBOX), start_new_session=True)

    # plumbing

    def _send(self, message: dict[str, Any]) -> None:
        import json

        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died: the next read says how

    def _receive(self, call: str) -> dict[str, Any]:
        import json

        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + self.budget  # only waiting for the student counts
        try:
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._stop()
                    raise AnswerStopped("timeout", call)
                ready, _, _ = select.select([fd], [], [], left)
                if not ready:
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise AnswerStopped("died", call, self._death())
                self._buffer += chunk
        finally:
            self.budget = max(0.0, deadline - time.monotonic())
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
            if not isinstance(message, dict):
                raise ValueError("not an object")
        except ValueError:
            self._stop()
            raise AnswerStopped("protocol", call, "it wrote something that is not the "
                                "grader's protocol to the grader's channel") from None
        return message

    def _death(self) -> str:
        code = self.proc.wait()
        if code < 0:
            try:
                return f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"

    def _stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            self._send({"op": "bye"})
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._stop()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever the student's code started
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    # values

    def encode(self, value: Any) -> Any:
        return sb.encode(value, self._make_remote, self.records)

    def _make_remote(self, value: Any) -> dict[str, Any]:
        if isinstance(value, RemoteFunction | RemoteInstance):
            return {"ref": value._ref}
        if value in self.lab.kit.functions:
            self.handles[id(value)] = (value, ("__call__",))
            return {"remote": id(value), "name": value.__name__, "callable": True,
                    "repr": f"<function {value.__name__}>"}
        allowed = next((names for cls, names in self.lab.kit.objects.items()
                        if isinstance(value, cls)), None)
        if allowed is None:
            raise LabProtocolError(f"a check handed a {type(value).__name__} to the student's "
                                   "code, which the lab's ANSWER_KIT does not declare")
        self.handles[id(value)] = (value, allowed)
        names = [n for n in allowed if n != "__call__"]
        methods = [n for n in names if callable(getattr(value, n, None))]
        return {"remote": id(value), "name": type(value).__name__,
                "callable": "__call__" in allowed, "methods": methods,
                "attrs": [n for n in names if n not in methods], "repr": repr(value)}

    def decode(self, data: Any, returned: bool = False) -> Any:
        def resolve(ref: dict[str, Any]) -> Any:
            if "ref" not in ref:
                raise AnswerStopped("protocol", "", "an unknown value came back")
            kind, name = ref.get("kind"), str(ref.get("name", "?"))
            if kind == "function":
                return RemoteFunction(self, ref["ref"], name)
            if kind == "class":
                return self.cls(ref)
            if returned:
                self.not_plain.append(name)
            return NotPlain(name)
        return sb.decode(data, resolve, self.records)

    def cls(self, ref: dict[str, Any]) -> type:
        """A stand-in class: constructing it constructs the student's class over there."""
        proc, cls_ref, cls_name = self, ref["ref"], str(ref.get("name", "Class"))

        def __init__(self: RemoteInstance, *args: Any, **kwargs: Any) -> None:
            reply = proc.request({"op": "call", "target": cls_ref, "attr": "",
                                  "args": proc.encode(list(args)),
                                  "kwargs": proc.encode(kwargs)},
                                 _call_text(cls_name, args, kwargs))
            object.__setattr__(self, "_proc", proc)
            object.__setattr__(self, "_ref", reply["value"].get("ref")
                               if isinstance(reply["value"], dict) else None)

        def method(name: str) -> Any:
            def call(self: RemoteInstance, *args: Any, **kwargs: Any) -> Any:
                return proc.call(self._ref, name, args, kwargs,
                                 _call_text(f"{cls_name}.{name}", args, kwargs))
            call.__name__ = name
            return call

        namespace: dict[str, Any] = {"__init__": __init__, "_ref_of_class": cls_ref}
        for name in ref.get("methods", []):
            namespace[name] = method(str(name))
        return type(cls_name, (RemoteInstance,), namespace)

    # requests

    def request(self, message: dict[str, Any], call: str) -> dict[str, Any]:
        """Send ``message``; serve the callbacks the student's code makes; return the reply,
        raising the student's exception if it raised one."""
        self._send(message)
        while True:
            reply = self._receive(call)
            if reply.get("op") == "callback":
                self._send(self._serve(reply))
                continue
            if "raise" in reply:
                raise self._exception(reply["raise"])
            return reply

    def call(self, ref: int, attr: str, args: tuple, kwargs: dict, text: str) -> Any:
        reply = self.request({"op": "call", "target": ref, "attr": attr,
                              "args": self.encode(list(args)), "kwargs": self.encode(kwargs)},
                             text)
        return self.decode(reply.get("value"), returned=True)

    def get(self, ref: int, attr: str) -> Any:
        reply = self.request({"op": "get", "target": ref, "attr": attr}, f".{attr}")
        return self.decode(reply.get("value"))

    def _serve(self, message: dict[str, Any]) -> dict[str, Any]:
        handle = message.get("handle")
        entry = self.handles.get(handle) if isinstance(handle, int) else None
        attr = str(message.get("attr", ""))
        if entry is None or (attr or "__call__") not in entry[1]:
            return {"raise": {"type": "AttributeError", "message": f"{attr!r} is not offered",
                              "grader_id": None}}
        target, _ = entry
        try:
            value = getattr(target, attr) if attr else target
            if message.get("kind") == "call":
                args = self.decode(message.get("args", {"list": []}))
                kwargs = self.decode(message.get("kwargs", {"dict": []}))
                value = value(*args, **kwargs)
            return {"value": self.encode(value)}
        except Exception as e:  # the grader's object refused the call (a bad address ...)
            self.errors[id(e)] = e
            return {"raise": {"type": type(e).__name__, "message": ck.clean(str(e)),
                              "grader_id": id(e)}}

    def _exception(self, data: dict[str, Any]) -> BaseException:
        original = self.errors.get(data.get("grader_id"))  # raised here, in a callback
        if original is not None:
            return original
        name = str(data.get("type", "Exception"))
        exc_type = getattr(builtins, name, None)
        if not (isinstance(exc_type, type) and issubclass(exc_type, Exception | SystemExit)):
            exc_type = type(name, (StudentException,), {})
        try:
            exc = exc_type(str(data.get("message", "")))
        except Exception:
            exc = type(name, (StudentException,), {})(str(data.get("message", "")))
        exc.student_frames = [tuple(f) for f in data.get("frames", [])]  # type: ignore[attr-defined]
        exc.student_qualname = str(data.get("qualname", ""))  # type: ignore[attr-defined]
        return exc

    # the steps of a graded exercise

    def setup(self, cells: list[tuple[str, str]]) -> dict[str, Any]:
        kit = self.lab.kit
        names = {k: sb.encode(v, self._refuse, None) for k, v in kit.constants.items()}
        names.update({f.__name__: self._make_remote(f) for f in kit.functions})
        records = {r.__name__: [f.name for f in _fields(r)] for r in kit.records}
        return self.request({"op": "setup", "names": names, "records": records,
                             "cells": cells}, "running your answer cells")

    def lookup(self, name: str) -> Any:
        reply = self.request({"op": "lookup", "name": name}, f"looking up {name}")
        if reply.get("missing"):
            return _MISSING
        return self.decode(reply.get("value"))

    @staticmethod
    def _refuse(value: Any) -> Any:
        raise LabProtocolError(f"ANSWER_KIT constant {value!r} is not a plain value")


_MISSING = object()


def _fields(record: type) -> tuple[Any, ...]:
    import dataclasses

    return dataclasses.fields(record)


# --- grading ------------------------------------------------------------------------------


@dataclass
class Graded:
    """The outcome of a graded run, before it becomes a :class:`check_notebook.Report`."""

    rows: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _find(cells: list[Any], grade_id: str, cell_id: str) -> tuple[int, Any] | None:
    for number, cell in enumerate(cells, start=1):
        if md.nbgrader(cell).get("grade_id") == grade_id:
            return number, cell
    for number, cell in enumerate(cells, start=1):
        if cell_id and cell.get("id") == cell_id:
            return number, cell
    return None


@contextlib.contextmanager
def _quiet_checks() -> Iterator[None]:
    """No report file and no nbgrader mode while the grader's checks run here."""
    saved = {k: os.environ.pop(k) for k in (ck.REPORT_ENV, ck.NBGRADER_ENV) if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _stopped_text(e: AnswerStopped, exercise: Exercise, budget: float) -> str:
    if e.kind == "timeout":
        return (f"Your code ran longer than the {budget:g} s this exercise may take and was "
                f"stopped while running {e.call}. An endless loop? Check the loop's exit "
                "condition for that input.")
    if e.kind == "died":
        return (f"The Python process running your answers stopped ({e.detail}) while running "
                f"{e.call}, in exercise {exercise.grade_id}: your code ended it (os._exit, "
                "sys.exit in a thread, a crash, or too much memory).")
    return f"Your code broke the graded run's channel ({e.detail}) while running {e.call}."


def grade_exercise(lab: Lab, exercise: Exercise, cells: list[tuple[str, str]],
                   budget: float, graded: Graded, first: bool) -> tuple[Any, float]:
    """One exercise in a fresh sandbox: its row (a :class:`check_notebook.Row`) and the
    seconds the student's code used of ``budget``."""
    proc = AnswerProcess(lab, budget)
    try:
        return _grade_in(proc, lab, exercise, cells, graded, first), budget - proc.budget
    finally:
        proc.close()


def _grade_in(proc: AnswerProcess, lab: Lab, exercise: Exercise, cells: list[tuple[str, str]],
              graded: Graded, first: bool) -> Any:
    from kaiser_edu.course.check_notebook import Row

    def row(status: str, feedback: str, points: int = 0) -> Row:
        return Row(exercise=exercise.grade_id, title=exercise.check.title, status=status,
                   points=points, max_points=exercise.points, feedback=feedback, cell=0)

    budget = proc.budget
    try:
        try:
            ready = proc.setup(cells)
        except AnswerStopped as e:
            where_ = e.call if e.kind != "died" else "running your answer cells"
            return row(ck.ERROR, _stopped_text(AnswerStopped(e.kind, where_, e.detail),
                                               exercise, budget))
        if first:
            for label, name, message, line in ready.get("cell_errors", []):
                at = f", line {line}" if line else ""
                graded.notes.append(f"answer cell {label} raised {name}{at}: {message}")
            defined = set(ready.get("defined", []))
            forged = sorted(defined & lab.check_names)
            if forged:
                graded.notes.append(
                    f"your answers define {', '.join(forged)}, the name of a check: a graded "
                    "run uses the lab's own checks, so this changes nothing")
        function = proc.lookup(exercise.function)
        if function is _MISSING:
            return row(ck.ERROR, f"Your notebook does not define {exercise.function}: its "
                                 "answer cell is missing, raised an error (see the notes), or "
                                 "the function was renamed.")
        with _quiet_checks():
            result = exercise.check(function)
        loaded = proc.request({"op": "status"}, "the end of the check").get("loaded", [])
        if loaded:
            graded.notes.append(f"{exercise.grade_id}: your code loaded {', '.join(loaded)} "
                                "despite the import guard: 0 points")
            return row(ck.ERROR, "Your code loaded kaiser_edu modules, which a graded run "
                                 f"forbids ({', '.join(loaded)}): 0 points.")
        feedback = result.feedback
        if proc.not_plain:
            kinds = ", ".join(sorted(set(proc.not_plain)))
            graded.notes.append(f"{exercise.grade_id}: your code returned objects that are "
                                f"not plain values ({kinds}); they count as wrong answers")
        points = exercise.points if result.status == ck.PASSED else 0
        return row(result.status, feedback, points)
    except AnswerStopped as e:
        return row(ck.ERROR, _stopped_text(e, exercise, budget))
    except LabProtocolError:
        raise
    except Exception as e:  # a malformed answer from the sandbox: this exercise only
        return row(ck.ERROR, f"The graded run could not use what came back from your code "
                             f"({type(e).__name__}: {ck.clean(str(e))}). Did your code write "
                             "to the grader's channel? If not, this is a bug in kaiser_edu: "
                             "please tell your lecturer.")


def answer_cells(lab: Lab, nb: Any, graded: Graded) -> list[tuple[str, str]]:
    """The student's answer cells, in the solution's order, as (label, source); notes for
    missing cells and for what an answer mentions only to fake a result."""
    cells = []
    for answer in lab.answers:
        found = _find(nb.cells, answer.grade_id, answer.cell_id)
        if found is None:
            graded.notes.append(f"answer cell {answer.grade_id} is missing (deleted?)")
            continue
        number, cell = found
        if cell.cell_type != "code":
            graded.notes.append(f"answer cell {answer.grade_id} (cell {number}) is not a code "
                                "cell any more")
            continue
        for word, what in SUSPECT:
            if word in cell.source:
                graded.notes.append(f"answer cell {answer.grade_id} {what}: not allowed in a "
                                    "graded run")
        cells.append((answer.grade_id, cell.source))
    return cells


def added_cells(lab: Lab, nb: Any) -> list[str]:
    """Notes for code cells the solution does not have (by id): a graded run ignores them,
    and says so, naming what they try if it looks like faking a result."""
    authored = lab.cell_ids
    notes = []
    for number, cell in enumerate(nb.cells, start=1):
        if cell.cell_type != "code" or cell.get("id") in authored or not cell.source.strip():
            continue
        if md.is_answer(cell) or md.is_check(cell):
            continue  # an answer or check cell found by its grade id
        tries = [what for word, what in SUSPECT if word in cell.source]
        tries += [f"calls {name}" for name in sorted(lab.check_names) if name in cell.source]
        first = cell.source.strip().split("\n", 1)[0][:40]
        notes.append(f"cell {number} ({first!r}) was added to the lab; a graded run runs only "
                     "the answer cells" + (f" (it {'; '.join(tries)})" if tries else ""))
    return notes


def grade(path: str | Path, lab: Lab | None = None, budget: float = DEFAULT_BUDGET,
          solutions: str | Path | None = None, limit: float | None = None) -> Any:
    """Grade the notebook at ``path``; a :class:`check_notebook.Report` with ``graded``.

    ``budget``: seconds the student's code may run per exercise; ``limit``: for the whole
    notebook (default: no limit beyond the per-exercise budgets). An exercise that starts
    with less left gets what is left, and none when nothing is: a "time limit" row.
    """
    from kaiser_edu.course.check_notebook import Report, Row, load

    nb = load(path)
    if lab is None:
        lab = load_lab(solution_for(Path(path).name, solutions))
    graded = Graded()
    cells = answer_cells(lab, nb, graded)
    graded.notes.extend(added_cells(lab, nb))
    limit_total = limit or 0.0
    for index, exercise in enumerate(lab.exercises):
        found = _find(nb.cells, exercise.grade_id, exercise.cell_id)
        if found is None:
            graded.rows.append(Row(
                exercise=exercise.grade_id, title=exercise.check.title, status=ck.MISSING,
                points=0, max_points=exercise.points, cell=0,
                feedback=f"The check cell of this exercise ({exercise.source}) is missing from "
                         "the notebook: 0 points. Restore it (it is in the lab as handed "
                         "out)."))
            continue
        if found[1].source.strip() != exercise.source.strip():
            graded.notes.append(
                f"check cell {exercise.grade_id} (cell {found[0]}) was edited: a graded run "
                f"ignores the edit and runs the lab's own check, {exercise.source}")
        left = budget if limit is None else min(budget, limit)
        if left <= 0:
            graded.rows.append(Row(
                exercise=exercise.grade_id, title=exercise.check.title, status=ck.ERROR,
                points=0, max_points=exercise.points, cell=found[0],
                feedback=f"Not graded: the submission's time limit ({limit_total:g} s) was "
                         "used up by the exercises before it."))
            continue
        row, used = grade_exercise(lab, exercise, cells, left, graded, first=index == 0)
        if limit is not None:
            limit -= used
        row.cell = found[0]
        graded.rows.append(row)
    report = Report(notebook=str(path), rows=graded.rows)
    report.notes = graded.notes
    report.graded = True
    return report

