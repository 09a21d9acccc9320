"""Lesson 08 quiz: what isolation costs."""

from kaiser_edu.widgets.quizzes import Option, Question

QUESTIONS = [
    Question(
        "Without PCIDs, what makes a PTI system call expensive beyond the two CR3 writes?",
        [Option("The TLB refills: each CR3 write flushed every non-global entry, so the "
                "kernel's and then the program's pages are walked again", True,
                "Right: the walks after the flush are counted by the simulated MMU, and they "
                "are what grows with the working set."),
         Option("The SYSCALL instruction becomes slower under PTI", False,
                "SYSCALL/SYSRET cost the same in every mode; the table prices them once."),
         Option("The kernel copies the user's page tables on every entry", False,
                "Only the PGD entries are duplicated, once, when they are written "
                "(pti_set_user_pgtbl); entry just flips bit 12 of CR3."),
         Option("Page faults on every system call", False,
                "The working set is populated: there are no faults in the steady state.")]),
    Question(
        "Why does PTI with PCIDs cost almost nothing extra for a big working set?",
        [Option("Kernel entry writes CR3 with NOFLUSH, and the user PCID's entries survive "
                "until the exit, which uses NOFLUSH too unless a flush was deferred", True,
                "Right: only the CR3 writes themselves remain."),
         Option("PCIDs make the TLB larger", False,
                "The TLB has the same entries; they are tagged so two address spaces can share it."),
         Option("With PCIDs, the kernel and user share one PGD again", False,
                "The PGD pair stays: the user PGD still maps almost nothing of the kernel."),
         Option("PCIDs make every page global", False,
                "Under PTI kernel pages are non-global; PCIDs are the opposite of global.")]),
    Question(
        "Hansen measured 5.2 M lseeks/s without KAISER and 3.0 M/s with KAISER+PCID. How many "
        "extra cycles per call is that on a 4 GHz core?",
        [Option("About 560 cycles (4e9/3.0e6 - 4e9/5.2e6)", True,
                "Right: 1,333 - 769 cycles. The model splits it into two CR3 writes of ~300 "
                "cycles, which is what the fit found."),
         Option("About 2.2 cycles", False, "That is the difference of the rates in millions."),
         Option("About 42 cycles", False, "42% is the drop in the rate, not cycles."),
         Option("About 5,600 cycles", False, "Check the powers of ten: 4e9/3e6 is 1,333.")]),
    Question(
        "Past a working set of about 6 MiB the model's overhead without PCID falls again. Why?",
        [Option("The STLB holds 1,536 x 4 KiB = 6 MiB: beyond it off misses too, so a flush "
                "destroys less that would have been reused", True,
                "Right. Gregg saw the cost keep growing past 10 MB: walks that miss the caches "
                "and paging-structure caches, which the model does not price (a known miss)."),
         Option("Huge pages are used automatically for big working sets", False,
                "Only when the widget's '2 MiB pages' box is ticked."),
         Option("The kernel stops flushing for big processes", False,
                "Every CR3 write without PCID flushes, whatever the process."),
         Option("Because the syscall rate drops", False,
                "The rate is the same for every working set in the sweep.")]),
    Question(
        "Seven processes take turns on one CPU under PTI with PCIDs. What happens at each "
        "context switch that did not happen with six?",
        [Option("The incoming process finds no ASID of its own among the 6 dynamic ones, takes "
                "the oldest slot, and its kernel and user PCIDs are flushed", True,
                "Right: TLB_NR_DYN_ASIDS = 6 in arch/x86/mm/tlb.c; round-robin over seven "
                "evicts one slot per switch."),
         Option("Nothing: PCIDs are 12 bits, so 4096 processes fit", False,
                "Linux uses only 6 per CPU (plus the user bit), as a small cache."),
         Option("The kernel turns PTI off for the seventh process", False,
                "PTI is a boot-time decision for the whole system."),
         Option("Every switch becomes a triple fault", False,
                "Flushes cost cycles; they do not fault.")]),
]
