"""The self-check quiz of lesson 06 (KAISER: the shadow PGD): ``quiz("06")`` shows it.

Each option carries its own feedback; the quiz shuffles the options (seeded by the
prompt), so the order here, right answer first, is not what the student sees.
"""

from kaiser_edu.widgets.quizzes import Option, Question

QUESTIONS = [
    Question(
        "Under PTI a process's kernel PGD is at physical address 0x4010000. Where is its user "
        "PGD?",
        [Option("0x4011000: the same 8 KiB block, bit 12 set", True,
                "Right: the pair is one order-1, 8 KiB-aligned allocation; kernel_to_user_pgdp() "
                "sets bit 12 (PAGE_SHIFT)."),
         Option("0x4010800: bit 11 set", False,
                "Bit 11 of CR3 selects the user PCID, not the table. The user PGD is a whole "
                "4 KiB page, so it cannot start in the middle of the kernel PGD's page."),
         Option("Wherever the allocator put it; mm_struct stores a pointer", False,
                "The entry code has no free register or stack to look a pointer up; the fixed "
                "layout lets it switch with one AND or OR on CR3."),
         Option("At the same address: the user PGD is the kernel PGD with U/S cleared", False,
                "That would still translate every kernel address, which is exactly what "
                "Meltdown needs. The user PGD is a second table.")]),
    Question(
        "A page fault maps a new user page in a PGD slot that was empty. Which writes does the "
        "kernel make to the user PGD's tree?",
        [Option("One: the PGD entry, copied by __pti_set_user_pgtbl()", True,
                "Right: the PDPT, PD and PT are allocated once and linked under the kernel PGD's "
                "entry; the user PGD shares them because its entry points to the same PDPT."),
         Option("Four: the PGD, PDPT, PD and PT entries, once per copy", False,
                "Only the top level is duplicated. Copying lower levels would mean two PTEs "
                "and two sets of A/D bits."),
         Option("None: the user PGD is rebuilt at the next return to user mode", False,
                "Nothing rebuilds it; the set_pgd hook keeps it in sync as each entry is "
                "written."),
         Option("None: user mappings live only in the user PGD", False,
                "User mappings are made in the kernel PGD as always; the kernel needs them for "
                "copy_to_user() and friends.")]),
    Question(
        "Why does the kernel copy of a user PGD entry carry NX?",
        [Option("So that user code returning on the kernel CR3 faults on its first "
                "instruction instead of running with the kernel mapped", True,
                "Right (pti.c, pti.rst). It also keeps the kernel from executing user memory, "
                "like SMEP, on CPUs that lack it."),
         Option("So that user code cannot execute its own text", False,
                "User code runs on the user PGD, whose copy of the entry has no NX."),
         Option("So that Meltdown cannot read user memory", False,
                "NX concerns instruction fetches, not loads; and user memory is the user's "
                "own."),
         Option("Because the CPU requires NX on entries that are present in two PGDs", False,
                "The CPU knows nothing of the pair; it is a software convention.")]),
    Question(
        "User code writes to a page, so the CPU sets the dirty bit, walking from the user PGD. "
        "How does the kernel learn that the page is dirty?",
        [Option("It reads the one shared PTE, which the write marked dirty", True,
                "Right: below the PGD both copies reach the same PTE, so there is a single set "
                "of accessed and dirty bits."),
         Option("It merges the D bits of the two copies of the PTE", False,
                "There are no two copies of the PTE: only the PGD entry is duplicated."),
         Option("It must switch to the user CR3 and read the PTE from there", False,
                "The same PTE is reachable from the kernel PGD; no switch is needed."),
         Option("It cannot: dirty tracking does not work under PTI", False,
                "It works unchanged, precisely because the lower levels are shared.")]),
    Question(
        "What does Linux PTI do when a new process is forked, compared with the Graz KAISER "
        "patch (May 2017)?",
        [Option("Nothing extra for the kernel half: the cpu_entry_area and the other clones "
                "were made once at boot; the Graz KAISER patch mapped the new task's kernel "
                "stack into the shadow", True,
                "Right: the user PGD's kernel half is copied from init_mm's, and the entry code "
                "uses the per-CPU entry stack instead of the task stack."),
         Option("It calls kaiser_add_mapping() for the new task's kernel stack", False,
                "That was the Graz KAISER patch. Linux PTI dropped kaiser_add_mapping()."),
         Option("It clones the whole kernel PGD into the new user PGD", False,
                "Then user mode could reach all of the kernel again."),
         Option("It maps the new process's direct-map pages into its user PGD", False,
                "The direct map is never in the user PGD: it would expose all of physical "
                "memory.")]),
]
