"""Property tests of the simulated kernel: random sequences of spawn, fork, execve, mmap,
munmap, mprotect, brk, user loads and stores, system calls, interrupts, NMIs and context
switches (tests/kernel_helpers.py, Driver) in every isolation mode.

- the isolation invariants of arch/x86/mm/pti.c hold for every live address space after
  every step, and no TLB entry the CPU can use outlives the PTE it was made from
  (arch/x86/mm/tlb.c: flush_tlb_mm_range(), switch_mm_irqs_off(), the deferred user flush);
- what user space sees follows Linux's semantics (mm/mmap.c, mm/mprotect.c,
  arch/x86/mm/fault.c): a load returns the last value the process stored there, and a task
  dies exactly when it touches an address it has no right to;
- page table isolation is invisible to user space: the same operations give the same
  results in every mode.

Example counts come from the hypothesis profile of tests/conftest.py.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from kernel_helpers import MODES, Driver, boot, isolation_violations, op_lists, stale_tlb_entries


def check_invariants(driver: Driver, step: int) -> None:
    k = driver.k
    for p in driver.procs if k.isolation.pgd_pair else ():
        # Global bits live in the kernel half, which every PGD shares: check them once.
        bad = isolation_violations(k, p.task.mm, check_global=p.task is k.current)
        assert not bad, f"step {step}: pid {p.task.pid}: " + "\n".join(map(str, bad))
    stale = stale_tlb_entries(k)
    assert not stale, f"step {step}: stale TLB entries {stale}"
    current = k.current
    if current is not None and current.alive and k.isolation.pgd_pair:
        assert k.cr3 & b_user_pgd, f"step {step}: user code of pid {current.pid} on kernel CR3"


b_user_pgd = 1 << 12  # PTI_USER_PGTABLE_MASK


@pytest.mark.property
@pytest.mark.parametrize("mode", MODES)
@given(ops=op_lists())
def test_isolation_and_tlb_invariants_hold_after_every_step(mode, ops):
    """pti.c/__pti_set_user_pgtbl() and the boot-time clones keep every user PGD mapping
    only the allowed kernel ranges, with NX on the kernel copy of user entries and shared
    lower levels; tlb.c keeps the TLB coherent with the page tables (no entry usable under
    the current PCID without a PTE behind it); user code always runs on the user PGD."""
    driver = Driver(boot(mode))
    for step, op in enumerate(ops):
        driver.run(op)
        check_invariants(driver, step)


# Regressions: operation lists that once broke the semantics (kernel_helpers.Driver
# resolves the small integers: process 0 is the running one, region 0 the first address
# stored to, region 63 the heap).
PROT_NONE_ROUND_TRIP = [("store", 0, 1, 0, 0, 7), ("mprotect", 0, 0, 0, 1, 0),
                        ("mprotect", 0, 0, 0, 1, 2), ("load", 0, 0, 0, 0)]
BRK_AFTER_MUNMAP_OF_THE_TOP = [("brk", 0, 4), ("munmap", 0, 63, 3, 1), ("brk", 0, 1)]


@pytest.mark.property
@pytest.mark.parametrize("mode", MODES)
@given(ops=op_lists())
@example(ops=PROT_NONE_ROUND_TRIP)
@example(ops=BRK_AFTER_MUNMAP_OF_THE_TOP)
def test_user_memory_follows_linux_semantics(mode, ops):
    """Every load returns the last value the process stored at that address (zero for a
    fresh page, the parent's data after fork, nothing of the old program after execve); a
    task is killed (SIGSEGV) exactly when it reads, writes or executes where its VMAs do not
    allow it (do_user_addr_fault(), access_error()); mmap never hands out a used range;
    brk() moves the break as sys_brk() does; mprotect() never discards data."""
    driver = Driver(boot(mode), check_reference=True)
    for op in ops:
        driver.run(op)


@pytest.mark.property
@given(ops=op_lists())
def test_isolation_is_invisible_to_user_space(ops):
    """The same operations give user space the same results (values loaded, kills, mmap
    addresses, brk values) with isolation off, with KAISER, and with PTI with and without
    PCIDs: page table isolation changes what the kernel maps, never what user code sees."""
    seen = {}
    for mode in MODES:
        driver = Driver(boot(mode))
        for op in ops:
            driver.run(op)
        seen[mode] = driver.observations
    for mode, observations in seen.items():
        assert observations == seen["off"], f"{mode} differs from off"
