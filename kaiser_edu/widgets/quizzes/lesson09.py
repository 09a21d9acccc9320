"""Quiz of lesson 09, KASLR and the side channels KAISER was built to close."""

from kaiser_edu.widgets.quizzes import Option, Question

QUESTIONS = [
    Question(
        "In the simulated layout the kernel image may start in any of 472 slots of 2 MiB. "
        "How much entropy does that give, and what does an attacker who learns the slot know?",
        [Option("About 9 bits; every kernel text address, since the image moves as a whole",
                True, "Right: log2(472) is 8.9, and one offset shifts every symbol alike."),
         Option("472 bits: one per slot", False,
                "Entropy counts the choices in bits: log2 of the number of positions."),
         Option("About 9 bits, but only the address of the entry code", False,
                "KASLR shifts the whole image by one offset: one symbol gives all."),
         Option("None: KASLR randomises only the direct map", False,
                "It randomises the image's slot too (arch/x86/boot/compressed/kaslr.c).")]),
    Question(
        "Why can a PREFETCH instruction probe kernel addresses from user mode at all?",
        [Option("It never faults and skips the privilege check, but it still translates the "
                "address, so its time shows whether a translation exists", True,
                "Right (Gruss et al., CCS 2016): a mapped slot ends as a TLB hit, an unmapped "
                "one walks to its not-present entry every time."),
         Option("Because user mode may read kernel memory with it", False,
                "A prefetch returns no data; only its timing leaks."),
         Option("Because it runs at CPL 0", False,
                "It runs at the program's CPL 3; it simply never raises a fault."),
         Option("It flushes the TLB, which the attacker times", False,
                "It fills the TLB with a translation that exists; it flushes nothing.")]),
    Question(
        "Under KAISER the prefetch and double-fault breaks report 'nothing found'. Why?",
        [Option("The kernel image has no translation in the shadow page tables the attacker "
                "runs on, so every slot walks to a not-present entry alike", True,
                "Right: KAISER's goal was that the hardware holds no kernel address "
                "information in user mode (Gruss et al., ESSoS 2017)."),
         Option("KAISER flushes the TLB after every prefetch", False,
                "It flushes on CR3 writes (no PCIDs in the Graz patch), not on prefetches."),
         Option("KAISER makes prefetch instructions fault", False,
                "Prefetches never fault; they just find nothing to translate."),
         Option("KAISER randomises each slot every second", False,
                "The layout is fixed after boot; the page tables are what changed.")]),
    Question(
        "EntryBleed breaks KASLR under Linux PTI. What does it exploit?",
        [Option("The entry text stays mapped, and global, in the user page tables: after a "
                "syscall its translation is in the TLB, and a prefetch of its slot is fast",
                True, "Right (CVE-2022-4543): the one kernel mapping PTI must keep gives the "
                "kernel's slot away."),
         Option("A bug in the CR3 switch that leaves the kernel PGD loaded", False,
                "The switch works; the entry text is mapped in the user PGD by design."),
         Option("Meltdown reading the kernel's secret", False,
                "No data is read: only translation timing."),
         Option("The direct map, which PTI keeps in the user tables", False,
                "The direct map is not in the user PGD; EntryBleed finds only the text.")]),
    Question(
        "A break scans 472 slots and none is faster than the threshold. What should it report?",
        [Option("Failure: no base found", True,
                "Right: the fastest of equally slow slots is noise, and a wrong base is worse "
                "than none for whoever builds on it."),
         Option("The fastest slot anyway", False,
                "Among slots that all walk to a not-present entry, the fastest is chance."),
         Option("The first slot", False, "That is a guess with a 1 in 472 chance."),
         Option("The default base 0xffffffff81000000", False,
                "KASLR is on: the default is one slot of 472, no better than any other.")]),
]
