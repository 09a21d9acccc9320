"""Quiz of lesson 05, Meltdown."""

from kaiser_edu.widgets.quizzes import Option, Question

QUESTIONS = [
    Question(
        "A user program loads a byte from a kernel address on a Meltdown-affected CPU. "
        "When can the value reach the instructions after the load?",
        [Option("When the page tables on the current CR3 translate the address (P=1 at "
                "every level) and only U/S=0 forbids the access", True,
                "Right: Meltdown bypasses the permission check, not the translation. The "
                "fault is a protection fault, error code 0x5."),
         Option("Whenever the address is a kernel address", False,
                "Not if the walk stops at a not-present entry: then there is no physical "
                "address and nothing to forward (error code 0x4)."),
         Option("Only when the kernel is running at the same time", False,
                "The kernel does not need to run: the data is read through the user's own "
                "page tables while the program runs."),
         Option("Only on AMD processors", False,
                "It is the other way round: Linux marks Intel CPUs before RDCL_NO with "
                "X86_BUG_CPU_MELTDOWN; AMD's are not affected.")]),
    Question(
        "Why does the probe array use one 4096-byte page per byte value, probe[value * 4096]?",
        [Option("So that each value has its own cache line in its own page, which the "
                "prefetchers do not bring in together with a neighbour", True,
                "Right: the prefetchers stay within a 4 KiB page, so a hit on a line can "
                "only come from the transient access to it."),
         Option("Because a cache line is 4096 bytes", False,
                "A cache line is 64 bytes; the stride is a page, far more than a line."),
         Option("Because the kernel can only map whole pages for user space", False,
                "The array is ordinary user memory; the stride is the attacker's choice."),
         Option("So that the TLB can hold all 256 pages", False,
                "The TLB is not what the receiver measures: it times data-cache reloads.")]),
    Question(
        "The receiver sees line 0 fast in most attempts, and line 0x4b fast in a few. "
        "Which byte does Meltdown's decoder report?",
        [Option("0x4b: line 0 lights whenever the load loses the race (the register reads "
                "0), so it is ignored", True,
                "Right: the zero bias. libkdump ignores line 0 and reports 0 only when no "
                "other line ever lights."),
         Option("0x00, because it won the most rounds", False,
                "A transient load that forwards nothing leaves 0 in the register, so line 0 "
                "says nothing about the secret."),
         Option("Neither: the rounds disagree, so the byte cannot be read", False,
                "Retries exist for exactly this: count the nonzero lines over all rounds."),
         Option("0x4b only if it also won the first round", False,
                "The order of the rounds does not matter; the votes over all of them do.")]),
    Question(
        "Under KAISER or PTI, the same attack reads nothing from the kernel's secret. Why?",
        [Option("The user page tables have no translation for it: the walk on the user CR3 "
                "ends at a not-present entry (#PF error code 0x4)", True,
                "Right: with no physical address there is no value to forward, on any CPU."),
         Option("PTI flushes the cache on every system call", False,
                "PTI writes CR3 on entry and exit; it does not flush the data cache."),
         Option("PTI clears the U/S bit of the kernel's pages", False,
                "Kernel pages never had U/S=1: U/S alone was the barrier Meltdown crossed."),
         Option("PTI turns off out-of-order execution in user mode", False,
                "Nothing changes in the CPU; only the page tables user code runs on change.")]),
    Question(
        "Under PTI, which kernel memory can Meltdown still read on an affected CPU?",
        [Option("What the user page tables still map: the cpu_entry_area and the entry "
                "text", True,
                "Right: those must be mapped to enter the kernel. They hold no secrets, but "
                "their contents can reveal where the kernel is (KASLR)."),
         Option("Nothing at all", False,
                "The entry path's pages stay mapped on the user CR3, so a transient load of "
                "them is a protection fault, and forwards."),
         Option("All of physical memory through the direct map", False,
                "The direct map is not in the user PGD under PTI: its walk stops at the PGD."),
         Option("The kernel stack of the current task", False,
                "Under Linux PTI the task stacks are not in the user tables (the 2017 KAISER "
                "patch mapped them; merged PTI uses the entry stack in the cpu_entry_area).")]),
]
