"""kaiser_edu.kernel.events (the transition log, CR3 decoding as in arch/x86/entry/calling.h)
and kaiser_edu.kernel.timeline (its drawing)."""

from __future__ import annotations

import dataclasses
import io

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.kernel.events import (
    EVENT_KINDS,
    FIELDS,
    PTI_USER_PCID_MASK,
    PTI_USER_PGTABLE_MASK,
    X86_CR3_PCID_NOFLUSH,
    Event,
    EventLog,
    decode_cr3,
)
from kaiser_edu.kernel.machine import Kernel
from kaiser_edu.kernel.timeline import timeline_figure

PGD = 0x7FE000  # an 8 KiB-aligned PGD pair: kernel PGD here, user PGD at +0x1000
NF = X86_CR3_PCID_NOFLUSH


def kcr3(asid: int = 0, noflush: bool = True, pgd: int = PGD) -> int:
    """build_cr3(_noflush): kernel PGD, kPCID = ASID + 1."""
    return pgd | (asid + 1) | (NF if noflush else 0)


def ucr3(asid: int = 0, noflush: bool = True, pgd: int = PGD) -> int:
    """SWITCH_TO_USER_CR3: | bit 12 (user PGD) | bit 11 (user PCID)."""
    return kcr3(asid, noflush, pgd) | PTI_USER_PGTABLE_MASK | PTI_USER_PCID_MASK


def sample_log() -> EventLog:
    """getppid(), an interrupt with a context switch, and a missed switch to the user CR3."""
    log = EventLog()
    log.append("syscall_entry", cpl_before=3, cpl_after=0, cr3_before=ucr3(),
               cr3_after=kcr3(), noflush=True, tlb_misses=2, detail="getppid")
    log.append("syscall_exit", cpl_before=0, cpl_after=3, cr3_before=kcr3(),
               cr3_after=ucr3(), noflush=True)
    log.append("interrupt_entry", cpl_before=3, cpl_after=0, cr3_before=ucr3(),
               cr3_after=kcr3(), noflush=True)
    log.append("context_switch", cpl_before=0, cpl_after=0, cr3_before=kcr3(),
               cr3_after=kcr3(1, False, 0x900000), noflush=False, flushed="pcid 2",
               tlb_misses=40)
    log.append("interrupt_exit", cpl_before=0, cpl_after=3, cr3_before=kcr3(1, True, 0x900000),
               cr3_after=ucr3(1, False, 0x900000), noflush=False, flushed="pcid 2050",
               detail="deferred user flush (user_pcid_flush_mask)")
    log.append("syscall_entry", cpl_before=3, cpl_after=0, cr3_before=ucr3(1, pgd=0x900000),
               cr3_after=kcr3(1, pgd=0x900000), noflush=True)
    log.append("syscall_exit", cpl_before=0, cpl_after=3, cr3_before=kcr3(1, pgd=0x900000),
               cr3_after=kcr3(1, pgd=0x900000), detail="bug: no SWITCH_TO_USER_CR3")
    log.append("page_fault", cpl_before=3, cpl_after=0, cr3_before=kcr3(1, pgd=0x900000),
               cr3_after=kcr3(1, pgd=0x900000), fault="#PF 0x15: NX on the kernel copy")
    return log


# --- decode_cr3 ---------------------------------------------------------------------------
def test_decode_user_cr3_with_noflush():
    d = decode_cr3(0x8000000000001801 | PGD)
    assert d["pgd_pa"] == PGD | 0x1000 and d["pair_pa"] == PGD
    assert d["half"] == "user"
    assert d["pcid"] == 0x801 == 2049 and d["user_pcid"] and d["asid"] == 0
    assert d["noflush"] is True
    assert d["text"] == "user PGD of pair 0x7fe000, PCID 2049 (user PCID of ASID 0), NOFLUSH"


def test_decode_kernel_cr3():
    d = decode_cr3(PGD | 6)
    assert (d["pgd_pa"], d["half"], d["pcid"], d["user_pcid"], d["asid"], d["noflush"]) == (
        PGD, "kernel", 6, False, 5, False)
    assert decode_cr3(PGD)["asid"] is None  # PCID 0: PCID-unaware code (tlb.c)
    assert decode_cr3(ucr3(3)) == {**decode_cr3(ucr3(3)), "pcid": 4 | 2048, "asid": 3}


def test_decode_without_pcid():
    d = decode_cr3(PGD | 0x1000, pcide=False)
    assert d["pcid"] is None and d["asid"] is None and not d["user_pcid"]
    assert d["half"] == "user" and "PCID" not in d["text"]


@pytest.mark.parametrize("bad", [-1, 1 << 64, "0x1000", 1.5, True])
def test_decode_rejects_non_cr3_values(bad):
    with pytest.raises(KaiserEduError, match="cr3"):
        decode_cr3(bad)


