"""Lesson 07's transition stepper: the step-by-step record of a kernel entry and exit.

The record (kaiser_edu/kernel/walkthrough.py) single-steps a transition of the simulated
kernel through the MMU. It must be the same transition the kernel runs in one batch: the
same event log, CR3, TLB contents and counters; each logged event's TLB misses, flush and
CR3 values must be those of its steps. The PTI mechanisms (calling.h's CR3 macros, tlb.c's
deferred user-PCID flush) and the three classic bugs must show up step by step, and the
widget must only index into the steps.
"""

from __future__ import annotations

import pytest

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.kernel.machine import Kernel
from kaiser_edu.kernel.walkthrough import (
    BREAKAGES,
    KINDS,
    MODES,
    prepare,
    record,
    stepping,
    walkthrough,
)
from kaiser_edu.widgets import _view
from kaiser_edu.widgets import transition_stepper as ts
from kaiser_edu.widgets.transition_stepper import (
    TransitionStepper,
    render_html,
    render_text,
    transition_steps,
)

USER_PGD = 1 << 12
NX_FETCH_ERROR = b.X86_PF_PROT | b.X86_PF_USER | b.X86_PF_INSTR  # 0x15
CASES = [(mode, kind, breakage) for mode in MODES for kind in KINDS
         for breakage in ("none", "forget SWITCH_TO_USER_CR3", "skip the TLB flush")]


def _machine_state(k: Kernel) -> tuple:
    """CR3, counters, TLB, pending user flushes, live tasks. TLB entries without their LRU
    stamp: the batch MMU skips the stamp for a repeated hit on its set's most recently used
    way (mmu_kernels.run_trace), so stamps may differ while the LRU order is the same (the
    follow-up run in the test below checks that the two machines go on alike)."""
    entries = sorted(({k_: v for k_, v in e.items() if k_ != "last_use"}
                      for e in k.mmu.tlb_entries()),
                     key=lambda e: (e["level"], e["va"], str(e["pcid"])))
    return (k.cr3, k.mmu.counters, entries, k.tlbstate.user_pcid_flush_mask,
            [t.alive for t in k.tasks.values()])


# --- the record is the transition ----------------------------------------------------------
@pytest.mark.parametrize(("mode", "kind", "breakage"), CASES)
def test_stepped_run_equals_the_normal_run(mode, kind, breakage):
    """Stepping changes the granularity, nothing else: the same events (CR3 before/after,
    PCIDs, NOFLUSH, flushes, misses, faults), the same CR3, TLB and MMU counters."""
    stepped, normal = prepare(kind, mode, 0, breakage), prepare(kind, mode, 0, breakage)
    w = record(stepped.kernel, stepped.run, stepped.task)
    normal.run()
    assert stepped.kernel.events.to_records() == normal.kernel.events.to_records()
    assert _machine_state(stepped.kernel) == _machine_state(normal.kernel)
    assert w.steps and w.events
    for sc in (stepped, normal):  # and afterwards both machines go on alike
        k = sc.kernel
        if sc.task.alive and not k.entry.halted:
            k.entry.skip_switch_to_user_cr3 = k.skip_tlb_flush = False
            start = k.mmap(sc.task, 80 * 4096)
            for va in range(start, start + 80 * 4096, 4096):
                k.user_access(sc.task, va, "write")
            k.syscall(sc.task)
    assert stepped.kernel.events.to_records() == normal.kernel.events.to_records()
    assert _machine_state(stepped.kernel) == _machine_state(normal.kernel)


@pytest.mark.parametrize(("mode", "kind", "breakage"), CASES)
def test_each_event_is_the_sum_of_its_steps(mode, kind, breakage):
    """Every logged event's tlb_misses, flush and CR3 values come from its own steps."""
    w = walkthrough(kind, mode, 0, breakage)
    for event in w.events:
        steps = w.steps_of(event)
        assert steps, f"event {event.kind} has no steps"
        assert sum(s.miss for s in steps) == event.tlb_misses, event.summary()
        assert any(s.flushes for s in steps) == event.did_flush, event.summary()
        assert steps[0].cr3_before == event.cr3_before
        if event.fault is None:
            assert steps[-1].cr3_after == event.cr3_after
        else:
            assert steps[-1].fault == event.fault or event.kind.endswith("fault")
    numbers = [s.n for s in w.steps]
    assert numbers == list(range(1, len(w.steps) + 1))
    for before, after in zip(w.steps, w.steps[1:]):
        assert after.cr3_before == before.cr3_after  # nothing happens between steps


