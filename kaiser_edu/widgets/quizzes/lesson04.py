"""The self-check quiz of lesson 04 (The user/kernel split): ``quiz("04")`` shows it.

Each option carries its own feedback; the quiz shuffles the options (seeded by the
prompt), so the order here, right answer first, is not what the student sees.
"""

from kaiser_edu.widgets.quizzes import Option, Question

QUESTIONS = [
    Question(
        "Without isolation, a user program reads a kernel address in .data and gets #PF with "
        "error code 0x5. What does bit 0 (P=1) tell you?",
        [Option("The page is present: the translation exists and only the rights refused the "
                "access", True,
                "Right: P=1 means a protection violation (SDM 4.7). The walk reached the leaf; "
                "the U/S check said no. Meltdown needs exactly this situation."),
         Option("The page was not present, and the kernel will bring it in", False,
                "That is P=0 (error code 0x4 for a user read). P=1 is a protection fault."),
         Option("The access was a write", False, "Writes set bit 1 (W): that would be 0x7."),
         Option("The access came from the kernel", False,
                "Bit 2 (U=1) says the opposite: the access was made at CPL 3.")]),
    Question(
        "Without page-table isolation, what stops user code from reading the direct map of "
        "all physical memory?",
        [Option("U/S=0 in an entry of every walk into the kernel half", True,
                "Right: a supervisor-mode address needs U/S=0 at just one level, and Linux "
                "leaves it clear in all kernel entries (_KERNPG_TABLE, PAGE_KERNEL)."),
         Option("CR4.SMAP", False,
                "SMAP restricts the kernel (CPL < 3) from touching user pages, not the other "
                "way round."),
         Option("A CR3 switch on every system call", False,
                "Without isolation CR3 never changes on entry or exit: the kernel runs on the "
                "process's page tables."),
         Option("The NX bit of the direct map", False,
                "NX only forbids instruction fetches; reads of NX pages are fine.")]),
    Question(
        "The kernel (CPL 0) executes mov (%rdi), %rax with a user pointer in %rdi, on a CPU "
        "with CR4.SMAP=1, outside any stac()/clac() window. What happens?",
        [Option("#PF with error code 0x1, and Linux treats it as a kernel bug", True,
                "Right: P=1 (the page is there), W=0, U=0 (a supervisor access). SMAP "
                "violations are oopses in arch/x86/mm/fault.c."),
         Option("The read succeeds: the kernel may read anything", False,
                "Only while SMAP is off, or with RFLAGS.AC=1 (after stac())."),
         Option("#PF with error code 0x5", False,
                "U=1 would mean a user-mode access; this one is made at CPL 0."),
         Option("#GP, because user addresses are non-canonical for the kernel", False,
                "User addresses are canonical; the same virtual address works at any CPL.")]),
    Question(
        "Why can user code not simply set RFLAGS.AC and then make the kernel read its memory "
        "without the stac() check?",
        [Option("SYSCALL clears AC on entry (MSR_SYSCALL_MASK), and the interrupt entries "
                "execute CLAC", True,
                "Right: syscall_init() puts X86_EFLAGS_AC in the mask, so the kernel always "
                "starts with AC=0 and only stac() opens a window."),
         Option("User code cannot change AC at all", False,
                "It can (POPF); at CPL 3 AC means alignment check. The kernel clears it on "
                "the way in."),
         Option("SMAP ignores AC", False,
                "SMAP is exactly what AC switches off for the kernel's explicit accesses."),
         Option("The CPU resets RFLAGS on every page fault", False,
                "No such rule; the entry code clears AC itself.")]),
    Question(
        "With isolation off, how many times does a system call round trip (SYSCALL ... "
        "SYSRET) write CR3?",
        [Option("Never", True,
                "Right: the kernel runs on the process's own PGD, which maps the kernel half "
                "too. The event log showed CR3 unchanged across every entry and exit."),
         Option("Twice: once in, once out", False,
                "That is page-table isolation (KAISER/PTI), lessons 06-07."),
         Option("Once, on the way in", False, "Nothing would switch it back."),
         Option("Only when the TLB is full", False, "CR3 writes are not TLB management.")]),
    Question(
        "Why does even an isolated kernel keep all of user space mapped in the page tables it "
        "runs on?",
        [Option("copy_from_user()/copy_to_user() dereference user pointers directly, under "
                "the current CR3", True,
                "Right: the hardware walk translates the user address to the process's own "
                "frame; the kernel needs no software lookup."),
         Option("User pages hold the kernel's stack", False,
                "Kernel stacks are kernel memory (vmalloc space)."),
         Option("The CPU cannot switch CR3 while in kernel mode", False,
                "It can: the entry code does exactly that under PTI."),
         Option("So that SMAP has something to protect", False,
                "SMAP guards against accidental accesses; the mapping is there because the "
                "kernel needs intended ones.")]),
]