# --- Event ----------------------------------------------------------------------------------
def test_event_is_frozen_and_derives_views():
    e = Event(0, "syscall_exit", 0, 3, kcr3(), ucr3(), 1, 2049, True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.kind = "x"  # type: ignore[misc]
    assert (e.mode_before, e.mode_after) == ("kernel", "user")
    assert (e.pgd_half_before, e.pgd_half_after) == ("kernel", "user")
    assert e.cr3_changed and not e.did_flush and not e.is_fault and not e.mismatched
    assert e.summary() == "#0 syscall_exit  CPL 0->3  CR3 kernel->user PGD  PCID 1->2049  NOFLUSH"
    assert set(e.to_record()) == set(FIELDS)


def test_missed_switch_is_flagged():
    e = Event(0, "syscall_exit", 0, 3, kcr3(), kcr3())
    assert e.mismatched and not e.cr3_changed


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("kind", "Syscall Entry", "kind must be"), ("cpl_after", 4, "cpl_after"),
     ("cr3_before", -1, "cr3_before"), ("pcid_after", 4096, "pcid_after"),
     ("noflush", "yes", "noflush"), ("flushed", "", "flushed"), ("tlb_misses", -3, "tlb_misses"),
     ("fault", 14, "fault"), ("seq", -1, "seq")],
)
def test_event_rejects_bad_fields(field, value, match):
    kw = {"seq": 0, "kind": "syscall_entry", "cpl_before": 3, "cpl_after": 0,
          "cr3_before": ucr3(), "cr3_after": kcr3()}
    kw[field] = value
    with pytest.raises(KaiserEduError, match=match):
        Event(**kw)


# --- EventLog -------------------------------------------------------------------------------
def test_log_numbers_events_and_reads_pcids_from_cr3():
    log = sample_log()
    assert len(log) == 8 and [e.seq for e in log] == list(range(8))
    assert log[0].pcid_before == 2049 and log[0].pcid_after == 1
    assert log[4].pcid_after == 2050 and log.last is log[7]
    assert all(e.kind in EVENT_KINDS for e in log)
    assert log.counts() == {"syscall_entry": 2, "syscall_exit": 2, "interrupt_entry": 1,
                            "context_switch": 1, "interrupt_exit": 1, "page_fault": 1}


def test_log_without_pcid_leaves_pcids_empty():
    log = EventLog()
    e = log.append("syscall_entry", pcide=False, cpl_before=3, cpl_after=0,
                   cr3_before=PGD | 0x1000, cr3_after=PGD)
    assert e.pcid_before is None and e.pcid_after is None


def test_appending_an_event_renumbers_it_and_clear_restarts():
    log = sample_log()
    e = log.append(Event(99, "nmi_entry", 0, 0, kcr3(), kcr3()))
    assert e.seq == 8 and log[8] is e
    log.clear()
    assert len(log) == 0 and not log and log.last is None
    assert log.append(e).seq == 0
    copy = EventLog(sample_log())
    assert [x.seq for x in copy] == list(range(8))


def test_append_explains_mistakes():
    log = EventLog()
    with pytest.raises(KaiserEduError, match="needs cr3_before, cr3_after"):
        log.append("syscall_entry", cpl_before=3, cpl_after=0)
    with pytest.raises(KaiserEduError, match="unknown event field"):
        log.append("syscall_entry", cpl_before=3, cpl_after=0, cr3_before=0, cr3_after=0, pcd=1)
    with pytest.raises(KaiserEduError, match="seq is assigned"):
        log.append("syscall_entry", seq=4, cpl_before=3, cpl_after=0, cr3_before=0, cr3_after=0)
    with pytest.raises(KaiserEduError, match="no other fields"):
        log.append(Event(0, "nmi_entry", 0, 0, 0, 0), detail="x")
    assert len(log) == 0


def test_filter_by_kind_faults_and_flushes():
    log = sample_log()
    assert [e.seq for e in log.filter("syscall_exit")] == [1, 6]
    assert [e.seq for e in log.filter(["syscall_entry", "nmi_entry"])] == [0, 5]
    assert [e.seq for e in log.filter(faults=True)] == [7]
    assert [e.seq for e in log.filter(flushes=True)] == [3, 4]
    assert [e.seq for e in log.filter("interrupt_exit", flushes=True)] == [4]
    assert log.filter("tlb_flush") == []


def test_to_records_and_table():
    log = sample_log()
    records = log.to_records()
    assert len(records) == 8 and records[3]["flushed"] == "pcid 2"
    assert records[0]["cr3_before"] == ucr3() and list(records[0]) == list(FIELDS)
    text = log.table()
    lines = text.splitlines()
    assert len(lines) == 2 + 8 and lines[0].split()[:2] == ["seq", "kind"]
    assert "U/2049" in lines[2] and "K/1" in lines[2] and "getppid" in lines[2]
    assert " FL " in lines[5] and "pcid 2" in lines[5]
    assert "FAULT #PF 0x15" in lines[-1]
    assert len(log.table(last=2).splitlines()) == 4
    assert "(no events)" in EventLog().table()
    assert repr(log) == "EventLog(8 events)"


