"""Lesson 01: what the bits of a virtual address mean.

An x86-64 linear address is 64 bits wide, but only the low 48 (4-level paging) or 57
(5-level, CR4.LA57) select anything. From the top (Intel SDM Vol. 3A 4.5, Figure 4-8):

* bits 63:48 (63:57) - *sign extension*: must all equal bit 47 (56). An address that obeys
  this is *canonical*; any other raises #GP(0), not #PF, before a table is read
  (SDM 3.3.7.1);
* bits 56:48 - PML5 index (5-level only), bits 47:39 - PML4 index, 38:30 - PDPT index,
  29:21 - PD index, 20:12 - PT index: 9 bits each, one of the 512 entries of a 4 KiB table;
* bits 11:0 - the offset inside the 4 KiB page.

Linux gives the lower canonical half (PGD entries 0-255) to user space and the upper half to
the kernel, and lays the kernel half out as in Documentation/arch/x86/x86_64/mm.rst
(:mod:`kaiser_edu.widgets.linux_map`).

The model is :func:`explore_address` (an :class:`AddressInfo`); :class:`AddressExplorer`
is the widget.

>>> info = explore_address(0xFFFF_8880_0000_1234)
>>> info.canonical, info.half, info.indices["PML4"], info.region.name
(True, 'kernel', 273, 'direct map')
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass

import ipywidgets as widgets

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.address import U64_MASK, canonicalize, is_canonical, split, va_bits
from kaiser_edu.widgets import _view
from kaiser_edu.widgets.linux_map import Region, linux_map_html, region_of

_TABLE_NAMES = {5: "PML5", 4: "PML4", 3: "PDPT", 2: "PD", 1: "PT"}


@dataclass(frozen=True)
class AddressField:
    """A run of bits ``hi``..``lo`` (inclusive) of an address and what it selects."""

    name: str  # "sign extension", "PML5" ... "PT", "offset"
    hi: int
    lo: int
    value: int
    color: str
    linux_name: str  # pgd/p4d/pud/pmd/pte, "" for sign extension and offset

    @property
    def width(self) -> int:
        return self.hi - self.lo + 1

    @property
    def bits(self) -> str:
        return format(self.value, f"0{self.width}b")


@dataclass(frozen=True)
class AddressInfo:
    """Everything lesson 01 says about one address."""

    va: int
    levels: int
    canonical: bool
    half: str  # "user", "kernel" or "non-canonical"
    fields: tuple[AddressField, ...]
    region: Region

    @property
    def indices(self) -> dict[str, int]:
        """Table indices (and the offset), top level first, as :func:`split` gives them."""
        return split(self.va, self.levels)

    @property
    def top_bit(self) -> int:
        """The highest meaningful bit (47 or 56) that the sign extension must copy."""
        return va_bits(self.levels) - 1

    @property
    def canonical_form(self) -> int:
        """The address with its sign extension repaired from bit 47 (56)."""
        return canonicalize(self.va, self.levels)

    def summary(self) -> str:
        """The facts as plain text (what the widget's text/plain shows)."""
        n = self.top_bit
        lines = [f"address {self.va:#018x} ({self.levels}-level paging)"]
        parts = [f"{f.name}[{f.hi}:{f.lo}]={f.value}" for f in self.fields[1:-1]]
        offset = self.fields[-1]
        lines.append("  indices: " + ", ".join(parts) + f", offset={offset.value:#x}")
        if self.canonical:
            lines.append(f"  canonical: yes (bits 63:{n} all {self.va >> n & 1})")
            pgd_index = self.indices[_TABLE_NAMES[self.levels]]
            lines.append(f"  half: {self.half} (PGD index {pgd_index})")
        else:
            lines.append(
                f"  canonical: NO - bits 63:{n + 1} must equal bit {n}; an access raises #GP(0)"
                f" (sign-extending bit {n} would give {self.canonical_form:#018x})"
            )
        lines.append(textwrap.fill(f"Linux map: {self.region.name} - {self.region.description}",
                                   96, initial_indent="  ", subsequent_indent="    ",
                                   break_on_hyphens=False))
        return "\n".join(lines)


def explore_address(va: int, levels: int = 4) -> AddressInfo:
    """Split ``va`` into its fields and say whether it is canonical, which half it is in and
    which region of the Linux layout contains it."""
    if levels not in (4, 5):
        raise KaiserEduError(f"levels must be 4 or 5 (5 = CR4.LA57), got {levels!r}")
    if not isinstance(va, int) or not 0 <= va <= U64_MASK:
        raise KaiserEduError(f"address must be an integer in [0, 2**64), got {va!r}")
    n = va_bits(levels)
    fields = [AddressField("sign extension", 63, n, va >> n, _view.SIGN_COLOR, "")]
    for level in range(levels, 0, -1):
        lo = b.level_shift(level)
        fields.append(AddressField(
            _TABLE_NAMES[level], lo + 8, lo, (va >> lo) & 0x1FF, _view.LEVEL_COLORS[level],
            b.linux_level_name(level, levels),
        ))
    fields.append(AddressField("offset", 11, 0, va & 0xFFF, _view.LEVEL_COLORS[0], ""))
    canonical = is_canonical(va, levels)
    half = "non-canonical" if not canonical else ("user" if va >> (n - 1) == 0 else "kernel")
    return AddressInfo(va, levels, canonical, half, tuple(fields), region_of(va, levels))


_HEX_RE = re.compile(r"^(0x)?([0-9a-f]+)$")


def parse_address(text: str) -> int:
    """Read an address typed by a student: hexadecimal, ``0x`` optional, with ``_``, spaces,
    ``'`` or a backtick (WinDbg style) allowed as digit separators.

    >>> hex(parse_address("ffff8880_00000000")), hex(parse_address(" 0x7fff`ffff`f000 "))
    ('0xffff888000000000', '0x7ffffffff000')
    """
    cleaned = re.sub(r"[_\s'`]", "", str(text)).lower()
    match = _HEX_RE.match(cleaned)
    if not match:
        raise KaiserEduError(
            f"{text!r} is not a hexadecimal address; type e.g. 0x00007fffffffe000 or "
            "ffff888000000000 (digits 0-9 a-f, optional 0x, '_' allowed between digits)"
        )
    value = int(match.group(2), 16)
    if value > U64_MASK:
        raise KaiserEduError(
            f"{text!r} has more than 64 bits ({len(match.group(2))} hex digits); an x86-64 "
            "address has at most 16"
        )
    return value


def address_html(info: AddressInfo, show_map: bool = True) -> str:
    """The address as a coloured row of 64 bits, its fields named, plus the facts."""
    e = _view.esc
    n = info.top_bit
    top_value = info.va >> n & 1
    label_cells, bit_cells, number_cells, value_cells = [], [], [], []
    cell = "padding:0 1px;text-align:center;font-family:monospace;"
    for f in info.fields:
        dark_text = f.color not in (_view.LEVEL_COLORS[0], _view.LEVEL_COLORS[5])
        fg = "#000" if dark_text else "#fff"
        label_cells.append(f'<td colspan="{f.width}" style="{cell}font-size:80%">'
                           f"{e(f.name)}<br>{e(f.linux_name)}</td>")
        for i, ch in enumerate(f.bits):
            bit = f.hi - i
            # A sign-extension bit that disagrees with bit 47/56 is what makes the address
            # non-canonical: underline and bold it (not colour alone).
            bad = f.name == "sign extension" and int(ch) != top_value
            extra = "font-weight:bold;text-decoration:underline;outline:1px solid #000;" \
                if bad else ""
            title = f"bit {bit}"
            bit_cells.append(f'<td title="{title}" style="{cell}background:{f.color};color:{fg};'
                             f'{extra}">{ch}</td>')
        number_cells.append(f'<td colspan="{f.width}" style="{cell}font-size:70%">'
                            f"{f.hi}:{f.lo}</td>")
        shown_value = f"{f.value:#x}" if f.name in ("offset", "sign extension") else str(f.value)
        value_cells.append(f'<td colspan="{f.width}" style="{cell}font-weight:bold">'
                           f"{shown_value}</td>")
    rows = "".join(f"<tr>{''.join(cells)}</tr>"
                   for cells in (label_cells, bit_cells, number_cells, value_cells))
    bits_table = f'<table style="border-collapse:collapse">{rows}</table>'

    if info.canonical:
        canon = (f"&#10004; <b>canonical</b>: bits 63:{n} are all {top_value} "
                 f"(sign extension of bit {n})")
        half = ("user half (Linux: user space, PGD entries 0-255)" if info.half == "user"
                else "kernel half (Linux: kernel, PGD entries 256-511)")
    else:
        canon = (f"&#10008; <b>not canonical</b>: bits 63:{n + 1} must all equal bit {n} "
                 f"(= {top_value}); the boxed bits (bold, underlined) differ. Any access raises "
                 f"<b>#GP(0)</b>, not #PF, and no page table is read. "
                 f"Sign-extending bit {n} would give <code>{info.canonical_form:#018x}</code>")
        half = "neither half: inside the non-canonical hole"
    idx = ", ".join(f"{f.name} = <b>{f.value}</b>" for f in info.fields[1:-1])
    facts = (
        f"<ul><li>{canon}</li><li>{half}</li>"
        f"<li>indices (decimal): {idx}; offset = <b>{info.fields[-1].value:#x}</b> "
        f"({info.fields[-1].value})</li>"
        f"<li>Linux map: <b>{e(info.region.name)}</b> - {e(info.region.description)}</li></ul>"
    )
    head = (f'<div style="font-size:120%"><code>{info.va:#018x}</code> '
            f"({info.levels}-level paging)</div>")
    table = linux_map_html(info.levels, highlight=info.va) if show_map else ""
    return f"<div>{head}{bits_table}{facts}{table}</div>"


class AddressExplorer(_view.OutputView, widgets.VBox):
    """Type or slide an address; see its fields, canonical check, half and Linux region.

    Controls (attributes):

    * ``address`` - :class:`ipywidgets.Text`, hexadecimal (``0x`` optional);
    * ``slider`` - :class:`ipywidgets.IntSlider` over ``slider_count`` addresses
      ``slider_start + i * slider_step`` (a JS number cannot hold a 64-bit address, so the
      slider counts steps and the text box shows the address). The default range is the
      top 2 MiB of user space and the first 2 MiB above it: sliding right, watch the PT,
      PD, PDPT and PML4 indices roll over and the address turn non-canonical;
    * ``levels`` - :class:`ipywidgets.ToggleButtons`, 4 or 5 (CR4.LA57);
    * ``output`` - :class:`ipywidgets.Output` showing the result.

    ``info`` is the current :class:`AddressInfo` (None while the text is not an address);
    ``html`` and ``text`` are what ``output`` shows.
    """

    def __init__(
        self,
        va: int | None = None,
        levels: int = 4,
        slider_start: int = 0x0000_7FFF_FFE0_0000,
        slider_step: int = b.PAGE_SIZE,
        slider_count: int = 1024,
        show_map: bool = True,
    ) -> None:
        if slider_count < 2 or slider_step < 1:
            raise KaiserEduError("slider_count must be >= 2 and slider_step >= 1")
        if not 0 <= slider_start <= U64_MASK - (slider_count - 1) * slider_step:
            raise KaiserEduError("slider range must stay inside [0, 2**64)")
        self.slider_start = slider_start
        self.slider_step = slider_step
        self.show_map = show_map
        if va is None:
            va = slider_start + (slider_count // 2 - 1) * slider_step
        self.info: AddressInfo | None = None
        self._syncing = False
        self.address = widgets.Text(value=f"{va:#018x}", description="address",
                                    continuous_update=False,
                                    layout=widgets.Layout(width="24em"))
        self.slider = widgets.IntSlider(value=0, min=0, max=slider_count - 1,
                                        description="step", continuous_update=True,
                                        layout=widgets.Layout(width="40em"))
        self.levels = widgets.ToggleButtons(options=[("4-level", 4), ("5-level (LA57)", 5)],
                                            value=levels, description="paging")
        self.output = widgets.Output()
        caption = widgets.HTML(
            f"slider: <code>{slider_start:#x}</code> + step &times; <code>{slider_step:#x}</code>")
        super().__init__([widgets.HBox([self.address, self.levels]),
                          widgets.HBox([self.slider, caption]), self.output])
        self.address.observe(self._on_address, names="value")
        self.slider.observe(self._on_slider, names="value")
        self.levels.observe(lambda _change: self._render(), names="value")
        self._on_address({"new": self.address.value})

    # --- wiring ----------------------------------------------------------------------------
    def _on_address(self, change: dict) -> None:
        try:
            va = parse_address(change["new"])
        except KaiserEduError as exc:
            self.info = None
            _view.show_error(self.output, exc)
            return
        step, rest = divmod(va - self.slider_start, self.slider_step)
        if rest == 0 and 0 <= step <= self.slider.max and step != self.slider.value:
            self._syncing = True
            try:
                self.slider.value = step
            finally:
                self._syncing = False
        self._render(va)

    def _on_slider(self, change: dict) -> None:
        if self._syncing:
            return
        self.address.value = f"{self.slider_start + change['new'] * self.slider_step:#018x}"

    def _render(self, va: int | None = None) -> None:
        if va is None:
            if self.info is None:
                return
            va = self.info.va
        self.info = explore_address(va, self.levels.value)
        _view.show(self.output, address_html(self.info, self.show_map), self.info.summary())

    # --- reading ---------------------------------------------------------------------------
    def __repr__(self) -> str:
        where = f"{self.info.va:#x}" if self.info else repr(self.address.value)
        return f"AddressExplorer(address={where}, levels={self.levels.value})"
