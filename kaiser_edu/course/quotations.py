"""Every passage the lessons put in quotation marks, with where it comes from.

The course's rule: a quotation is verbatim from its cited source, or it is not in quotation
marks. Keeping them in one table lets a test hold the lessons to it
(tests/test_quotations.py): every double-quoted passage in the Markdown of the lessons listed
here must be (part of) a registered quotation, and where the course's reference material
(``pti-facts.md`` of the shared reference folder) carries an excerpt of the source, the
quotation must appear there verbatim (whitespace may differ: sources wrap lines).

``checked`` says what each quotation was compared with when it was registered: a Linux file
at a torvalds/linux commit, a mail on a list archive, or a mirror of a web page. Quotations
are case- and punctuation-exact; ellipses are not used inside them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Lessons whose Markdown the test checks against this table.
LESSONS = ("04", "06", "07", "10")


@dataclass(frozen=True)
class Quotation:
    """One quoted passage: ``text`` as the lesson prints it, the ``source`` it cites, the
    ``lessons`` that use it, ``checked`` (what it was compared with) and, if the reference
    material holds an excerpt of the source, ``excerpt_in`` (its file name)."""

    text: str
    source: str
    lessons: tuple[str, ...]
    checked: str
    excerpt_in: str | None = None


PTI_C = "arch/x86/mm/pti.c"
PTI_RST = "Documentation/arch/x86/pti.rst (Documentation/x86/pti.rst before 6.4)"
TORVALDS_PTI_C = "torvalds/linux arch/x86/mm/pti.c at 02c7d5b8e0d1"
TORVALDS_PTI_RST = "torvalds/linux Documentation/arch/x86/pti.rst at 00c1d298d486"
HANSEN_CORE = ("Dave Hansen, [PATCH 08/30] x86, kaiser: unmap kernel from userspace page "
               "tables (core patch), linux-mm, 10 Nov 2017")

QUOTATIONS: tuple[Quotation, ...] = (
    # --- lesson 04 ---------------------------------------------------------------------------
    Quotation("guard hole, also reserved for hypervisor",
              "Documentation/arch/x86/x86_64/mm.rst, the 4-level kernel map", ("04",),
              "mm.rst as carried by torvalds/linux and its mirrors (the row for "
              "ffff800000000000)"),
    Quotation("x86/fault: Don't run fixups for SMAP violations",
              "commit ca247283781d (Andy Lutomirski, February 2021), its title", ("04",),
              "the commit as quoted by the syzbot bisection mails on LKML"),
    # --- lesson 06 ---------------------------------------------------------------------------
    Quotation("Kernel Address Isolation to have Side-channels Efficiently Removed",
              "IAIK/KAISER, 0001-KAISER-Kernel-Address-Isolation.patch (Fellner, Lipp, Gruss, "
              "Schwarz, 4 May 2017), its commit message", ("06",),
              "IAIK/KAISER KAISER/0001-KAISER-Kernel-Address-Isolation.patch",
              "pti-facts.md"),
    Quotation("not hold any information about kernel addresses while running in user mode",
              "Gruss et al., KASLR is Dead: Long Live KASLR (ESSoS 2017), abstract", ("06", "10"),
              "the abstract as excerpted in the reference fact sheet", "pti-facts.md"),
    Quotation("All top-level KAISER page tables are order-1 pages (8k-aligned and 8k in "
              "size). The kernel one is at the beginning 4k and the user (shadow) one is in "
              "the last 4k. To switch between them, you just need to flip the 12th bit in "
              "their addresses",
              HANSEN_CORE + ", arch/x86/include/asm/pgtable_64.h", ("06",),
              "the mail on the linux-mm archive", "pti-facts.md"),
    Quotation("an additional 4k per process", PTI_RST + ", Overhead 1a", ("06",),
              TORVALDS_PTI_RST),
    Quotation("do not clone the areas past rodata, they might contain secrets",
              PTI_C + ", pti_clone_kernel_text()", ("06",), TORVALDS_PTI_C, "pti-facts.md"),
    Quotation("This minimal set of data can still reveal the kernel's ASLR base address",
              "Dave Hansen, [PATCH 00/30] [v2] KAISER cover letter, linux-mm, 8 Nov 2017",
              ("06", "10"), "the cover letter as excerpted in the reference fact sheet",
              "pti-facts.md"),
    Quotation("the full PGD, accessible from userspace", PTI_C + ", __pti_set_user_pgtbl()",
              ("06",), TORVALDS_PTI_C),
    Quotation("Changes to the high (kernel) portion of the kernelmode page tables are not "
              "automatically propagated to the usermode tables",
              PTI_C + ", __pti_set_user_pgtbl()", ("06",), TORVALDS_PTI_C),
    Quotation("One PTE to lock, one set of accessed bits, dirty bits",
              PTI_RST + ", Page Table Management", ("06",), TORVALDS_PTI_RST),
    Quotation("If this is normal user memory, make it NX in the kernel pagetables so that, "
              "if we somehow screw up and return to usermode with the kernel CR3 loaded, "
              "we'll get a page fault instead of allowing user code to execute with the "
              "wrong CR3.", PTI_C + ", __pti_set_user_pgtbl()", ("06",), TORVALDS_PTI_C),
    Quotation("This way, if we get out to userspace with the wrong CR3 value, userspace "
              "will crash instead of running.", HANSEN_CORE + ", native_set_p4d()", ("06",),
              "the mail on the linux-mm archive"),
    Quotation("crippled by setting the NX bit in the top level. This ensures that any "
              "missed kernel->user CR3 switch will immediately crash userspace upon "
              "executing its first instruction.", PTI_RST + ", Page Table Management",
              ("06",), TORVALDS_PTI_RST),
    Quotation("systems without the SMEP CPU feature (before Ivy-Bridge) get it emulated "
              "for \u201cfree\u201d",
              "Kees Cook, security things in Linux v4.15, outflux.net, 5 Feb 2018", ("06",),
              "a mirror of the blog post (roastidio.us)"),
    Quotation("Use trampoline stack instead of process stack at entry so no longer need "
              "to map process stack (big win in fork() speed)",
              "Dave Hansen, [PATCH 00/30] [v2] KAISER cover letter, linux-mm, 8 Nov 2017, "
              "Changes from v1", ("06", "10"), "the cover letter on the linux-mm archive"),
    Quotation("Use new entry trampoline instead of mapping process stacks.",
              HANSEN_CORE + ", Changes from original KAISER patch", ("06",),
              "the mail on the linux-mm archive"),
    # --- lesson 07 ---------------------------------------------------------------------------
    Quotation("NMI from user mode. We need to run on the thread stack",
              "arch/x86/entry/entry_64.S, asm_exc_nmi", ("07",),
              "entry_64.S as quoted in LKML patches of 2023-2024"),
    Quotation("KERNEL pages can always resume with NOFLUSH as we do explicit flushes",
              "arch/x86/entry/calling.h, RESTORE_CR3 (21e944591102, up to Linux 6.8)",
              ("07",), "the diff of bb998361999e, which removed it", "pti-facts.md"),
    Quotation("there is nothing to restore as CR3 is not modified while handling the "
              "exception",
              "arch/x86/entry/calling.h, PARANOID_RESTORE_CR3 (bb998361999e, Linux 6.9)",
              ("07",), "the x86/entry pull request for v6.9-rc1 (LKML, 11 Mar 2024)"),
    Quotation("The user PCID TLB flush is deferred until the exit to userspace, minimizing "
              "the cost", PTI_RST + ", Overhead 2d", ("07", "10"), TORVALDS_PTI_RST,
              "pti-facts.md"),
    Quotation("Systems with PCIDs get little benefit from global kernel text",
              PTI_C + ", pti_kernel_image_global_ok()", ("07",), TORVALDS_PTI_C,
              "pti-facts.md"),
    # --- lesson 10 ---------------------------------------------------------------------------
    Quotation("KAISER makes it harder to defeat KASLR, but makes syscalls and interrupts "
              "slower.",
              "Dave Hansen, [PATCH 00/30] [v2] KAISER cover letter, linux-mm, 8 Nov 2017",
              ("10",), "the cover letter as excerpted in the reference fact sheet",
              "pti-facts.md"),
    Quotation("Mostly rewritten by Thomas Gleixner and Andy Lutomirsky",
              PTI_C + ", the file's header", ("10",), TORVALDS_PTI_C, "pti-facts.md"),
    Quotation("We show that the KAISER defense mechanism for KASLR has the important (but "
              "inadvertent) side effect of impeding Meltdown",
              "Lipp et al., Meltdown: Reading Kernel Memory from User Space (USENIX "
              "Security 2018; arXiv 1801.01207), abstract", ("10",),
              "the abstract as excerpted in the reference fact sheet", "pti-facts.md"),
)


def normalize(text: str) -> str:
    """Collapse runs of whitespace (sources wrap lines and put two spaces after a full
    stop); nothing else is changed."""
    return re.sub(r"\s+", " ", text).strip()


def registered(passage: str, lesson: str) -> Quotation | None:
    """The registered quotation that ``passage`` (a quoted passage of ``lesson``) is, or is
    part of; None if there is none."""
    want = normalize(passage)
    for q in QUOTATIONS:
        if lesson in q.lessons and want and want in normalize(q.text):
            return q
    return None


def quoted_passages(markdown: str) -> list[str]:
    """The double-quoted passages of a Markdown text of at least two words: code spans are
    removed first, then straight quotes are paired in order (typographic quotes may nest
    inside them) and \u201ctypographic\u201d pairs are taken as they open and close."""
    text = re.sub(r"`[^`]*`", "", markdown)
    passages = re.findall(r'"([^"]*)"', text)
    passages += re.findall("\u201c([^\u201d]*)\u201d", re.sub(r'"[^"]*"', "", text))
    return [p for p in passages if len(p.split()) >= 2]
