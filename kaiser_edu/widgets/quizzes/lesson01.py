"""The self-check quiz of lesson 01 (Virtual addresses): ``quiz("01")`` shows it.

Each option carries its own feedback; the quiz shuffles the options (seeded by the
prompt), so the order here, right answer first, is not what the student sees.
"""

from kaiser_edu.widgets.quizzes import Option, Question

QUESTIONS = [
    Question(
        "What is the PML4 (PGD) index of 0xffff888000000000, the start of the direct map?",
        [Option("273", True,
                "Right: bits 47:39 are 1_0001_0001 = 273, in the kernel's slots 256-511."),
         Option("136", False,
                "That is 0x88 read as the index. The index is bits 47:39: "
                "0x888000000000 >> 39 = 273."),
         Option("511", False,
                "Slot 511 is the last 512 GiB, where the kernel image and modules live."),
         Option("None: the address is not canonical", False,
                "Bits 63:48 are all 1 and so is bit 47: it is canonical.")]),
    Question(
        "With 4-level paging a program reads from 0x0000800000000000. What happens?",
        [Option("A #GP(0), before any page table is read", True,
                "Right: bit 47 is 1 but bits 63:48 are 0, so the address is not canonical "
                "and the CPU never starts the walk (SDM 3.3.7.1)."),
         Option("A #PF with CR2 = 0x0000800000000000", False,
                "A page fault needs a canonical address whose walk fails. This one fails "
                "the canonical check first, which raises #GP and leaves CR2 alone."),
         Option("The CPU ignores bits 63:48 and reads the byte at 0x800000000000", False,
                "x86-64 never ignores the high bits: that is the point of the canonical "
                "rule."),
         Option("It reads user memory: the address is below the kernel half", False,
                "It is between the halves, in the non-canonical hole. With 5-level paging "
                "it would be ordinary user memory.")]),
    Question(
        "Why is every table index exactly 9 bits wide?",
        [Option("A table is one 4 KiB page of 8-byte entries: 4096 / 8 = 512 = 2^9 entries",
                True, "Right, and the 12-bit offset is the 4 KiB page itself."),
         Option("Because 9 x 4 + 12 = 48 is the width of a register", False,
                "Registers are 64 bits; 48 is the result of the 9-bit indices, not the "
                "cause."),
         Option("Because 512 GiB is the largest page size", False,
                "The largest page is 1 GiB (a PDPT entry with PS=1); the 9 bits come from "
                "the size of a table.")]),
    Question(
        "Which of these moves when Linux boots with KASLR?",
        [Option("The base of the direct map (page_offset_base)", True,
                "Right: with CONFIG_RANDOMIZE_MEMORY the direct map, vmalloc and vmemmap "
                "bases move in 1 GiB steps; the kernel image moves in 2 MiB steps."),
         Option("The cpu_entry_area", False,
                "It stays at 0xfffffe0000000000, which is why PTI can clone it once at boot."),
         Option("The boundary between the user and the kernel half", False,
                "That boundary is architectural: the canonical rule fixes it at bit 47 "
                "(56 with LA57)."),
         Option("The vsyscall page", False,
                "Its address, 0xffffffffff600000, is fixed ABI: old programs call it "
                "directly.")]),
]
