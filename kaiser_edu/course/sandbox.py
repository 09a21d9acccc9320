"""The answer sandbox of a graded run: the student's code in a Python of its own.

``kaiser-edu check --graded`` (:mod:`kaiser_edu.course.graded`) never runs a student's
code in its own process. It starts ``python -I sandbox.py`` (this file, run as a script by
its path, so the ``kaiser_edu`` package is *not* imported), sends it the answer cells, and
then calls the student's functions with its own inputs. Only plain values cross over: the
check logic, the expected answers and the report stay in the grader, out of reach.

What the sandbox does, in order:

1. moves the protocol to two private file descriptors and points stdin, stdout and stderr
   at ``/dev/null`` (a ``print`` cannot corrupt the protocol);
2. installs an import guard: every ``kaiser_edu`` module is refused with a message saying
   so ("in a graded run, answers may not import kaiser_edu.hw.walk"), because that is where
   the engine, and so every answer, lives;
3. runs the prelude the lab gives its answers (constants, helper functions sent as
   source, record types) and then each answer cell; a cell that raises is reported and the
   next one still runs, as in a notebook;
4. serves requests: ``call`` a function or method, ``get`` an attribute, ``lookup`` a name.

The protocol: one JSON object per line each way. Values are encoded by :func:`encode`:
JSON scalars as themselves (numpy scalars as their Python value); a tuple, list or dict
tagged (``{"tuple": [...]}``); a numpy array of numbers as ``{"ndarray": {dtype, shape,
data}}`` (timing samples: lab 05), decoded with numpy on the other side; an
instance of one of the lab's record types as ``{"record": name, "fields": {...}}``; any
other object as a *reference* (``{"ref": n, "kind": "function"|"class"|"object", ...}``)
that the other side can call or read through more requests. While the student's code
runs, it may use objects the grader handed it (``read_qword``, ``pti``): each use is a
``callback`` request to the grader, which answers with a value or an exception. Those
objects expose only what the lab declares (no ``.mem`` of the simulated machine).

This module is also imported by the grader, for :func:`encode` / :func:`decode` and the
message framing; it imports nothing but the standard library.
"""

from __future__ import annotations

import builtins
import dataclasses
import importlib
import importlib.abc
import io
import json
import os
import sys
import traceback
from typing import Any

GUARDED = "kaiser_edu"  # the package whose modules answers may not import
CELL_PREFIX = "<answer "  # file name of an answer cell: "<answer lab01-split-answer>"
MAX_TEXT = 300
MEMORY_LIMIT = 2 << 30  # bytes of address space the student's code may use


# --- values on the wire --------------------------------------------------------------------


def encode(value: Any, make_ref: Any, records: dict[str, type] | None = None) -> Any:
    """``value`` as JSON data; objects that are not plain become ``make_ref(value)``."""
    if value is None or isinstance(value, bool | str):
        return value
    if type(value) is int or type(value) is float:
        return value
    if isinstance(value, int):  # an int subclass (IntEnum, numpy's are not): its value
        return int(value)
    if isinstance(value, float):  # a float subclass (numpy.float64): its value
        return float(value)
    if type(value).__module__ == "numpy" and getattr(value, "dtype", None) is not None \
            and value.dtype.kind in "biuf":  # numbers only, never object arrays
        if value.ndim == 0:  # a numpy scalar: its Python value
            return value.item()
        return {"ndarray": {"dtype": value.dtype.str, "shape": list(value.shape),
                            "data": value.ravel().tolist()}}
    if type(value) is tuple:
        return {"tuple": [encode(v, make_ref, records) for v in value]}
    if type(value) is list:
        return {"list": [encode(v, make_ref, records) for v in value]}
    if type(value) is dict:
        return {"dict": [[encode(k, make_ref, records), encode(v, make_ref, records)]
                         for k, v in value.items()]}
    if records and dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if records.get(name) is type(value):
            return {"record": name,
                    "fields": {f.name: encode(getattr(value, f.name), make_ref, records)
                               for f in dataclasses.fields(value)}}
    return make_ref(value)


def decode(data: Any, resolve: Any, records: dict[str, type] | None = None) -> Any:
    """The inverse of :func:`encode`; a reference becomes ``resolve(data)``."""
    if not isinstance(data, dict):
        return data
    if "tuple" in data:
        return tuple(decode(v, resolve, records) for v in data["tuple"])
    if "list" in data:
        return [decode(v, resolve, records) for v in data["list"]]
    if "dict" in data:
        return {decode(k, resolve, records): decode(v, resolve, records)
                for k, v in data["dict"]}
    if "ndarray" in data:  # numbers in an array (timing samples): numpy on both sides
        import numpy as np

        a = data["ndarray"]
        return np.array(a["data"], dtype=np.dtype(a["dtype"])).reshape(a["shape"])
    if "record" in data:
        fields = {k: decode(v, resolve, records) for k, v in data["fields"].items()}
        cls = (records or {}).get(data["record"])
        return cls(**fields) if cls is not None else Record(data["record"], fields)
    return resolve(data)


