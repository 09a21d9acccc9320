"""How isolation goes wrong: the classic bugs, reproduced the way real kernels failed.

pti.rst ("Testing") lists the crash signatures: "crash at first interrupt / first exit to
user", "double faults (touching non-PTI-mapped data in entry code)", "early user segfaults
(TLB invalidation bugs)". The simulated entry code runs its own fetches and stack accesses
through the MMU under the current CR3, so each bug below fails like that on its own.
"""

from __future__ import annotations

import pytest
from kernel_helpers import DATA, PAGE, boot, events_of, running

from kaiser_edu.hw import bits as b
from kaiser_edu.kernel import audit
from kaiser_edu.kernel.entry import MachineReset
from kaiser_edu.kernel.isolation import Kaiser2017, LinuxPTI
from kaiser_edu.kernel.machine import Kernel, TaskKilled

NX_FETCH_ERROR = b.X86_PF_PROT | b.X86_PF_USER | b.X86_PF_INSTR  # 0x15
FORGOT_ENTRY_TEXT = {
    "pti": lambda: LinuxPTI(clone_entry_text=False),
    "kaiser": lambda: Kaiser2017(map_entry_text=False),
}


# --- (a) the entry text is not in the user page tables ------------------------------------
@pytest.mark.parametrize("mode", FORGOT_ENTRY_TEXT)
def test_missing_entry_text_double_then_triple_faults(mode):
    """Without pti_clone_entry_text() (or KAISER's kaiser_add_mapping() of
    __entry_text_start..end) the user CR3 does not map the code the CPU jumps to on the
    first kernel entry (here the #PF of the first user instruction): fetching
    asm_exc_page_fault faults, that #PF cannot be delivered either (double fault), the
    #DF handler is entry text too (triple fault), and the CPU shuts down."""
    k = Kernel(isolation=FORGOT_ENTRY_TEXT[mode](), seed=0)
    task = k.spawn("victim")
    entry = k.image.symbol("entry_SYSCALL_64")
    assert audit.translate(k.mem, task.mm.user_pgd, entry) is None
    assert audit.translate(k.mem, task.mm.pgd, entry) is not None
    out = k.switch_to(task)
    assert out.status == "triple fault"
    kinds = [e.kind for e in k.events]
    assert kinds[-2:] == ["double_fault", "triple_fault"]
    double, triple = k.events[-2:]
    pf, df = k.image.symbol("asm_exc_page_fault"), k.image.symbol("asm_exc_double_fault")
    assert double.fault.startswith(f"fetch {pf:#x}: #PF error code 0x10")  # kernel fetch, P=0
    assert triple.fault.startswith(f"fetch {df:#x}: #PF error code 0x10")
    assert double.cr3_after & 1 << 12 and triple.cr3_after & 1 << 12  # still the user CR3


@pytest.mark.parametrize("mode", FORGOT_ENTRY_TEXT)
def test_after_a_triple_fault_the_machine_is_halted(mode):
    """A triple fault resets the machine: nothing runs any more."""
    k = Kernel(isolation=FORGOT_ENTRY_TEXT[mode](), seed=0)
    task = k.spawn("victim")
    other = k.spawn("other")
    assert k.switch_to(task).status == "triple fault"
    for call in (lambda: k.syscall(task), lambda: k.interrupt(task), lambda: k.nmi(task),
                 lambda: k.user_load(task, DATA), lambda: k.user_store(task, DATA, 1),
                 lambda: k.switch_to(other)):
        with pytest.raises(MachineReset, match="triple fault"):
            call()


@pytest.mark.parametrize("mode", ["pti", "kaiser"])
def test_with_the_entry_text_the_same_start_works(mode):
    """The control experiment: the same boot with the entry text in the user tables."""
    k = boot(mode)
    task = k.spawn("fine")
    assert k.switch_to(task).ok
    assert [e.kind for e in k.events if "fault" in e.kind] == ["page_fault"]


# --- (b) a missed SWITCH_TO_USER_CR3 -------------------------------------------------------
# Returns to user space through SWITCH_TO_USER_CR3 (an NMI from user mode leaves like an
# interrupt; one that hit the kernel returns through the syscall exit).
RETURNS = {
    "syscall": lambda k, t: k.syscall(t),
    "interrupt": lambda k, t: k.interrupt(t),
    "interrupt in a syscall": lambda k, t: k.interrupt(t, from_kernel=True),
    "nmi": lambda k, t: k.nmi(t),
    "nmi in a syscall": lambda k, t: k.nmi(t, from_kernel=True),
}


