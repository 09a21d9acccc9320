"""The self-check quiz of lesson 07 (Entry and exit under PTI): ``quiz("07")`` shows it.

Each option carries its own feedback; the quiz shuffles the options (seeded by the
prompt), so the order here, right answer first, is not what the student sees.
"""

from kaiser_edu.widgets.quizzes import Option, Question

QUESTIONS = [
    Question(
        "entry_SYSCALL_64 writes the user RSP to cpu_tss_rw.sp2 before SWITCH_TO_KERNEL_CR3. "
        "What must therefore be true of the TSS page?",
        [Option("It must be mapped in the user page tables", True,
                "Right: the write happens on the user CR3, so PTI maps that page into the "
                "user tables (pti_clone_user_shared()). Without it the entry would fault."),
         Option("It must be global", False,
                "Global only saves TLB misses; a page the user tables do not map cannot be "
                "reached on the user CR3, global or not."),
         Option("It must be mapped only in the kernel page tables", False,
                "Then the write, made before the CR3 switch, would fault."),
         Option("Nothing: the CPU switches CR3 on SYSCALL", False,
                "SYSCALL changes CPL, RIP and the flags, never CR3: that is the entry "
                "code's job.")]),
    Question(
        "With PTI and PCIDs, the kernel CR3 of a process is 0x4010002. What does "
        "SWITCH_TO_USER_CR3 write when no flush is pending?",
        [Option("0x8000000004011802", True,
                "Right: bit 12 (user PGD), bit 11 (user PCID 2 | 2048 = 2050) and bit 63 "
                "(NOFLUSH)."),
         Option("0x4011002", False,
                "That flips only the PGD half: the user half would then run on the kernel "
                "PCID, and without NOFLUSH the write would flush it."),
         Option("0x4010802", False,
                "Bit 11 selects the user PCID, but bit 12 must also be set, or the CPU keeps "
                "walking the kernel PGD."),
         Option("0x8000000004010002", False,
                "That is the kernel CR3 with NOFLUSH: the user would run on the kernel "
                "tables and fault on the NX bit of its first instruction.")]),
    Question(
        "The kernel unmaps 64 pages of the running process (PTI, PCIDs). When are the "
        "process's *user*-PCID TLB entries flushed?",
        [Option("At the next exit to user space, by SWITCH_TO_USER_CR3", True,
                "Right: invalidate_user_asid() sets a bit in user_pcid_flush_mask and "
                "SWITCH_TO_USER_CR3 writes CR3 without NOFLUSH when it sees it."),
         Option("Immediately, by flush_tlb_mm_range()", False,
                "It flushes the kernel PCID immediately (a CR3 rewrite); the user PCID is "
                "only marked, and flushed on the way out."),
         Option("Never: the user PCID is only used in user mode", False,
                "User mode could then use stale translations of the unmapped pages."),
         Option("At the next context switch", False,
                "The process may return to user mode long before that; the flush must "
                "happen before any user instruction runs.")]),
    Question(
        "An NMI arrives while the CPU runs entry_SYSCALL_64, after SYSCALL but before "
        "SWITCH_TO_KERNEL_CR3. Why does the NMI entry use SAVE_AND_SWITCH_TO_KERNEL_CR3?",
        [Option("CPL is already 0 but CR3 is still the user CR3: only CR3 bit 12 tells "
                "which tables are loaded", True,
                "Right: the paranoid macro tests bit 12, switches only if it is set, and "
                "RESTORE_CR3 later puts back exactly what it saved."),
         Option("Because NMIs always come from user mode", False,
                "They can arrive anywhere, in kernel code too; that is the problem."),
         Option("To flush the TLB before the handler runs", False,
                "Kernel entries never flush with PCIDs; the macro saves and switches CR3."),
         Option("Because the NMI stack is in user memory", False,
                "The NMI's IST stack is in the cpu_entry_area, a kernel mapping cloned into "
                "the user tables.")]),
    Question(
        "A kernel developer forgets SWITCH_TO_USER_CR3 on one exit path. What goes wrong "
        "first?",
        [Option("The first user instruction faults with error code 0x15 (NX)", True,
                "Right: pti_set_user_pgtbl() put NX on the kernel copy of every user PGD "
                "entry, so user code cannot run on the kernel CR3."),
         Option("Nothing visible, but Meltdown works again", False,
                "That is what PTI's NX trick prevents: the mistake crashes the task at once."),
         Option("A triple fault", False,
                "That is the missing entry text. The exit here works; the user instruction "
                "after it faults."),
         Option("A TLB flush on every system call", False,
                "CR3 is written less, not more, on that path.")]),
]