class Record:
    """A record whose type the receiving side does not know: its fields as attributes."""

    def __init__(self, name: str, fields: dict[str, Any]):
        self.__dict__.update(fields)
        self._name = name

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "_name")
        return f"{self._name}({inner})"


class Channel:
    """JSON lines over two file descriptors."""

    def __init__(self, read_fd: int, write_fd: int):
        self._in = os.fdopen(read_fd, "r", encoding="utf-8", newline="\n")
        self._out = os.fdopen(write_fd, "w", encoding="utf-8", newline="\n")

    def send(self, message: dict[str, Any]) -> None:
        self._out.write(json.dumps(message) + "\n")
        self._out.flush()

    def receive(self) -> dict[str, Any]:
        line = self._in.readline()
        if not line:
            raise EOFError("the grader closed the channel")
        return json.loads(line)


def short(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


# --- the sandbox side ------------------------------------------------------------------------


def _refuse(fullname: str) -> ImportError:
    return ImportError(f"in a graded run, answers may not import {fullname}: write the code "
                       "yourself (the names the lab gives you are already defined)",
                       name=fullname)


class ImportGuard(importlib.abc.MetaPathFinder):
    """Refuses every module of ``kaiser_edu`` (``importlib`` and friends come here)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname == GUARDED or fullname.startswith(GUARDED + "."):
            raise _refuse(fullname)
        return None


def _guarded_import(original: Any) -> Any:
    """``__import__`` that names the whole module asked for (``from kaiser_edu.hw import
    walk`` names kaiser_edu.hw.walk, where the finder would only see kaiser_edu)."""

    def guarded(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (),
                level: int = 0) -> Any:
        if level == 0 and (name == GUARDED or name.startswith(GUARDED + ".")):
            names = [n for n in (fromlist or ()) if isinstance(n, str) and n != "*"]
            raise _refuse(f"{name}.{names[0]}" if names else name)
        return original(name, globals, locals, fromlist, level)

    return guarded


class GraderError(Exception):
    """An exception raised by the grader while serving a callback (e.g. a bad address)."""


def _exception_data(exc: BaseException) -> dict[str, Any]:
    frames = [[f.filename, f.lineno, f.name, (f.line or "").strip()]
              for f in traceback.extract_tb(exc.__traceback__)
              if f.filename.startswith(CELL_PREFIX)]
    qualname = ""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None and tb.tb_frame.f_code.co_filename.startswith(CELL_PREFIX):
        code = tb.tb_frame.f_code
        qualname = getattr(code, "co_qualname", code.co_name)
    try:
        message = short(str(exc))
    except Exception:
        message = "(a message that cannot be shown)"
    return {"type": type(exc).__name__, "message": message, "frames": frames,
            "qualname": qualname, "grader_id": getattr(exc, "grader_id", None)}


class Sandbox:
    """The sandbox's half of the protocol (see the module docstring)."""

    def __init__(self, channel: Channel):
        self.channel = channel
        self.namespace: dict[str, Any] = {"__name__": "__answers__", "__builtins__": builtins}
        self.objects: dict[int, Any] = {}
        self.records: dict[str, type] = {}

    # references both ways

    def make_ref(self, value: Any) -> dict[str, Any]:
        ref = id(value)
        self.objects[ref] = value
        if isinstance(value, type):
            methods = sorted(k for k in dir(value)
                             if not k.startswith("__") and callable(getattr(value, k, None)))
            return {"ref": ref, "kind": "class", "name": value.__name__, "methods": methods}
        kind = "function" if callable(value) else "object"
        return {"ref": ref, "kind": kind, "name": type(value).__name__
                if kind == "object" else getattr(value, "__name__", "function")}

    def resolve(self, data: dict[str, Any]) -> Any:
        if "ref" in data:
            return self.objects[data["ref"]]
        if "remote" in data:
            return Remote(self, data)
        raise ValueError(f"unknown value {data!r}")

    def encode(self, value: Any) -> Any:
        return encode(value, self.make_ref, self.records)

    def decode(self, data: Any) -> Any:
        return decode(data, self.resolve, self.records)

    # the grader's objects, used by the student's code

    def callback(self, handle: int, attr: str, kind: str, args: tuple, kwargs: dict) -> Any:
        self.channel.send({"op": "callback", "handle": handle, "attr": attr, "kind": kind,
                           "args": self.encode(list(args)), "kwargs": self.encode(kwargs)})
        reply = self.channel.receive()
        if "raise" in reply:
            data = reply["raise"]
            exc_type = getattr(builtins, data["type"], None)
            if not (isinstance(exc_type, type) and issubclass(exc_type, Exception)):
                exc_type = type(data["type"], (GraderError,), {})
            exc = exc_type(data["message"])
            exc.grader_id = data.get("grader_id")
            raise exc
        return self.decode(reply["value"])

    # requests

    def setup(self, message: dict[str, Any]) -> dict[str, Any]:
        for name, fields in message.get("records", {}).items():
            self.records[name] = dataclasses.make_dataclass(name, fields)
            self.namespace[name] = self.records[name]
        self.namespace.update({k: self.decode(v) for k, v in message.get("names", {}).items()})
        errors = []
        for name, module in message.get("modules", {}).items():  # {"np": "numpy"}
            try:  # through the guard: a kit cannot smuggle in kaiser_edu either
                self.namespace[name] = importlib.import_module(module)
            except BaseException as e:  # noqa: BLE001 - reported like a cell's error
                data = _exception_data(e)
                errors.append([f"setup: import {module} as {name}", data["type"],
                               data["message"], None])
        for label, source in message.get("cells", []):
            filename = f"{CELL_PREFIX}{label}>"
            try:
                exec(compile(source, filename, "exec"), self.namespace)
            except BaseException as e:  # noqa: BLE001 - a cell's error is the student's
                data = _exception_data(e)
                line = data["frames"][-1][1] if data["frames"] else getattr(e, "lineno", None)
                errors.append([label, data["type"], data["message"],
                               line if isinstance(line, int) else None])
        defined = sorted(k for k in self.namespace if not k.startswith("__"))
        loaded = sorted(m for m in sys.modules if m == GUARDED or m.startswith(GUARDED + "."))
        return {"value": None, "cell_errors": errors, "defined": defined, "loaded": loaded}

    def serve(self, message: dict[str, Any]) -> dict[str, Any]:
        op = message["op"]
        if op == "setup":
            return self.setup(message)
        if op == "lookup":
            if message["name"] not in self.namespace:
                return {"missing": True}
            return {"value": self.encode(self.namespace[message["name"]])}
        if op == "status":  # what the guard should have kept out
            return {"value": None, "loaded": sorted(
                m for m in sys.modules if m == GUARDED or m.startswith(GUARDED + "."))}
        target = self.objects[message["target"]]
        if op == "get":
            return {"value": self.encode(getattr(target, message["attr"]))}
        if op == "call":
            if message.get("attr"):
                target = getattr(target, message["attr"])
            args = self.decode(message["args"])
            kwargs = self.decode(message["kwargs"])
            return {"value": self.encode(target(*args, **kwargs))}
        raise ValueError(f"unknown request {op!r}")

    def loop(self) -> None:
        while True:
            try:
                message = self.channel.receive()
            except EOFError:
                return
            if message.get("op") == "bye":
                return
            try:
                reply = self.serve(message)
            except BaseException as e:  # noqa: BLE001 - the student's code may raise anything
                reply = {"raise": _exception_data(e)}
            self.channel.send(reply)


class Remote:
    """An object the grader handed to the student's code: only its declared attributes.

    Reading an attribute asks the grader; calling the object (or a method) sends the
    arguments, as plain values, to the grader, which runs the call in its own process.
    """

    def __init__(self, sandbox: Sandbox, data: dict[str, Any]):
        object.__setattr__(self, "_sandbox", sandbox)
        object.__setattr__(self, "_data", data)

    def __getattr__(self, name: str) -> Any:
        data = object.__getattribute__(self, "_data")
        sandbox = object.__getattribute__(self, "_sandbox")
        if name in data.get("methods", ()):
            def method(*args: Any, **kwargs: Any) -> Any:
                return sandbox.callback(data["remote"], name, "call", args, kwargs)
            method.__name__ = name
            return method
        if name in data.get("attrs", ()):
            return sandbox.callback(data["remote"], name, "get", (), {})
        allowed = sorted([*data.get("methods", ()), *data.get("attrs", ())])
        raise AttributeError(
            f"the {data['name']} handed to your code ({data.get('repr', '?')}) has no "
            f"attribute {name!r} in a graded run (it offers: "
            f"{', '.join(allowed) or 'only a call'})")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{object.__getattribute__(self, '_data')['name']} is read-only")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        data = object.__getattribute__(self, "_data")
        if not data.get("callable"):
            raise TypeError(f"{data['name']} is not callable")
        return object.__getattribute__(self, "_sandbox").callback(
            data["remote"], "", "call", args, kwargs)

    def __repr__(self) -> str:
        return str(object.__getattribute__(self, "_data").get("repr", "<grader object>"))


class _Sink(io.TextIOBase):
    """Where the student's prints go: nowhere (keeps no copy, so it never grows)."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return len(text)


def main() -> None:
    """Run as ``python -I sandbox.py``: serve the grader on the inherited stdin/stdout."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]  # kaiser_edu/course
    try:  # a memory bomb fails with MemoryError here, not by taking the machine down
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    except (ImportError, ValueError, OSError):
        pass  # no such limit on this system
    read_fd, write_fd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    sys.stdin = io.StringIO()
    sys.stdout = sys.stderr = _Sink()  # print() goes nowhere near the protocol
    for name in [m for m in sys.modules if m == GUARDED or m.startswith(GUARDED + ".")]:
        del sys.modules[name]
    sys.meta_path.insert(0, ImportGuard())
    builtins.__import__ = _guarded_import(builtins.__import__)
    Sandbox(Channel(read_fd, write_fd)).loop()


if __name__ == "__main__":
    main()