def test_steps_record_cr3_halves_pcids_and_noflush():
    """PTI with PCIDs (calling.h): entry clears bits 12 and 11 and sets NOFLUSH; the exit
    sets them again with NOFLUSH; the CPU ends on the CR3 it started on."""
    w = walkthrough("syscall", "pti")
    entry, leave = w.cr3_writes
    assert entry.label == "SWITCH_TO_KERNEL_CR3" and leave.label == "SWITCH_TO_USER_CR3"
    assert entry.cr3_before & USER_PGD and not entry.cr3_after & USER_PGD
    assert entry.cr3_after == entry.cr3_before & ~0x1800
    assert leave.cr3_after == w.cr3_start == w.kernel.cr3
    assert entry.noflush and leave.noflush
    assert entry.cr3(True)["pcid"] + 2048 == leave.cr3(True)["pcid"]
    # The first two operations run on the user CR3: the entry text and the TSS page.
    first, second = w.steps[:2]
    assert first.op == "fetch" and "entry_SYSCALL_64" in first.what and first.cr3_after & USER_PGD
    assert second.op == "write" and "sp2" in second.what
    assert all(s.ok for s in w.steps) and w.outcome == "ok"


def test_step_summary_names_noflush_once():
    """A CR3 write's line says NOFLUSH once (decode_cr3's text already ends in it) and marks
    a write without it as flushing; the note names the macro, not its _NOSTACK wrapper."""
    w = walkthrough("syscall", "pti")
    for s in w.cr3_writes:
        line = s.summary()
        assert line.count("NOFLUSH") == 1 and "flushing write" not in line, line
        assert "_NOSTACK" not in s.note
    assert w.cr3_writes[1].note.startswith("SWITCH_TO_USER_CR3 (calling.h)")
    for s in walkthrough("syscall", "pti-nopcid").cr3_writes:
        line = s.summary()
        assert "NOFLUSH" not in line and "flushing write (TLB lost" in line, line


@pytest.mark.parametrize("kind", ["NMI from user", "NMI from kernel"])
def test_nmi_cr3_writes(kind):
    """From user mode an NMI switches like any user entry (entry_64.S asm_exc_nmi); from
    kernel mode SAVE_AND_SWITCH_TO_KERNEL_CR3 writes nothing (bit 12 clear) and RESTORE_CR3
    writes the saved kernel CR3 back."""
    w = walkthrough(kind, "pti")
    labels = [s.label for s in w.cr3_writes]
    if kind == "NMI from user":
        assert labels == ["SWITCH_TO_KERNEL_CR3", "SWITCH_TO_USER_CR3"]
    else:  # the syscall it interrupted switched and will switch back
        assert labels == ["SWITCH_TO_KERNEL_CR3", "RESTORE_CR3", "SWITCH_TO_USER_CR3"]
        restore = w.cr3_writes[1]
        assert restore.cr3_before == restore.cr3_after  # the kernel CR3 it interrupted
    assert w.outcome == "ok"


def test_without_pcid_every_cr3_write_flushes_and_kernel_accesses_miss():
    """pti.rst: without PCIDs every CR3 write flushes the (non-global) TLB; with PCIDs the
    warm TLB serves every access of the same syscall."""
    nopcid, pcid = walkthrough("syscall", "pti-nopcid"), walkthrough("syscall", "pti")
    assert all(not s.noflush and s.tlb_lost for s in nopcid.cr3_writes)
    assert nopcid.misses > 0 and pcid.misses == 0
    assert all(s.noflush for s in pcid.cr3_writes)
    off = walkthrough("syscall", "off")
    assert off.cr3_writes == [] and off.misses == 0


# --- the deferred user-PCID flush --------------------------------------------------------
def test_deferred_user_flush_happens_at_switch_to_user_cr3():
    """tlb.c: flush_tlb_mm_range() of > 33 pages in the kernel -> flush_tlb_local():
    invalidate_user_asid() + a flushing CR3 write of the kernel PCID; the exit's
    SWITCH_TO_USER_CR3 then writes CR3 without NOFLUSH, flushing the user PCID."""
    w = walkthrough("munmap, then read", "pti")
    flush = next(s for s in w.steps if s.label == "TLB flush")
    assert flush.op == "mov_cr3" and not flush.noflush and not flush.cr3_after & USER_PGD
    leave = next(s for s in w.steps if s.label == "SWITCH_TO_USER_CR3")
    assert leave.n > flush.n and leave.noflush is False
    user_pcid = f"PCID {leave.cr3(True)['pcid']}"
    assert dict(leave.tlb_before).get(user_pcid, 0) > 0
    assert dict(leave.tlb_after).get(user_pcid, 0) == 0
    (exit_,) = [e for e in w.events if e.kind == "syscall_exit"]
    assert exit_.noflush is False and exit_.flushed == f"pcid {leave.cr3(True)['pcid']}"
    assert w.kernel.tlbstate.user_pcid_flush_mask == 0
    assert w.outcome == "killed" and "SIGSEGV" in w.detail  # the page is really gone


