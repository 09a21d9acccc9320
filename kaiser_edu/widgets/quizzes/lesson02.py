"""The self-check quiz of lesson 02 (The page walk): ``quiz("02")`` shows it.

Each option carries its own feedback; the quiz shuffles the options (seeded by the
prompt), so the order here, right answer first, is not what the student sees.
"""

from kaiser_edu.widgets.quizzes import Option, Question

QUESTIONS = [
    Question("A PTE has U/S=1, but the PDE above it has U/S=0. May code at CPL 3 read the page?", [
        Option("Yes: the PTE is the entry that maps the page, so it decides", False,
               "No: every level restricts the region below it. U/S is ANDed over all entries."),
        Option("No: U/S must be 1 in every entry of the path", True,
               "Right: U/S=0 anywhere makes the page a supervisor-mode page (SDM 4.6.1)."),
        Option("Only while CR4.SMAP=0", False,
               "SMAP restricts the kernel's access to user pages, not user code."),
    ]),
    Question("XD=1 in a PDPTE, XD=0 in the PDE and PTE below it, EFER.NXE=1. "
             "Can instructions on that page run?", [
        Option("No: XD is ORed over the levels", True,
               "Right: one XD anywhere on the path forbids instruction fetches."),
        Option("Yes: the PTE says XD=0", False,
               "XD, unlike U/S and R/W, takes effect if any level sets it: it is ORed."),
        Option("Only at CPL 0", False, "XD applies to every privilege level."),
    ]),
    Question("Where does the walk for an address in a 2 MiB page end, and how many low bits "
             "of the address are the offset?", [
        Option("At the PDE, which has PS=1; 21 bits", True,
               "Right: three entries are read and bits 20:0 are the offset."),
        Option("At the PTE; 12 bits", False, "That is a 4 KiB page: PS=0 in the PDE."),
        Option("At the PDPTE; 30 bits", False, "That is a 1 GiB page: PS=1 in the PDPTE."),
    ]),
    Question("A user-mode (CPL 3) write to a present, read-only page faults. Which error "
             "code does the CPU push?", [
        Option("0x7", True, "Right: P=1 (present: protection), W=1 (a write), U=1 (CPL 3)."),
        Option("0x6", False, "P=0 would mean a not-present entry; this page is present."),
        Option("0x3", False, "U=1: the access came from CPL 3."),
        Option("0x5", False, "W=1: the access was a write."),
    ]),
    Question("The kernel (CPL 0) reads a user page with CR4.SMAP=1 and RFLAGS.AC=0. "
             "What happens?", [
        Option("#PF with error code 0x1", True,
               "Right: a protection violation (P=1) on a read (W=0) at CPL 0 (U=0)."),
        Option("The read succeeds: the kernel may read everything", False,
               "Not with SMAP on: the kernel must set AC (STAC) first."),
        Option("#PF with error code 0x5", False, "U=1 would mean CPL 3; this is the kernel."),
        Option("#GP", False, "#GP is for non-canonical addresses; this one is canonical."),
    ]),
    Question("Which of these addresses raises #GP instead of a page fault (4-level paging)?", [
        Option("0x0000800000000000", True,
               "Right: bit 47 is 1 but bits 63:48 are 0, so it is not canonical."),
        Option("0xffff800000000000", False, "Canonical: the first address of the kernel half."),
        Option("0x00007fffffffffff", False, "Canonical: the last address of the user half."),
    ]),
    Question("In this simulator, when is the D (dirty) bit set?", [
        Option("On an allowed write, in the entry that maps the page", True,
               "Right: in the PTE, or the PDE/PDPTE of a huge page; table pointers have no D."),
        Option("On every access, in every entry of the path", False,
               "That is the A bit (and even A is set in the leaf only if the access is allowed)."),
        Option("On a write, even if it faults", False,
               "A faulting write leaves the leaf untouched (walk.py rule 7)."),
    ]),
]