@pytest.mark.parametrize("mode", ["pti", "kaiser"])
@pytest.mark.parametrize("transition", RETURNS)
def test_missed_switch_to_user_cr3_kills_on_the_first_user_instruction(mode, transition):
    """pti.c __pti_set_user_pgtbl(): NX on the kernel copy of every user PGD entry, so
    "any missed kernel->user CR3 switch will immediately crash userspace upon executing its
    first instruction" (pti.rst): the fetch at the user RIP faults with error code 0x15
    (present, user, instruction fetch) and the task dies instead of running with the
    kernel's page tables, which map all of kernel memory."""
    k, task = running(mode)
    k.entry.skip_switch_to_user_cr3 = True
    since = len(k.events)
    out = RETURNS[transition](k, task)
    assert out.status == "killed"
    # The Graz KAISER patch (the kaiser default) cleared _PAGE_USER instead of setting NX:
    # the same error code, a U/S violation rather than an NX one.
    assert not task.alive and ("U/S" if mode == "kaiser" else "NX") in task.exit_reason
    assert f"{NX_FETCH_ERROR:#x}" in task.exit_reason
    (exit_,) = events_of(k, since, transition.split()[0] + "_exit")
    assert exit_.fault.startswith(f"fetch {task.user_rip:#x}: #PF error code 0x15")
    assert not k.cr3 & 1 << 12  # the kernel PGD was still loaded


def test_missed_switch_to_user_cr3_on_a_new_process_also_dies_on_nx():
    """A new process's first instruction is not mapped yet: Linux handles that demand fault
    (the fault handler does not care which CR3 is loaded), returns - again without the
    switch - and the retried fetch meets the NX bit: SIGSEGV with error code 0x15, like any
    other missed switch. It is not killed for a not-present fault (0x14)."""
    k = boot("pti")
    task = k.spawn("new")
    k.entry.skip_switch_to_user_cr3 = True
    assert k.switch_to(task).status == "killed"
    assert f"{NX_FETCH_ERROR:#x}" in task.exit_reason, task.exit_reason


@pytest.mark.parametrize("transition", RETURNS)
def test_without_isolation_there_is_no_switch_to_miss(transition):
    """With isolation off there is one PGD: the CR3 macros are patched out, so the same
    knob changes nothing and user code keeps running."""
    k, task = running("off")
    k.entry.skip_switch_to_user_cr3 = True
    assert RETURNS[transition](k, task).ok
    k.user_store(task, DATA, 3)
    assert k.user_load(task, DATA) == 3 and task.alive


# --- (c) a forgotten TLB flush --------------------------------------------------------------
def reuse_freed_frame(mode: str, skip_flush: bool):
    """munmap a touched page (optionally without the flush), mmap another page, fill it:
    the allocator hands out the frame just freed. Returns (kernel, task, old va, value)."""
    k, task = running(mode)
    old = k.mmap(task, PAGE)
    k.user_store(task, old, 0x01D)
    frame = k.translate_user(task, old)
    k.skip_tlb_flush = skip_flush
    k.munmap(task, old, PAGE)
    k.skip_tlb_flush = False
    new = k.mmap(task, PAGE, addr=old - 16 * PAGE)
    k.user_store(task, new, 0x5EC2E7)  # another file's data, a password...
    assert k.translate_user(task, new) == frame
    return k, task, old


@pytest.mark.parametrize("mode", ["pti", "off"])
def test_skipped_flush_lets_a_stale_tlb_entry_read_the_new_page(mode):
    """flush_tlb_mm_range() after zap_page_range() is what stops a freed frame from staying
    reachable: without it the old translation survives in the TLB (PCID: kernel entries and
    exits write CR3 with NOFLUSH, and without PTI they do not write it at all), the frame is
    reused for the new mapping, and the unmapped address reads the new page's data."""
    k, task, old = reuse_freed_frame(mode, skip_flush=True)
    assert k.tlbstate.pcid
    assert k.translate_user(task, old) is None  # the page tables are right...
    assert k.user_load(task, old) == 0x5EC2E7  # ...the TLB is not
    assert task.alive


@pytest.mark.parametrize("mode", ["pti", "off", "kaiser", "pti-nopcid"])
def test_with_the_flush_the_unmapped_address_is_sigsegv(mode):
    """The same steps with flush_tlb_mm_range(): the access faults and the task gets
    SIGSEGV."""
    k, task, old = reuse_freed_frame(mode, skip_flush=False)
    with pytest.raises(TaskKilled, match="SIGSEGV"):
        k.user_load(task, old)


@pytest.mark.parametrize("mode", ["kaiser", "pti-nopcid"])
def test_without_pcid_the_next_kernel_entry_hides_the_missing_flush(mode):
    """Without PCIDs every CR3 write flushes all non-global entries (pti.rst), and touching
    the new page is a page fault: a kernel entry and exit, two CR3 writes. The stale entry
    is gone before the task can use it, so KAISER as in the Graz patch (no PCID) masks this bug that
    PCIDs expose."""
    k, task, old = reuse_freed_frame(mode, skip_flush=True)
    assert not k.tlbstate.pcid
    assert not any(e["va"] == old for e in k.mmu.tlb_entries())
    with pytest.raises(TaskKilled, match="SIGSEGV"):
        k.user_load(task, old)