def test_syscall_with_a_no_op_handler_is_a_syscall():
    """EntryCode.syscall_with() makes the same operations and events as syscall()."""
    a, b_ = prepare("syscall", "pti"), prepare("syscall", "pti")
    a.kernel.entry.syscall(a.task)
    assert b_.kernel.entry.syscall_with(b_.task, lambda: None).ok
    assert a.kernel.events.to_records() == b_.kernel.events.to_records()
    assert _machine_state(a.kernel) == _machine_state(b_.kernel)


# --- break it yourself -----------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["pti", "pti-nopcid", "kaiser"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_missing_entry_text_double_then_triple_faults(mode, kind):
    """The first entry-text fetch on the user CR3 faults (0x10), the #PF handler cannot be
    fetched (double fault), nor the #DF handler (triple fault)."""
    w = walkthrough(kind, mode, breakage="entry text not in the user tables")
    faults = [s for s in w.steps if s.fault]
    assert [s.label for s in faults] == ["entry", "handler", "handler"]
    assert all(s.error_code == b.X86_PF_INSTR and s.cr3_after & USER_PGD for s in faults)
    assert "asm_exc_page_fault" in faults[1].what and "asm_exc_double_fault" in faults[2].what
    assert [e.kind for e in w.events][-2:] == ["double_fault", "triple_fault"]
    assert w.outcome == "triple fault" and w.steps[-1] is faults[-1]


@pytest.mark.parametrize("kind", ["syscall", "interrupt from user", "interrupt from kernel",
                                  "NMI from kernel", "munmap, then read"])
def test_forgotten_switch_to_user_cr3_is_an_nx_fault(kind):
    """pti_set_user_pgtbl() put NX on the kernel copy of the user PGD entries: the first
    user instruction on the kernel CR3 faults with error code 0x15 and the task dies."""
    w = walkthrough(kind, "pti", breakage="forget SWITCH_TO_USER_CR3")
    assert "SWITCH_TO_USER_CR3" not in [s.label for s in w.steps]
    fault = next(s for s in w.steps if s.fault)
    assert fault.label == "user" and fault.op == "fetch" and fault.cpl == 3
    assert fault.error_code == NX_FETCH_ERROR and not fault.cr3_after & USER_PGD
    assert "NX" in fault.note
    assert w.outcome == "killed" and "0x15" in w.detail


def test_nmi_from_user_dies_of_a_forgotten_switch_to_user_cr3():
    """It leaves through swapgs_restore_regs_and_return_to_usermode like an interrupt."""
    w = walkthrough("NMI from user", "pti", breakage="forget SWITCH_TO_USER_CR3")
    assert w.outcome == "killed" and "0x15" in w.kernel.tasks[1].exit_reason


@pytest.mark.parametrize("mode", ["pti", "off"])
def test_skipped_flush_reads_through_a_stale_tlb_entry(mode):
    """Without flush_tlb_mm_range() the unmapped page's translation survives (NOFLUSH
    exits with PCIDs; no CR3 write at all without isolation): the read hits the TLB and
    reaches the freed frame."""
    sc = prepare("munmap, then read", mode, 0, "skip the TLB flush")
    w = record(sc.kernel, sc.run, sc.task)
    read = w.steps[-1]
    assert read.label == "user" and read.op == "read" and read.ok and read.hit
    assert "unmapped" in read.what and "Stale" in read.note
    assert w.kernel.translate_user(sc.task, read.addr) is None  # the tables say: gone
    assert not any(s.op == "mov_cr3" and not s.noflush for s in w.steps)
    assert w.outcome == "ok"


@pytest.mark.parametrize("mode", ["pti-nopcid", "kaiser"])
def test_without_pcid_the_exit_hides_the_skipped_flush(mode):
    w = walkthrough("munmap, then read", mode, breakage="skip the TLB flush")
    assert w.outcome == "killed" and "SIGSEGV" in w.detail


def test_breakages_that_cannot_happen_say_why():
    assert walkthrough("syscall", "off", breakage="entry text not in the user tables").notes
    assert walkthrough("syscall", "off", breakage="forget SWITCH_TO_USER_CR3").notes
    assert walkthrough("syscall", "pti", breakage="skip the TLB flush").notes
    assert walkthrough("syscall", "pti").notes == []


