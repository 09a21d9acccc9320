"""The self-check quiz of lesson 03 (TLB and PCID): ``quiz("03")`` shows it.

Each option carries its own feedback; the quiz shuffles the options (seeded by the
prompt), so the order here, right answer first, is not what the student sees.
"""

from kaiser_edu.widgets.quizzes import Option, Question

QUESTIONS = [
    Question(
        "A 64-entry, 4-way TLB caches the translation of page 0x12345. Which set can hold it?",
        [Option("Set 5: 0x12345 % 16", True,
                "Right: 64 entries / 4 ways = 16 sets, and the set is the page number modulo "
                "the number of sets."),
         Option("Set 0x45: 0x12345 % 64", False,
                "64 is the number of entries; there are 64 / 4 = 16 sets."),
         Option("Set 1: 0x12345 % 4", False,
                "4 is the number of ways per set; the set index is taken modulo the number of "
                "sets, 16."),
         Option("Any set with a free way", False,
                "That would be a fully associative TLB. Here page 0x12345 can only go in set "
                "0x12345 % 16.")]),
    Question(
        "CR4.PCIDE=1 and the current PCID is 3. The kernel executes MOV to CR3 with PCID 5 in "
        "bits 11:0 and bit 63 clear. Which TLB entries are invalidated?",
        [Option("The non-global entries of PCID 5", True,
                "Right: without NOFLUSH the write invalidates the new PCID's non-global "
                "entries (SDM 4.10.4.1). PCID 3's entries stay for when it comes back."),
         Option("The non-global entries of PCID 3", False,
                "The PCID being left keeps its entries: that is the point of PCIDs. The write "
                "flushes the PCID it switches to."),
         Option("Every non-global entry", False,
                "That is what a MOV to CR3 does with PCIDE=0."),
         Option("Nothing", False,
                "That needs bit 63 (NOFLUSH) set.")]),
    Question(
        "Which of these removes the global TLB entry of one kernel page?",
        [Option("INVLPG with an address in that page", True,
                "Right: INVLPG invalidates the page's entries of the current PCID and its "
                "global entries."),
         Option("INVPCID type 0 (individual address)", False,
                "Type 0 invalidates one page of one PCID, except global entries."),
         Option("MOV to CR3 with CR4.PCIDE=0", False,
                "No MOV to CR3 invalidates global entries."),
         Option("INVPCID type 3 (all contexts, except globals)", False,
                "As its name says, type 3 keeps global entries.")]),
    Question(
        "The kernel rewrites a present PTE to point to another frame and forgets to "
        "invalidate the TLB. The process then reads that page. What happens?",
        [Option("It may read the old frame, through the stale TLB entry", True,
                "Right: a TLB hit never looks at the page tables. Only an invalidation (or "
                "an eviction) makes the CPU walk again."),
         Option("A page fault, because the PTE changed", False,
                "The CPU does not notice page-table changes; nothing faults."),
         Option("The CPU notices the write to the page table and updates its TLB", False,
                "The TLB is not coherent with the page tables (SDM 4.10.4): software must "
                "invalidate."),
         Option("A #GP", False, "Nothing about the access is illegal.")]),
    Question(
        "Why is page-table isolation much more expensive on a CPU without PCIDs?",
        [Option("Every kernel entry and exit writes CR3, and without PCIDs each write flushes "
                "all non-global entries", True,
                "Right: the kernel and the program both refill the TLB after every system "
                "call. With PCIDs and NOFLUSH both sets of entries stay cached."),
         Option("Without PCIDs the CPU cannot write CR3 at all", False,
                "MOV to CR3 works with or without PCIDs; the question is what it flushes."),
         Option("Without PCIDs global pages are flushed on every CR3 write", False,
                "Global entries survive every MOV to CR3; PTI's problem is that most kernel "
                "mappings are no longer global, and the user's never were."),
         Option("The CPU has no TLB without PCIDs", False,
                "PCIDs only tag TLB entries; the TLB is there either way.")]),
]