def test_table_columns_fit_the_longest_kind():
    """The kind column is wide enough for "context_switch_exit" (which the kernel logs when
    it returns to a newly switched-to task) and for any longer kind a caller logs: every
    later column starts at the same place in every line."""
    log = EventLog()
    for kind in ("syscall_entry", "context_switch_exit"):
        log.append(kind, cpl_before=0, cpl_after=3, cr3_before=kcr3(), cr3_after=ucr3(),
                   noflush=True)
    lines = log.table().splitlines()
    assert {line.index("->") - 1 for line in lines[2:]} == {lines[0].index("CPL")}
    log.append("a_kind_longer_than_any_the_kernel_logs", cpl_before=0, cpl_after=0,
               cr3_before=kcr3(), cr3_after=kcr3())
    lines = log.table().splitlines()
    assert len({line.index("->") for line in lines[2:]}) == 1
    assert lines[2].index("->") - 1 == lines[0].index("CPL")


# --- timeline -------------------------------------------------------------------------------
def collection(fig: Figure, gid: str):
    (c,) = [c for c in fig.axes[0].collections if c.get_gid() == gid]
    return c


def render(fig: Figure) -> bytes:
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf, metadata={"Software": None})
    return buf.getvalue()


def test_timeline_draws_one_marker_per_event_flush_and_fault():
    log = sample_log()
    fig = timeline_figure(log, title="getppid, interrupt, missed CR3 switch")
    assert isinstance(fig, Figure)
    assert len(collection(fig, "events").get_offsets()) == 8
    assert len(collection(fig, "flushes").get_offsets()) == 2
    faults = collection(fig, "faults").get_offsets()
    assert len(faults) == 1 and tuple(faults[0]) == (7.0, 0.0)
    assert len(collection(fig, "transitions").get_segments()) == 7  # all but context_switch
    assert len(collection(fig, "cpu_path").get_segments()) == 9
    assert fig.axes[0].get_title() == "getppid, interrupt, missed CR3 switch"
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[0] == "0 syscall entry" and labels[-1] == "7 page fault"
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"U/2049", "K/1", "pcid 2", "pcid 2050"} <= texts
    assert render(fig)[:8] == b"\x89PNG\r\n\x1a\n"


def test_timeline_colours_a_user_lane_stretch_on_the_kernel_pgd():
    """After the missed switch (event 6) the CPU is in the user lane with the kernel PGD."""
    fig = timeline_figure(sample_log())
    path = collection(fig, "cpu_path")
    seg = path.get_segments()[7]  # after event 6 (index 0 is the lead-in)
    assert tuple(seg[0]) == (6.0, 1.0)
    from matplotlib.colors import to_rgba

    from kaiser_edu.kernel.timeline import KERNEL_PGD_COLOR
    assert tuple(path.get_colors()[7]) == to_rgba(KERNEL_PGD_COLOR)


def test_fault_kinds_count_as_faults_without_a_fault_string():
    log = EventLog()
    log.append("double_fault", cpl_before=0, cpl_after=0, cr3_before=kcr3(), cr3_after=kcr3())
    log.append("tlb_flush", cpl_before=0, cpl_after=0, cr3_before=kcr3(), cr3_after=kcr3(),
               flushed="all non-global")
    fig = timeline_figure(log)
    assert len(collection(fig, "faults").get_offsets()) == 1
    assert len(collection(fig, "flushes").get_offsets()) == 1
    assert "double fault" in {t.get_text() for t in fig.axes[0].texts}


def test_timeline_is_deterministic_and_handles_edge_cases():
    assert render(timeline_figure(sample_log())) == render(timeline_figure(sample_log()))
    empty = timeline_figure([], title="nothing yet")
    assert len(empty.axes[0].collections) == 0 and "no events" in empty.axes[0].texts[0].get_text()
    render(empty)
    many = EventLog()
    for i in range(40):
        kind, before, after = (("syscall_entry", 3, 0) if i % 2 == 0 else ("syscall_exit", 0, 3))
        many.append(kind, cpl_before=before, cpl_after=after,
                    cr3_before=ucr3() if before == 3 else kcr3(),
                    cr3_after=ucr3() if after == 3 else kcr3())
    fig = timeline_figure(many, annotate=False)
    assert len(collection(fig, "events").get_offsets()) == 40
    assert fig.get_figwidth() <= 18
    render(fig)
    subset = timeline_figure(sample_log().filter("syscall_entry"))
    assert [tuple(p) for p in collection(subset, "events").get_offsets()] == [(0, 0), (5, 0)]


def test_without_a_pgd_pair_bit_12_is_an_address_bit_not_a_half():
    """With isolation off an order-0 PGD may sit at an odd frame: CR3 bit 12 is then part of
    its address, not Linux's PTI_USER_PGTABLE_MASK. The log must not call it the user PGD
    (found when a forked child's PGD at 0x4043000 was drawn as 'U')."""
    k = Kernel(isolation="off", seed=0)
    odd = next(t for t in (k.spawn(f"p{i}") for i in range(4)) if t.mm.pgd & (1 << 12))
    assert k.switch_to(odd).ok
    k.syscall(odd)
    events = [e for e in k.events if e.cr3_after & (1 << 12)]
    assert events
    for e in events:
        assert not e.pgd_pair and e.pgd_half_after == "kernel" and not e.mismatched
    assert "U/" not in k.events.table() and " U " not in k.events.table()
