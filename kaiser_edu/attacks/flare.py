"""FLARE: fill every unused KASLR slot with a dummy mapping, so mapped-or-not says nothing.

Canella, Schwarz, Haubenwallner, Schwarzl, Gruss, "KASLR: Break It, Fix It, Repeat",
AsiaCCS 2020. The prefetch and double-fault breaks (and any other break that learns whether
a translation *exists*) find the kernel because its slots are mapped and the others are not.
FLARE maps the rest of the kernel-image window too, to one shared dummy region, in the page
tables user mode runs on: every candidate slot then translates, and the lowest mapped slot
is the window's first. What FLARE cannot hide is *TLB state*: the dummies are never used by
the kernel, while the real entry text is, on every syscall. That is the gap EntryBleed uses
(that the EntryBleed paper discusses FLARE in these terms is unverified here; the model
shows the mechanism).

The model: for every 2 MiB slot of the kernel-image window (``__START_KERNEL_map`` + 1 GiB)
whose PMD is not present in the user-visible tables, a 2 MiB leaf to the dummy region
(supervisor, read-only, not global); where a slot is partly mapped with 4 KiB pages (the
entry text under KAISER), every not-present PTE of that page table gets the dummy frame.
Apply it at boot, before processes are spawned, as the defence would be.
"""

from __future__ import annotations

from kaiser_edu.hw import bits as b
from kaiser_edu.hw.pgtable import PageTables
from kaiser_edu.kernel import layout as L

DUMMY_FLAGS = b.PAGE_KERNEL_RO & ~b.PAGE_GLOBAL


def user_visible_tables(kernel) -> PageTables:
    """init_mm's tables that user mode runs on: the shadow PGD under KAISER/PTI, the one PGD
    without isolation (every later PGD copies their kernel half)."""
    if not kernel.isolation.pgd_pair:
        return kernel.kernel_tables
    return PageTables(kernel.mem, kernel.alloc, pgd_pa=kernel.init_mm.pgd + b.PAGE_SIZE)


def apply_flare(kernel) -> int:
    """Map a dummy into every unused part of the kernel-image window of the user-visible
    tables; returns the number of entries written. Flushes the TLB afterwards."""
    tables = user_visible_tables(kernel)
    dummy = kernel.alloc.alloc_contig(b.PMD_SIZE >> b.PAGE_SHIFT, align=b.PMD_SIZE)
    written = 0
    for va in range(L.START_KERNEL_MAP, L.START_KERNEL_MAP + L.KERNEL_IMAGE_SIZE, b.PMD_SIZE):
        last = list(tables.entries(va))[-1]
        if last.present:
            continue  # a 2 MiB page already (the image, or the entry text's clone)
        if last.level == 1:  # a page table with holes: fill each not-present PTE
            table = last.pa & ~(b.PAGE_SIZE - 1)
            for i in range(512):
                if not kernel.mem.read_qword(table + 8 * i) & b.PAGE_PRESENT:
                    kernel.mem.write_qword(table + 8 * i, dummy | DUMMY_FLAGS | b.PAGE_PRESENT)
                    written += 1
        else:
            tables.map(va, dummy, b.PMD_SIZE, DUMMY_FLAGS)
            written += 1
    kernel.flush_tlb_all()
    return written