# --- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "match"), [
    ({"kind": "sysenter"}, "unknown kind 'sysenter'; allowed: syscall"),
    ({"mode": "pti-off"}, "unknown mode 'pti-off'; allowed: pti"),
    ({"breakage": "everything"}, "unknown breakage"),
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"seed": "1"}, "seed must be an integer >= 0"),
])
def test_bad_arguments_are_named(args, match):
    with pytest.raises(KaiserEduError, match=match):
        walkthrough(**args)


@pytest.mark.parametrize("position", [-1, 23, 1.0, True])
def test_bad_position(position):
    w = walkthrough("syscall", "pti")
    assert len(w.steps) == 22
    for render in (render_text, render_html):
        with pytest.raises(KaiserEduError, match="position must be an integer from 0"):
            render(w, position)


def test_nested_stepping_is_refused():
    sc = prepare("syscall", "pti")
    with (stepping(sc.kernel), pytest.raises(KaiserEduError, match="already being stepped"),
          stepping(sc.kernel)):
        pass
    assert "run" not in vars(sc.kernel.mmu) and sc.kernel.entry.on_path is None


def test_widget_rejects_unknown_choices():
    with pytest.raises(KaiserEduError, match="unknown kind"):
        TransitionStepper(kind="sysenter")


# --- the model and the view -----------------------------------------------------------------
def test_transition_steps_is_deterministic():
    one = transition_steps("pti", "interrupt from user", seed=3)
    two = transition_steps("pti", "interrupt from user", seed=3)
    assert one == two
    assert transition_steps("pti", "interrupt from user", seed=4) != one  # KASLR moved


def test_render_shows_the_current_step():
    w = walkthrough("syscall", "pti")
    start = render_text(w, 0)
    assert "step 0 of 22" in start and "=>" not in start
    third = render_text(w, 3)
    assert "step 3 of 22: SWITCH_TO_KERNEL_CR3" in third
    assert "kernel PGD (bit 12 = 0), PCID 2" in third and "NOFLUSH = 1" in third
    end = render_text(w, 22)
    assert "=> ok" in end
    html = render_html(w, 3)
    assert "SWITCH_TO_KERNEL_CR3" in html and "PGD half (bit 12)" in html


def test_view_updates_on_clicks():
    view = TransitionStepper()
    start = view.text
    assert "step 0 of 22" in start and view.current is None
    view.step_button.click()
    assert view.position.value == 1 and "step 1 of 22: entry" in view.text
    view.step_button.click()
    view.step_button.click()
    assert view.current.label == "SWITCH_TO_KERNEL_CR3"
    view.back_button.click()
    assert view.position.value == 2 and "step 2 of 22" in view.text
    view.end_button.click()
    assert view.position.value == 22 and "=> ok" in view.text
    view.step_button.click()  # at the end: stays
    assert view.position.value == 22
    view.reset_button.click()
    assert view.text == start
    view.back_button.click()  # at the start: stays
    assert view.position.value == 0
    view.position.value = 5
    assert "step 5 of 22" in view.text and "<b>5</b> of 22" in view.html


def test_view_rebuilds_on_dropdowns():
    view = TransitionStepper()
    view.position.value = 4
    view.kind.value = "NMI from user"
    assert view.position.value == 0
    assert view.position.max == len(walkthrough("NMI from user", "pti").steps)
    assert view.text.startswith("NMI from user")
    view.mode.value = "pti-nopcid"
    assert "without PCIDs" in view.text
    view.breakage.value = "forget SWITCH_TO_USER_CR3"
    assert "return to user mode still on the kernel CR3" in view.text
    view.kind.value = "syscall"
    view.end_button.click()
    assert "NX fault on the first user instruction" in view.text
    assert "0x15" in view.html
    assert repr(view).startswith("TransitionStepper(kind='syscall'")


def test_view_shows_errors_instead_of_raising(monkeypatch):
    def broken(*_args):
        raise RuntimeError("simulated bug")

    view = TransitionStepper()
    monkeypatch.setattr(ts, "walkthrough", broken)
    view.kind.value = "NMI from kernel"
    assert view.record is None and "simulated bug" in view.text
    view.step_button.click()  # no steps: nothing happens, nothing raised
    view.end_button.click()
    assert "simulated bug" in view.text
    assert view.html == _view.error_html("RuntimeError: simulated bug")
    assert set(BREAKAGES) >= {view.breakage.value}
