"""Replaying a real program's memory trace (valgrind's lackey format) on the simulated kernel.

``valgrind --tool=lackey --trace-mem=yes PROGRAM`` prints one line per instruction fetch
and data access of PROGRAM (lackey's ``lk_main.c``: ``trace_instr`` prints ``"I  %08lx,%lu"``,
``trace_load``/``trace_store``/``trace_modify`` print ``" L %08lx,%lu"``, ``" S ..."``,
``" M ..."``; the address in hex, the size in bytes)::

    I  04001e50,3
     S 1ffefffe78,8
     L 04021f20,8
     M 0402a3c8,4

Lines valgrind itself writes into the same stream (``==1234== ...``, ``--1234-- ...``) are
skipped, as are blank lines and comments starting with ``#``. System calls are marked by
valgrind's own ``--trace-syscalls=yes`` lines (``SYSCALL[pid,tid](nr) sys_read ( ... )``,
interleaved with the accesses in program order when both go to one ``--log-fd``), or by a
line ``#syscall``; the replay enters the kernel at each mark (``marked=True``), and/or
every N accesses (``syscall_every=N``).

The reader streams: it never holds more than one chunk of lines (:data:`CHUNK` lines, as
numpy arrays), so a trace of 10^8 lines replays in constant memory, and it reads gzip
(``.gz``) transparently. A malformed line raises :class:`TraceFormatError` naming the
file, the line number and the line.

Replay maps every page the trace touches into one simulated task on first sight (user,
read/write/execute, 4 KiB: the real program's mappings are not in the trace) and runs the
accesses at CPL 3 through the MMU, each system call as the kernel's real entry/exit path.
``I`` is an instruction fetch, ``L`` a read, ``S`` and ``M`` a write (a modify is one
read-modify-write of the same address: one translation, which sets D).
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b

TRACES_DIR = Path(__file__).parent / "traces"  # the shipped traces and make_traces.sh
CHUNK = 1 << 16  # lines per chunk
CPI = 1.0  # assumed cycles per instruction of the traced program's own work
USER_LIMIT = 1 << 47  # lackey traces user-space addresses: the lower canonical half
_LINE = re.compile(r"^(I | [LSM]) *([0-9a-fA-F]+),(\d+)\s*$")
KIND_CODES = {"I ": b.ACCESS_FETCH, " L": b.ACCESS_READ, " S": b.ACCESS_WRITE,
              " M": b.ACCESS_WRITE}
SYSCALL_MARK = "#syscall"
# valgrind --trace-syscalls=yes: "SYSCALL[pid,tid](nr) sys_name ( args ) --> ..." starts a
# system call; "SYSCALL[pid,tid](nr) ... [async] --> ..." and " --> ..." lines finish one.
_VG_SYSCALL = re.compile(r"^SYSCALL\[\d+,\d+\]\(\d+\) sys_")


class TraceFormatError(KaiserEduError):
    """A trace line that is not in lackey's format."""


@dataclass
class Chunk:
    """Consecutive accesses of a trace: ``kind`` (ACCESS_* codes), ``addr``, ``size``, and
    ``marks``: for each ``#syscall`` line, how many accesses of this chunk preceded it."""

    kind: np.ndarray
    addr: np.ndarray
    size: np.ndarray
    marks: np.ndarray
    first_line: int

    def __len__(self) -> int:
        return len(self.kind)

    @property
    def instructions(self) -> int:
        return int(np.count_nonzero(self.kind == b.ACCESS_FETCH))


