"""The self-check quiz of lesson 00 (Tour and set-up check): ``quiz("00")`` shows it.

Each option carries its own feedback; the quiz shuffles the options (seeded by the
prompt), so the order here, right answer first, is not what the student sees.
"""

from kaiser_edu.widgets.quizzes import Option, Question

QUESTIONS = [
    Question(
        "What does Meltdown need from the kernel address it wants to read?",
        [Option("A translation in the page tables the program runs on (present, but "
                "supervisor-only)", True,
                "Right: Meltdown skips the permission check, not the translation. With PTI "
                "the user-mode page tables simply do not map the kernel's data."),
         Option("A page marked user-accessible (U/S=1)", False,
                "A user-accessible page can be read without any attack. Meltdown reads pages "
                "whose U/S bit says supervisor-only."),
         Option("KASLR turned off", False,
                "KASLR only hides where the kernel is; Meltdown can even be used to find it. "
                "It needs the data to be mapped."),
         Option("An address that is not canonical", False,
                "A non-canonical address translates to nothing (lesson 01): there is no "
                "data behind it to leak.")]),
    Question(
        "Your machine reports 'Mitigation: PTI', and its flags include pti but not pcid. "
        "What does isolation cost it?",
        [Option("Nothing measurable: the mitigation is done in hardware", False,
                "PTI is done by the kernel in software; the flag only says Linux turned it on."),
         Option("A lot for system-call-heavy programs: every switch of page tables also "
                "empties the TLB", True,
                "Right. Without PCIDs each CR3 write flushes the TLB, and user code must "
                "refill it after every system call (Hansen: an lseek() loop 58% slower)."),
         Option("Only extra memory: a second top-level page table per process", False,
                "The 4 KiB per process are the cheap part; the CR3 switches and TLB refills "
                "cost time on every kernel entry.")]),
    Question(
        "How do you get a score for a whole lab notebook?",
        [Option("Run kaiser-edu check on the notebook, in a terminal", True,
                "Right: it runs the notebook in a fresh kernel, leaves your file unchanged, "
                "and prints every exercise's result and the score."),
         Option("Compare your notebook with solutions/lab01_addresses.ipynb by eye", False,
                "The solutions are worth reading after you tried, but the checks are what "
                "compare your functions with the simulator on a hundred inputs."),
         Option("Run kaiser-edu doctor", False,
                "doctor checks the environment and the host CPU, not your answers.")]),
]
