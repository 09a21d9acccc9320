"""The grader's side of the answer sandbox (:mod:`kaiser_edu.course.sandbox`).

:class:`AnswerProcess` starts one sandbox (``python -I sandbox.py``, a Python that has not
imported ``kaiser_edu``), sends it the answer cells, and gives the grader stand-ins for what
they define: a :class:`RemoteFunction` is called like the student's function, a stand-in
class (:meth:`AnswerProcess.cls`) is instantiated like the student's class, and every call
sends its arguments to the sandbox and brings back a plain value. An answer that is not a
plain value comes back as :class:`NotPlain`, equal to nothing. Objects a check passes to
the student's code stay here: the sandbox gets a description of the names the lab's
:class:`~kaiser_edu.course.checks.AnswerKit` declares, and every use of them comes back
here as a *callback*, which :meth:`AnswerProcess._serve` checks against that declaration.

Time: ``budget`` seconds of waiting for the student's code, over the process's life
(callbacks served here do not count). When it runs out, or the sandbox dies or breaks the
protocol, :class:`AnswerStopped` is raised with the call that was running.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kaiser_edu.course import checks as ck
from kaiser_edu.course import sandbox as sb
from kaiser_edu.errors import KaiserEduError

SANDBOX = Path(sb.__file__).resolve()
MISSING = object()  # what looking up a name the answers do not define gives


class LabProtocolError(KaiserEduError):
    """A lab does not follow the protocol of :mod:`kaiser_edu.course.labs` (a lab bug)."""


class AnswerStopped(BaseException):  # noqa: N818 - not an error of the grader: a verdict
    """The sandbox stopped answering: ``kind`` is ``timeout``, ``died`` or ``protocol``.

    A BaseException, so that no check mistakes it for the student's exception: it leaves
    the check and becomes the exercise's row (:func:`kaiser_edu.course.graded.grade_exercise`).
    """

    def __init__(self, kind: str, call: str, detail: str = ""):
        super().__init__(f"{kind} during {call}: {detail}")
        self.kind, self.call, self.detail = kind, call, detail


class StudentException(Exception):
    """An exception of the student's code whose type is not a Python builtin."""


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

    def __init__(self, proc: AnswerProcess, ref: int, name: str):
        self._proc, self._ref, self.__name__ = proc, ref, name

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

    def __init__(self, kit: ck.AnswerKit, budget: float):
        self.kit, self.budget = kit, budget
        self.records = {r.__name__: r for r in kit.records}
        self.handles: dict[int, tuple[Any, tuple[str, ...]]] = {}
        self.errors: dict[int, BaseException] = {}
        self.not_plain: list[str] = []
        self._buffer = b""
        # Nothing of the grader's environment (no report file, no nbgrader mode) and an
        # empty working folder of its own (not the package's, not the submission's).
        env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "SYSTEMROOT")
               if k in os.environ}
        self.workdir = tempfile.mkdtemp(prefix="kaiser-edu-answers-")
        self.proc = subprocess.Popen(
            [sys.executable, "-I", str(SANDBOX)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
            cwd=self.workdir, start_new_session=True)

    # plumbing

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died: the next read says how

    def _receive(self, call: str) -> dict[str, Any]:
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
        shutil.rmtree(self.workdir, ignore_errors=True)

    # values

    def encode(self, value: Any) -> Any:
        return sb.encode(value, self._make_remote, self.records)

    def _make_remote(self, value: Any) -> dict[str, Any]:
        if isinstance(value, RemoteFunction | RemoteInstance):
            return {"ref": value._ref}
        if value in self.kit.functions:
            self.handles[id(value)] = (value, ("__call__",))
            return {"remote": id(value), "name": value.__name__, "callable": True,
                    "repr": f"<function {value.__name__}>"}
        allowed = next((names for cls, names in self.kit.objects.items()
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

        namespace: dict[str, Any] = {"__init__": __init__}
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
        kit = self.kit
        names = {k: sb.encode(v, self._refuse, None) for k, v in kit.constants.items()}
        names.update({f.__name__: self._make_remote(f) for f in kit.functions})
        records = {r.__name__: [f.name for f in dataclasses.fields(r)] for r in kit.records}
        return self.request({"op": "setup", "names": names, "records": records,
                             "modules": dict(kit.modules), "cells": cells},
                            "your answer cells")

    def lookup(self, name: str) -> Any:
        reply = self.request({"op": "lookup", "name": name}, f"looking up {name}")
        if reply.get("missing"):
            return MISSING
        return self.decode(reply.get("value"))

    @staticmethod
    def _refuse(value: Any) -> Any:
        raise LabProtocolError(f"ANSWER_KIT constant {value!r} is not a plain value")


MISSING = object()