def _open_source(source) -> tuple[object, str, bool]:
    """(stream, name for messages, whether we opened it). A path is opened in binary (gzip
    or plain: read in large blocks, which is much faster than text-mode lines); an open
    file is read line by line as it is."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise KaiserEduError(f"trace file {str(path)!r} does not exist")
        with open(path, "rb") as probe:
            gz = probe.read(2) == b"\x1f\x8b"
        return (gzip.open(path, "rb") if gz else open(path, "rb")), str(path), True  # noqa: SIM115
    return source, getattr(source, "name", "<trace>"), False


READ_BYTES = 1 << 22  # bytes read at a time from a trace file


def _line_blocks(stream, owned: bool, chunk: int) -> Iterator[list[str]]:
    """Lists of at most ``chunk`` lines, without their newlines."""
    if not owned:  # an open text file: its own line iteration
        while True:
            lines = [line.rstrip("\n") for line in islice(stream, chunk)]
            if not lines:
                return
            yield lines
    pending: list[str] = []
    rest = ""
    while True:
        data = stream.read(READ_BYTES)
        if not data:
            break
        parts = (rest + data.decode("ascii", errors="replace")).split("\n")
        rest = parts.pop()
        pending.extend(parts)
        while len(pending) >= chunk:
            yield pending[:chunk]
            del pending[:chunk]
    if rest:
        pending.append(rest)
    for i in range(0, len(pending), chunk):
        yield pending[i:i + chunk]


def read_chunks(source, chunk: int = CHUNK) -> Iterator[Chunk]:
    """Stream a lackey trace (path, ``.gz`` path, or an open text file) as :class:`Chunk`\\ s
    of the accesses in at most ``chunk`` lines each (a file is read in blocks of
    :data:`READ_BYTES`, much faster than text-mode lines through gzip)."""
    if not isinstance(chunk, int) or chunk < 1:
        raise KaiserEduError(f"chunk must be a positive integer, got {chunk!r}")
    stream, name, owned = _open_source(source)
    try:
        first = 1
        for lines in _line_blocks(stream, owned, chunk):
            block = _parse_block(lines, first, name)
            if block is not None:
                yield block
            first += len(lines)
        if first == 1:
            raise TraceFormatError(f"{name}: the trace is empty")
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise TraceFormatError(f"{name}: cannot read the trace: {e}") from e
    finally:
        if owned:
            stream.close()


def _parse_block(lines: list[str], first: int, name: str) -> Chunk | None:
    """One block of lines (the first is line ``first``): its accesses and marks, or None if
    it has neither; anything malformed raises with its line number and content."""
    kinds, addrs, sizes, marks = [], [], [], []
    for lineno, line in enumerate(lines, start=first):
        m = _LINE.match(line)
        if m is not None:
            addr = int(m.group(2), 16)
            if addr >= USER_LIMIT:
                raise TraceFormatError(
                    f"{name}:{lineno}: address {addr:#x} is not a user-space address "
                    f"(below {USER_LIMIT:#x}): {line.rstrip()!r}")
            kinds.append(KIND_CODES[m.group(1)])
            addrs.append(addr)
            sizes.append(int(m.group(3)))
            continue
        text = line.strip()
        if text == SYSCALL_MARK or _VG_SYSCALL.match(text):
            marks.append(len(kinds))
        elif text and not text.startswith(("==", "#", "--", "SYSCALL[")):
            raise TraceFormatError(
                f"{name}:{lineno}: not a lackey trace line: {line.rstrip()!r}; expected "
                "'I  ADDR,SIZE' or ' L|S|M ADDR,SIZE' (hex address, decimal size), "
                "'#syscall', a '#' comment or a line valgrind writes itself "
                "('==pid==', '--pid--', 'SYSCALL[...]', ' --> ...')")
    if not kinds and not marks:
        return None
    return Chunk(np.array(kinds, dtype=np.uint8), np.array(addrs, dtype=np.uint64),
                 np.array(sizes, dtype=np.uint32), np.array(marks, dtype=np.int64), first)


@dataclass
class TraceStats:
    accesses: int = 0
    instructions: int = 0
    pages: int = 0
    syscalls: int = 0


def replay(source, mode: str = "pti", cpu: str = "skylake", syscall_every: int | None = None,
           marked: bool = True, limit: int | None = None, seed: int = 0,
           progress: bool = False):
    """Replay a trace under ``mode``: returns (:class:`~kaiser_edu.perf.cost.Counts`,
    :class:`TraceStats`). A "call" of the counts is one traced instruction, so cycles per
    call are cycles per instruction. System calls are injected after every
    ``syscall_every`` accesses and/or at ``#syscall`` marks (``marked``); ``progress``
    shows a tqdm bar of the accesses replayed (on stderr)."""
    from tqdm import tqdm

    from kaiser_edu.kernel.mm import PROT_EXEC, PROT_READ, PROT_WRITE, vm_page_prot
    from kaiser_edu.perf.cost import Counts
    from kaiser_edu.perf.workloads import Machine

    if syscall_every is not None and (not isinstance(syscall_every, int) or syscall_every < 1):
        raise KaiserEduError(f"syscall_every must be a positive integer, got {syscall_every!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise KaiserEduError(f"limit must be a positive integer, got {limit!r}")
    machine = Machine(mode, cpu, max_ws_kib=4, seed=seed)
    k, task = machine.kernel, machine.task
    flags = vm_page_prot(PROT_READ | PROT_WRITE | PROT_EXEC)
    sys = k.entry.syscall_trace(task)
    mapped: set[int] = set()
    stats = TraceStats()
    totals = {}
    done = 0
    bar = tqdm(desc=f"replay ({mode})", unit=" accesses", unit_scale=True, total=limit,
               disable=not progress, leave=False)
    for ch in read_chunks(source):
        if limit is not None and done >= limit:
            break
        if limit is not None and done + len(ch) > limit:
            keep = limit - done
            ch = Chunk(ch.kind[:keep], ch.addr[:keep], ch.size[:keep],
                       ch.marks[ch.marks <= keep], ch.first_line)
        for page in np.unique(ch.addr >> np.uint64(12)).tolist():
            if page not in mapped:
                mapped.add(page)
                va = page << 12
                if task.mm.tables.translate(va) is None:
                    task.mm.tables.map(va, k.alloc.alloc(), b.PAGE_SIZE, flags)
        points = list(ch.marks) if marked else []
        if syscall_every:
            first = syscall_every - done % syscall_every
            points += list(range(first, len(ch) + 1, syscall_every))
        points = sorted(points)
        trace = _interleave(ch, sys, points)
        counters = k.mmu.run(trace, record=False).counters
        if counters["page_faults"] or counters["general_protection"]:
            raise KaiserEduError(f"replay faulted near line {ch.first_line}: {counters}")
        totals = {n: totals.get(n, 0) + v for n, v in counters.items()}
        done += len(ch)
        stats.accesses += len(ch)
        stats.instructions += ch.instructions
        stats.syscalls += len(points)
        bar.update(len(ch))
    bar.close()
    if not done:
        raise KaiserEduError("the trace has no accesses")
    stats.pages = len(mapped)
    counts = Counts(mmu=totals, kernel_entries=stats.syscalls,
                    user_cycles=CPI * stats.instructions, calls=max(1, stats.instructions),
                    extra={"accesses": stats.accesses, "pages": stats.pages,
                           "syscalls": stats.syscalls})
    return counts, stats


def _interleave(ch: Chunk, sys, points: list[int]):
    """The chunk's accesses at CPL 3 with the syscall round trip inserted before access
    index p for each p in ``points`` (p == len(ch): at the end)."""
    from kaiser_edu.hw.mmu import Trace

    ops = [ch.kind]
    addrs = [ch.addr]
    args = [np.full(len(ch), 3, dtype=np.uint16)]
    if not points:
        return Trace(ops[0], addrs[0], args[0])
    ops, addrs, args = [], [], []
    prev = 0
    for p in points:
        ops += [ch.kind[prev:p], sys.op]
        addrs += [ch.addr[prev:p], sys.addr]
        args += [np.full(p - prev, 3, dtype=np.uint16), sys.arg]
        prev = p
    ops.append(ch.kind[prev:])
    addrs.append(ch.addr[prev:])
    args.append(np.full(len(ch) - prev, 3, dtype=np.uint16))
    return Trace(np.concatenate(ops), np.concatenate(addrs), np.concatenate(args))


def replay_report(source, mode: str = "pti", cpu: str = "skylake",
                  syscall_every: int | None = None, marked: bool = True,
                  limit: int | None = None, progress: bool = False):
    """:func:`replay` under ``mode`` and under ``off``, priced: a
    :class:`~kaiser_edu.perf.cost.CostReport` with the overhead, and the trace's stats."""
    from kaiser_edu.kernel.timing import timing
    from kaiser_edu.perf.cost import CostReport

    off, _ = replay(source, "off", cpu, syscall_every, marked, limit, progress=progress)
    counts, stats = replay(source, mode, cpu, syscall_every, marked, limit, progress=progress)
    base = CostReport("off", cpu, off, timing(cpu)).cycles_per_call
    return CostReport(mode, cpu, counts, timing(cpu), base), stats
