"""Quiz of lesson 10, from KAISER to Linux PTI, and after."""

from kaiser_edu.widgets.quizzes import Option, Question

QUESTIONS = [
    Question(
        "What was the KAISER paper (Gruss et al., ESSoS 2017) designed to defend?",
        [Option("KASLR: timing attacks that find where the kernel is mapped", True,
                "Right: its title is 'KASLR is Dead: Long Live KASLR'. That it also stops "
                "Meltdown was found later, by the Meltdown authors."),
         Option("Meltdown, which it was written to stop", False,
                "Meltdown was not public yet; the Meltdown paper calls KAISER's effect on it "
                "inadvertent."),
         Option("Spectre variant 2 (branch target injection)", False,
                "Spectre mistrains branch predictors; page tables do not stop it."),
         Option("Rowhammer bit flips in page tables", False,
                "KAISER is about what the user page tables translate, not DRAM faults.")]),
    Question(
        "In the comparison, the Graz patch and Hansen's series both cost two CR3 writes per "
        "system call, yet the Graz patch's system call loop is much slower. Why?",
        [Option("The Graz patch uses no PCIDs, so every CR3 write flushes the TLB and the "
                "program's pages must be walked again after each call", True,
                "Right: the walks per call show it. Hansen's series added PCIDs, which PTI "
                "kept, with the user PCID's flush deferred to the exit."),
         Option("The Graz patch writes CR3 four times per call", False,
                "Look at the CR3 writes row: two in both."),
         Option("Hansen's series does not switch CR3 for system calls", False,
                "It does: both rows show two CR3 writes per call."),
         Option("The Graz patch maps the whole kernel into the shadow", False,
                "It maps about 60 KiB; the cost is in the TLB refills, not the mappings.")]),
    Question(
        "Why does a fork add kernel memory to the user page tables under the Graz patch but "
        "not under Hansen's series or PTI?",
        [Option("The Graz patch enters the kernel on the task's own stack, so each new "
                "kernel stack is mapped into the shadow with kaiser_add_mapping()", True,
                "Right. Hansen's series moved the entry to a trampoline stack, 'a big win "
                "in fork() speed', and PTI kept the per-CPU entry stack."),
         Option("PTI copies the whole kernel PGD at fork", False,
                "A fork copies the kernel half's top-level entries in every design; that "
                "adds no kernel memory to what user mode can reach."),
         Option("Hansen's series does not allocate a PGD pair", False,
                "Both KAISER variants and PTI allocate the 8 KiB pair."),
         Option("The Graz patch maps the child's user pages into the kernel", False,
                "User pages are mapped the same way in every design.")]),
    Question(
        "Under PTI user mode reaches about 2 MiB of kernel, under KAISER 2017 about 50 KiB. "
        "What does PTI's larger footprint give an attacker in the simulator?",
        [Option("The kernel text base: the entry text's whole 2 MiB PMD is cloned, so even "
                "the plain prefetch break finds _text; no secret is read", True,
                "Right: reach counts translations, and a 2 MiB clone of _text's slot is "
                "exactly what a KASLR break looks for. Meltdown still reads nothing secret."),
         Option("The kernel's secret, through Meltdown", False,
                "The secret's page has no translation in PTI's user tables: 'nothing'."),
         Option("Nothing: more mapped memory makes no difference", False,
                "Compare the prefetch rows: KAISER 'nothing', PTI 'text found'."),
         Option("Other processes' memory through the direct map", False,
                "The direct map is not in any user page table under isolation.")]),
    Question(
        "A kernel with pti=auto boots on a CPU that enumerates RDCL_NO. What happens?",
        [Option("PTI stays off: the CPU is not flagged X86_BUG_CPU_MELTDOWN, so auto means "
                "no isolation and no CR3 switches", True,
                "Right: pti_check_boottime_disable() enables PTI under auto only on an "
                "affected CPU (the simulator's icelake model)."),
         Option("PTI is on, as on every x86-64 CPU", False,
                "pti=auto asks the CPU's bug flags first."),
         Option("The kernel refuses to boot", False,
                "It boots without isolation; only pti=on would force it on."),
         Option("PTI is on but without PCIDs", False,
                "PCIDs are a separate CPU feature; RDCL_NO decides whether PTI runs at all.")]),
]
