"""The Linux x86-64 virtual memory map, as a table a lesson can search and print.

Source: Documentation/arch/x86/x86_64/mm.rst (Documentation/x86/x86_64/mm.rst before
v6.3), "Complete virtual memory map with 4-level page tables" and "... with 5-level page
tables". The rows below are that table, start and end inclusive. Three caveats the lessons
should repeat:

* With KASLR (``CONFIG_RANDOMIZE_MEMORY``) the bases of the direct map
  (``page_offset_base``), vmalloc space (``vmalloc_base``) and the struct-page array
  (``vmemmap_base``) are shifted at boot; the table shows the non-randomised layout.
* The fixmap starts at ``FIXADDR_START``, which depends on the kernel configuration
  (about -11 MB); the table gives it the whole gap between the module area and the
  vsyscall page.
* Everything from ``0xfffffc0000000000`` up is the same with 4 and 5 levels.
* The table shows a 512 MB kernel-text window. With ``CONFIG_RANDOMIZE_BASE``,
  ``KERNEL_IMAGE_SIZE`` is 1 GiB, so the module area starts at ``0xffffffffc0000000``
  (arch/x86/include/asm/page_64_types.h); :mod:`kaiser_edu.kernel.layout` uses that value.

This is the one place the course keeps the layout: the simulated kernel and the widgets
both look addresses up here.

>>> region_of(0xffff888000001000).name
'direct map'
>>> region_of(0x0000800000000000).kind
'non-canonical'
>>> region_of(0xffffffffff600000, levels=5).name
'vsyscall'
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from kaiser_edu.display.tables import words_html as _words_html
from kaiser_edu.errors import KaiserEduError

SOURCE = "Documentation/arch/x86/x86_64/mm.rst (Linux)"

# Kinds of region, for colouring and for the lessons' questions ("is this user memory?").
KIND_USER = "user"
KIND_NONCANONICAL = "non-canonical"
KIND_KERNEL = "kernel"
KIND_UNUSED = "unused"  # canonical kernel-half addresses nothing is mapped at

# A few well-known addresses (4-level layout), named as in the kernel sources.
PAGE_OFFSET = 0xFFFF_8880_0000_0000  # page_offset_base without KASLR: the direct map
VMALLOC_START = 0xFFFF_C900_0000_0000  # vmalloc_base without KASLR
VMEMMAP_START = 0xFFFF_EA00_0000_0000  # vmemmap_base without KASLR
LDT_BASE_ADDR = 0xFFFF_8800_0000_0000  # the per-mm LDT slot under PTI
CPU_ENTRY_AREA_BASE = 0xFFFF_FE00_0000_0000
ESPFIX_BASE_ADDR = 0xFFFF_FF00_0000_0000
START_KERNEL_MAP = 0xFFFF_FFFF_8000_0000  # __START_KERNEL_map: kernel text, phys 0
MODULES_VADDR = 0xFFFF_FFFF_A000_0000
VSYSCALL_ADDR = 0xFFFF_FFFF_FF60_0000


@dataclass(frozen=True)
class Region:
    """One row of mm.rst: ``start`` to ``end`` inclusive."""

    start: int
    end: int
    name: str
    kind: str
    description: str

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    def __contains__(self, va: int) -> bool:
        return self.start <= va <= self.end

    def __str__(self) -> str:
        return f"{self.start:016x}-{self.end:016x} {human_size(self.size):>8}  {self.name}"


def _r(start: int, end: int, name: str, kind: str, description: str) -> Region:
    return Region(start, end, name, kind, description)


# Shared by both layouts: mm.rst "Identical layout to the 56-bit one from here on".
_COMMON_TOP = (
    _r(0xFFFF_FC00_0000_0000, 0xFFFF_FDFF_FFFF_FFFF, "unused hole", KIND_UNUSED,
       "unused hole (vaddr_end for KASLR)"),
    _r(CPU_ENTRY_AREA_BASE, 0xFFFF_FE7F_FFFF_FFFF, "cpu_entry_area", KIND_KERNEL,
       "cpu_entry_area mapping: per-CPU GDT, TSS, entry stack and IST stacks; "
       "under PTI also mapped in the user page tables"),
    _r(0xFFFF_FE80_0000_0000, 0xFFFF_FEFF_FFFF_FFFF, "unused hole", KIND_UNUSED,
       "unused hole"),
    _r(ESPFIX_BASE_ADDR, 0xFFFF_FF7F_FFFF_FFFF, "espfix", KIND_KERNEL,
       "%esp fixup stacks (espfix64), for IRET to 16-bit stack segments"),
    _r(0xFFFF_FF80_0000_0000, 0xFFFF_FFEE_FFFF_FFFF, "unused hole", KIND_UNUSED,
       "unused hole"),
    _r(0xFFFF_FFEF_0000_0000, 0xFFFF_FFFE_FFFF_FFFF, "EFI", KIND_KERNEL,
       "EFI region mapping space (only in efi_pgd, during EFI runtime calls)"),
    _r(0xFFFF_FFFF_0000_0000, 0xFFFF_FFFF_7FFF_FFFF, "unused hole", KIND_UNUSED,
       "unused hole"),
    _r(START_KERNEL_MAP, 0xFFFF_FFFF_9FFF_FFFF, "kernel text", KIND_KERNEL,
       "kernel text mapping, mapped to physical address 0 (__START_KERNEL_map)"),
    _r(MODULES_VADDR, 0xFFFF_FFFF_FEFF_FFFF, "modules", KIND_KERNEL,
       "module mapping space"),
    _r(0xFFFF_FFFF_FF00_0000, 0xFFFF_FFFF_FF5F_FFFF, "fixmap", KIND_KERNEL,
       "kernel-internal fixmap range (starts at FIXADDR_START, about -11 MB; "
       "size and offset depend on the configuration)"),
    _r(VSYSCALL_ADDR, 0xFFFF_FFFF_FF60_0FFF, "vsyscall", KIND_KERNEL,
       "legacy vsyscall ABI page (user-readable or execute-only, emulated)"),
    _r(0xFFFF_FFFF_FF60_1000, 0xFFFF_FFFF_FFDF_FFFF, "unlisted", KIND_UNUSED,
       "not listed in mm.rst (the top of the fixmap area; nothing a lesson uses)"),
    _r(0xFFFF_FFFF_FFE0_0000, 0xFFFF_FFFF_FFFF_FFFF, "unused hole", KIND_UNUSED,
       "unused hole (last 2 MB)"),
)

LINUX_MAP_4LEVEL: tuple[Region, ...] = (
    _r(0x0, 0x0000_7FFF_FFFF_FFFF, "user space", KIND_USER,
       "user-space virtual memory, different per mm (PGD entries 0-255)"),
    _r(0x0000_8000_0000_0000, 0xFFFF_7FFF_FFFF_FFFF, "non-canonical hole", KIND_NONCANONICAL,
       "huge, almost 64 bits wide hole of non-canonical addresses: any access is #GP"),
    _r(0xFFFF_8000_0000_0000, 0xFFFF_87FF_FFFF_FFFF, "guard hole", KIND_UNUSED,
       "guard hole, also reserved for hypervisor"),
    _r(LDT_BASE_ADDR, 0xFFFF_887F_FFFF_FFFF, "LDT remap", KIND_KERNEL,
       "LDT remap for PTI (per-mm slot, copied into the user page tables)"),
    _r(PAGE_OFFSET, 0xFFFF_C87F_FFFF_FFFF, "direct map", KIND_KERNEL,
       "direct mapping of all physical memory (page_offset_base)"),
    _r(0xFFFF_C880_0000_0000, 0xFFFF_C8FF_FFFF_FFFF, "unused hole", KIND_UNUSED,
       "unused hole"),
    _r(VMALLOC_START, 0xFFFF_E8FF_FFFF_FFFF, "vmalloc", KIND_KERNEL,
       "vmalloc/ioremap space (vmalloc_base)"),
    _r(0xFFFF_E900_0000_0000, 0xFFFF_E9FF_FFFF_FFFF, "unused hole", KIND_UNUSED,
       "unused hole"),
    _r(VMEMMAP_START, 0xFFFF_EAFF_FFFF_FFFF, "vmemmap", KIND_KERNEL,
       "virtual memory map: the struct page array (vmemmap_base)"),
    _r(0xFFFF_EB00_0000_0000, 0xFFFF_EBFF_FFFF_FFFF, "unused hole", KIND_UNUSED,
       "unused hole"),
    _r(0xFFFF_EC00_0000_0000, 0xFFFF_FBFF_FFFF_FFFF, "KASAN shadow", KIND_KERNEL,
       "KASAN shadow memory"),
    *_COMMON_TOP,
)

LINUX_MAP_5LEVEL: tuple[Region, ...] = (
    _r(0x0, 0x00FF_FFFF_FFFF_FFFF, "user space", KIND_USER,
       "user-space virtual memory, different per mm (PGD entries 0-255)"),
    _r(0x0100_0000_0000_0000, 0xFEFF_FFFF_FFFF_FFFF, "non-canonical hole", KIND_NONCANONICAL,
       "huge, still almost 64 bits wide hole of non-canonical addresses: any access is #GP"),
    _r(0xFF00_0000_0000_0000, 0xFF0F_FFFF_FFFF_FFFF, "guard hole", KIND_UNUSED,
       "guard hole, also reserved for hypervisor"),
    _r(0xFF10_0000_0000_0000, 0xFF10_FFFF_FFFF_FFFF, "LDT remap", KIND_KERNEL,
       "LDT remap for PTI"),
    _r(0xFF11_0000_0000_0000, 0xFF90_FFFF_FFFF_FFFF, "direct map", KIND_KERNEL,
       "direct mapping of all physical memory (page_offset_base)"),
    _r(0xFF91_0000_0000_0000, 0xFF9F_FFFF_FFFF_FFFF, "unused hole", KIND_UNUSED,
       "unused hole"),
    _r(0xFFA0_0000_0000_0000, 0xFFD1_FFFF_FFFF_FFFF, "vmalloc", KIND_KERNEL,
       "vmalloc/ioremap space (vmalloc_base)"),
    _r(0xFFD2_0000_0000_0000, 0xFFD3_FFFF_FFFF_FFFF, "unused hole", KIND_UNUSED,
       "unused hole"),
    _r(0xFFD4_0000_0000_0000, 0xFFD5_FFFF_FFFF_FFFF, "vmemmap", KIND_KERNEL,
       "virtual memory map: the struct page array (vmemmap_base)"),
    _r(0xFFD6_0000_0000_0000, 0xFFDE_FFFF_FFFF_FFFF, "unused hole", KIND_UNUSED,
       "unused hole"),
    _r(0xFFDF_0000_0000_0000, 0xFFFF_FBFF_FFFF_FFFF, "KASAN shadow", KIND_KERNEL,
       "KASAN shadow memory"),
    *_COMMON_TOP,
)


def linux_map(levels: int = 4) -> tuple[Region, ...]:
    """The whole layout for 4-level or 5-level paging, lowest address first."""
    if levels == 4:
        return LINUX_MAP_4LEVEL
    if levels == 5:
        return LINUX_MAP_5LEVEL
    raise KaiserEduError(f"levels must be 4 or 5, got {levels!r}")


def region_of(va: int, levels: int = 4) -> Region:
    """The region of the Linux layout containing ``va`` (every 64-bit value has one)."""
    if not isinstance(va, int) or not 0 <= va < 1 << 64:
        raise KaiserEduError(f"address must be an integer in [0, 2**64), got {va!r}")
    for region in linux_map(levels):
        if va in region:
            return region
    raise AssertionError(f"the layout table has a gap at {va:#x}")  # tested: it has none


def human_size(n_bytes: int) -> str:
    """Sizes close to the way mm.rst writes them.

    >>> human_size(1 << 47), human_size(1 << 39), human_size(1520 << 20), human_size(4096)
    ('128 TB', '0.5 TB', '1520 MB', '4 kB')
    """
    units = (("EB", 1 << 60), ("PB", 1 << 50), ("TB", 1 << 40), ("GB", 1 << 30),
             ("MB", 1 << 20), ("kB", 1 << 10))
    for unit, scale in units:
        value = n_bytes / scale
        quarter = (value * 4).is_integer()
        if value in (0.25, 0.5, 0.75) or (value >= 1 and quarter):
            return f"{value:.4g} {unit}"
        if value >= 4:
            return f"~{value:.3g} {unit}"
    return f"{n_bytes} B"


# Accessible colours (Okabe-Ito palette), each kind also named in words in every view.
KIND_COLORS = {
    KIND_USER: "#56B4E9",  # sky blue
    KIND_KERNEL: "#E69F00",  # orange
    KIND_UNUSED: "#DDDDDD",  # light grey
    KIND_NONCANONICAL: "#999999",  # grey
}


def linux_map_html(levels: int = 4, highlight: int | None = None, window: int = 3) -> str:
    """The layout as a small HTML table; the row containing ``highlight`` is marked with
    a bold border and an arrow (not by colour alone), and only ``window`` regions either
    side of it are listed (a line says how many more there are), so the marked row is
    always in view. Values never wrap; the description wraps between words only."""
    hit = region_of(highlight, levels) if highlight is not None else None
    regions = linux_map(levels)
    first, last = 0, len(regions)
    if hit is not None and hit in regions:
        at = regions.index(hit)
        first, last = max(0, at - window), min(len(regions), at + window + 1)
    nowrap = "white-space:nowrap;font-family:var(--jp-code-font-family, monospace);"
    words = "white-space:normal;overflow-wrap:normal;text-align:left"

    def more(n: int, where: str) -> str:
        return (f'<tr><td></td><td colspan="5" style="text-align:left;color:#444">'
                f"&hellip; {n} more region{'s' if n > 1 else ''} {where}</td></tr>")

    rows = [more(first, "above")] if first else []
    for region in regions[first:last]:
        mark = region == hit
        style = "font-weight:bold;outline:2px solid #000;" if mark else ""
        swatch = (f'<span style="display:inline-block;width:0.8em;height:0.8em;'
                  f'background:{KIND_COLORS[region.kind]};border:1px solid #555"></span>')
        rows.append(
            f'<tr style="{style}"><td>{"&#9654;" if mark else ""}</td>'
            f'<td style="{nowrap}">{region.start:016x}</td>'
            f'<td style="{nowrap}">{region.end:016x}</td>'
            f'<td style="{nowrap}text-align:right">{human_size(region.size)}</td>'
            f'<td style="{nowrap}text-align:left">{swatch} {html.escape(region.kind)}</td>'
            f'<td style="{words}">{_words_html(region.description)}</td></tr>'
        )
    if last < len(regions):
        rows.append(more(len(regions) - last, "below"))
    head = ("<tr><th></th><th>start</th><th>end</th><th>size</th>"
            '<th style="text-align:left">kind</th>'
            '<th style="text-align:left">what Linux keeps there</th></tr>')
    caption = (f"Linux x86-64 virtual memory map, {levels}-level paging "
               f"(without KASLR; source: {html.escape(SOURCE)})")
    return (f'<table style="font-size:85%;border-collapse:collapse">'
            f"<caption style='text-align:left'>{caption}</caption>{head}{''.join(rows)}</table>")

