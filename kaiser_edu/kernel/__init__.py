"""The simulated Linux kernel: layout, address spaces, KAISER and PTI, entry and exit.

- :mod:`~kaiser_edu.kernel.layout`: the x86-64 virtual memory map, KASLR
- :mod:`~kaiser_edu.kernel.image`: the kernel image (entry text, per-CPU data, a secret)
- :mod:`~kaiser_edu.kernel.versions`: which Linux (4.15 ... mainline, 6.1 by default): the
  PTI behaviours that changed, each with its commit
- :mod:`~kaiser_edu.kernel.cpu`: CPU models and the pti=on/off/auto decision
- :mod:`~kaiser_edu.kernel.timing`: the cycle cost of each micro-event, per CPU model
- :mod:`~kaiser_edu.kernel.mm`: mm_struct, VMAs, page tables with the set_pgd hook
- :mod:`~kaiser_edu.kernel.isolation`: off, KAISER (2017: Graz or Hansen) and Linux PTI
- :mod:`~kaiser_edu.kernel.tlbstate`: ASIDs, PCIDs, the deferred user flush (tlb.c)
- :mod:`~kaiser_edu.kernel.entry`: syscalls, interrupts, NMIs, context switches via the MMU
- :mod:`~kaiser_edu.kernel.walkthrough`: one transition single-stepped and recorded (lesson 07)
- :mod:`~kaiser_edu.kernel.ldt`: modify_ldt() and PTI's per-process LDT remap
- :mod:`~kaiser_edu.kernel.vsyscall`: the legacy vsyscall page (vsyscall=xonly/emulate/none)
- :mod:`~kaiser_edu.kernel.machine`: :class:`Kernel`, one booted machine
- :mod:`~kaiser_edu.kernel.events`, :mod:`~kaiser_edu.kernel.timeline`: the event log
- :mod:`~kaiser_edu.kernel.audit`: what user mode can see, and the isolation invariants

Built only on :mod:`kaiser_edu.hw`.
"""

from kaiser_edu.kernel.machine import Kernel, Task, TaskKilled
from kaiser_edu.kernel.versions import DEFAULT_LINUX, LINUX_VERSIONS

__all__ = ["DEFAULT_LINUX", "LINUX_VERSIONS", "Kernel", "Task", "TaskKilled"]
