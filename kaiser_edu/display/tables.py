"""Tables as fixed-width text that a notebook shows as HTML: see :mod:`kaiser_edu.display`."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import Any

from kaiser_edu.errors import KaiserEduError

_CELL = ("padding:1px 8px;text-align:left;vertical-align:top;"
         "font-family:var(--jp-code-font-family, monospace);font-size:var(--jp-code-font-size, 13px)")
# Tokens that browsers would break at a hyphen or a slash ("not-|present", "3-|>0", "K/|2").
_BREAKABLE = re.compile(r"\S*[-/‐–]\S*")


def words_html(text: object) -> str:
    """``text`` escaped for HTML so that it wraps between words only: a word with a hyphen
    or a slash (which browsers would break after) is kept on one line."""
    return _BREAKABLE.sub(lambda m: f"<span style='white-space:nowrap'>{m.group(0)}</span>",
                          html.escape(str(text)))


def cell_html(text: object, wrap: bool = False) -> str:
    """One table cell's HTML: monospace; ``wrap=False`` keeps it on one line, ``wrap=True``
    lets it wrap between words only (:func:`words_html`)."""
    if not wrap:
        return f"<td style='{_CELL};white-space:nowrap'>{html.escape(str(text))}</td>"
    return f"<td style='{_CELL};white-space:normal;overflow-wrap:normal'>{words_html(text)}</td>"


def table_html(columns: Sequence[str], rows: Sequence[Sequence[object]], *,
               wrap: Sequence[str] = (), caption: str = "", notes: Sequence[str] = (),
               row_styles: Sequence[str] | None = None) -> str:
    """An HTML table: a header row, then ``rows``; the columns named in ``wrap`` may wrap
    between words, all others stay on one line. ``notes`` are lines printed under it."""
    head = "".join(f"<th style='{_CELL};white-space:nowrap;font-weight:bold'>"
                   f"{html.escape(c)}</th>" for c in columns)
    body = []
    for i, row in enumerate(rows):
        if len(row) != len(columns):
            raise KaiserEduError(f"table row {i} has {len(row)} cells for {len(columns)} columns")
        style = f" style='{row_styles[i]}'" if row_styles and row_styles[i] else ""
        body.append(f"<tr{style}>" + "".join(cell_html(v, c in wrap)
                                             for c, v in zip(columns, row, strict=True))
                    + "</tr>")
    cap = (f"<caption style='text-align:left;font-weight:bold;padding-bottom:2px'>"
           f"{html.escape(caption)}</caption>") if caption else ""
    tail = "".join(f"<div style='{_CELL}'>{words_html(n)}</div>" for n in notes)
    return (f"<table class='kaiser-table' style='border-collapse:collapse;margin:0'>{cap}"
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{tail}")


class TextTable(str):
    """A table's fixed-width text, which a notebook shows as an HTML table.

    ``TextTable(text, columns, rows, wrap=..., notes=...)``: ``text`` is what ``str()``,
    ``print()`` and ``text/plain`` give (unchanged from the plain-text table); ``columns``
    and ``rows`` (cell strings) are what the HTML shows.
    """

    def __new__(cls, text: str, columns: Sequence[str], rows: Sequence[Sequence[object]], *,
                wrap: Sequence[str] = (), caption: str = "", notes: Sequence[str] = (),
                row_styles: Sequence[str] | None = None) -> TextTable:
        self = super().__new__(cls, text)
        self.columns = list(columns)
        self.rows = [[str(v) for v in row] for row in rows]
        self.wrap = tuple(wrap)
        self.caption = caption
        self.notes = tuple(notes)
        self.row_styles = row_styles
        return self

    def _repr_html_(self) -> str:
        return table_html(self.columns, self.rows, wrap=self.wrap, caption=self.caption,
                          notes=self.notes, row_styles=self.row_styles)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))




def text_table(columns: Sequence[str], rows: Sequence[Sequence[object]], *,
               wrap: Sequence[str] = (), caption: str = "", notes: Sequence[str] = (),
               right: Sequence[str] = ()) -> TextTable:
    """A :class:`TextTable` from columns and rows alone: the text is the cells padded to
    their column's width, two spaces apart (the columns named in ``right`` aligned right,
    the last column unpadded), then the notes. For a lesson that prints a table of its own
    (a price list, a comparison) and wants it to read well both ways: as HTML that never
    breaks a value in JupyterLab, as aligned text in nbval and a terminal.
    """
    cells = [[str(v) for v in row] for row in rows]
    for i, row in enumerate(cells):
        if len(row) != len(columns):
            raise KaiserEduError(f"table row {i} has {len(row)} cells for {len(columns)} columns")
    widths = [max([len(c), *(len(row[j]) for row in cells)]) for j, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        padded = [v.rjust(w) if c in right else v.ljust(w)
                  for c, v, w in zip(columns, values, widths, strict=True)]
        return "  ".join(padded).rstrip()

    text = "\n".join([*([caption] if caption else []), line(list(columns)),
                      *(line(row) for row in cells), *notes])
    return TextTable(text, columns, cells, wrap=wrap, caption=caption, notes=notes)
