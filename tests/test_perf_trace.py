"""The lackey trace importer (streaming, gzip, line-numbered errors) and the replay."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.mmu import Trace
from kaiser_edu.perf import trace as T
from kaiser_edu.perf import workloads as W

TRACES = Path(T.__file__).parent / "traces"
GOOD = """\
==4242== Lackey, an example Valgrind tool
==4242== Command: ./demo

I  04001e50,3
 S 1ffefffe78,8
SYSCALL[4242,1](12) sys_brk ( 0x0 ) --> [pre-success] Success(0x4035000)
 L 04021f20,8
SYSCALL[4242,1](257) ... [async] --> Success(0x4)
 --> [pre-fail] Failure(0x26)
#syscall
I  04001e53,4
 M 0402a3c8,4
# a comment
"""


def test_good_lines_become_arrays_and_syscall_marks():
    (ch,) = list(T.read_chunks(io.StringIO(GOOD)))
    assert ch.kind.tolist() == [b.ACCESS_FETCH, b.ACCESS_WRITE, b.ACCESS_READ, b.ACCESS_FETCH,
                                b.ACCESS_WRITE]
    assert ch.addr.tolist() == [0x4001E50, 0x1FFEFFFE78, 0x4021F20, 0x4001E53, 0x402A3C8]
    assert ch.size.tolist() == [3, 8, 8, 4, 4]
    # a sys_brk start line after 2 accesses, #syscall after 3; the completion lines are not marks
    assert ch.marks.tolist() == [2, 3]
    assert ch.instructions == 2


def test_chunks_stream_and_concatenate_to_the_whole(tmp_path):
    lines = "".join(f" L {0x1000 + 8 * i:x},8\n" for i in range(10))
    whole = list(T.read_chunks(io.StringIO(lines)))
    parts = list(T.read_chunks(io.StringIO(lines), chunk=3))
    assert [len(p) for p in parts] == [3, 3, 3, 1]
    assert np.concatenate([p.addr for p in parts]).tolist() == whole[0].addr.tolist()
    assert [p.first_line for p in parts] == [1, 4, 7, 10]


def test_the_reader_is_lazy():
    """A generator of lines is consumed chunk by chunk, never read ahead to the end."""
    consumed = []

    class Lines(io.StringIO):
        def __iter__(self):
            for i in range(1_000_000):
                consumed.append(i)
                yield f" L {0x1000 + 8 * i:x},8\n"

    first = next(T.read_chunks(Lines(), chunk=100))
    assert len(first) == 100 and len(consumed) == 100


def test_gzip_is_read_transparently(tmp_path):
    plain, gz = tmp_path / "t.txt", tmp_path / "t.gz"
    plain.write_text(GOOD)
    with gzip.open(gz, "wt") as f:
        f.write(GOOD)
    a, c = list(T.read_chunks(plain)), list(T.read_chunks(gz))
    assert a[0].addr.tolist() == c[0].addr.tolist() and a[0].marks.tolist() == c[0].marks.tolist()


@pytest.mark.parametrize("bad, lineno", [
    ("I  04001e50,3\n L zz12,8\n", 2),
    ("I  04001e50\n", 1),
    ("I  04001e50,3\n\n X 1234,8\n", 3),
    ("I  04001e50,3\n L 0x1234,8\n", 2),
    ("hello world\n", 1),
    ("I  04001e50,3\n\tL 1234,8\n", 2),
])
def test_a_malformed_line_is_refused_with_its_number_and_content(bad, lineno):
    with pytest.raises(T.TraceFormatError) as e:
        list(T.read_chunks(io.StringIO(bad)))
    text = bad.splitlines()[lineno - 1]
    assert f":{lineno}:" in str(e.value) and repr(text) in str(e.value)


def test_kernel_addresses_and_empty_or_missing_files_are_refused(tmp_path):
    with pytest.raises(T.TraceFormatError, match=r":1: address 0xffff888000000000 is not a user"):
        list(T.read_chunks(io.StringIO(" L ffff888000000000,8\n")))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(T.TraceFormatError, match="empty"):
        list(T.read_chunks(empty))
    with pytest.raises(KaiserEduError, match="does not exist"):
        list(T.read_chunks(tmp_path / "nope.gz"))
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(GOOD.encode())[:40])
    with pytest.raises(T.TraceFormatError, match="cannot read"):
        list(T.read_chunks(broken))


def test_replay_counters_equal_running_the_kernel_directly():
    """Replaying = mapping the pages, running the accesses at CPL 3, and a real syscall
    round trip at each mark, on the kernel itself."""
    text = GOOD
    counts, stats = T.replay(io.StringIO(text), "pti-nopcid")
    assert stats.syscalls == 2 and stats.accesses == 5 and stats.instructions == 2
    m = W.Machine("pti-nopcid", max_ws_kib=4)
    (ch,) = list(T.read_chunks(io.StringIO(text)))
    from kaiser_edu.kernel.mm import PROT_EXEC, PROT_READ, PROT_WRITE, vm_page_prot

    for page in sorted(set((ch.addr >> np.uint64(12)).tolist())):
        m.task.mm.tables.map(page << 12, m.kernel.alloc.alloc(), b.PAGE_SIZE,
                             vm_page_prot(PROT_READ | PROT_WRITE | PROT_EXEC))
    total = {}
    prev = 0
    for p in [*ch.marks.tolist(), None]:
        end = len(ch) if p is None else p
        parts = [m.kernel.mmu.run(Trace.accesses(ch.addr[prev:end], ch.kind[prev:end], cpl=3),
                                  record=False).counters]
        if p is not None:
            parts.append(m.kernel.entry.syscall_batch(m.task, 1))
        for d in parts:
            total = {k: total.get(k, 0) + v for k, v in d.items()}
        prev = end
    assert counts.mmu == total
    assert counts.kernel_entries == 2 and counts.calls == 2


def test_injected_syscalls_every_n_accesses():
    lines = "".join(f" L {0x1000 + 8 * i:x},8\n" for i in range(100))
    counts, stats = T.replay(io.StringIO(lines), "pti", syscall_every=10)
    assert stats.syscalls == 10 and counts.mmu["cr3_writes"] == 20
    counts, stats = T.replay(io.StringIO(lines), "pti", syscall_every=10, limit=35)
    assert stats.accesses == 35 and stats.syscalls == 3


def test_shipped_traces_are_real_lackey_traces_within_the_size_limit():
    for name in ("wordfreq.lackey.gz", "python.lackey.gz"):
        path = TRACES / name
        assert path.stat().st_size <= 5 * 2**20, name
        ch = next(T.read_chunks(path))
        assert len(ch) > 0.9 * T.CHUNK and ch.instructions > 0
    assert (TRACES / "make_traces.sh").is_file() and (TRACES / "wordfreq.c").is_file()


def test_replaying_a_shipped_trace_costs_more_under_isolation():
    report, stats = T.replay_report(TRACES / "wordfreq.lackey.gz", "pti-nopcid", limit=300_000)
    assert stats.syscalls > 10 and stats.pages > 50
    assert report.overhead > 0


def test_a_fresh_trace_made_with_valgrind(tmp_path):
    """Make a new trace of a real program with the installed valgrind and replay it."""
    if shutil.which("valgrind") is None:
        message = "valgrind is not installed (apt-get install valgrind): no fresh trace"
        if os.environ.get("CI") == "true":  # CI must really run it (.ci/run installs it)
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path / "true.lackey"
    subprocess.run(["valgrind", "--tool=lackey", "--trace-mem=yes", "--trace-syscalls=yes",
                    f"--log-file={out}", "/bin/true"], check=True, timeout=120,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    counts, stats = T.replay(out, "pti")
    assert stats.accesses > 10_000 and stats.syscalls > 5 and stats.pages > 10
    assert counts.mmu["page_faults"] == 0 and counts.mmu["cr3_writes"] == 2 * stats.syscalls


def test_files_are_read_in_blocks_with_the_same_result(tmp_path, monkeypatch):
    """A file is read in blocks of bytes, whatever the block boundaries (here 7 bytes, so
    lines are cut everywhere), CRLF or a missing last newline: the same as a text stream."""
    text = GOOD + "".join(f" L {0x1000 + 8 * i:x},8\n" for i in range(50)) + "I  4001e60,2"
    want = list(T.read_chunks(io.StringIO(text), chunk=16))
    monkeypatch.setattr(T, "READ_BYTES", 7)
    for name, data in (("unix.lackey", text), ("dos.lackey", text.replace("\n", "\r\n"))):
        path = tmp_path / name
        path.write_bytes(data.encode())
        got = list(T.read_chunks(path, chunk=16))
        assert [(c.first_line, c.kind.tolist(), c.addr.tolist(), c.marks.tolist())
                for c in got] == [(c.first_line, c.kind.tolist(), c.addr.tolist(),
                                   c.marks.tolist()) for c in want], name
