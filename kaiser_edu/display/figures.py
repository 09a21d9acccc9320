"""Figures with alt text and measured text sizes: see :mod:`kaiser_edu.display`."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from typing import Any

import matplotlib.figure

from kaiser_edu.errors import KaiserEduError

#: The resolution of every PNG the course makes: 100 dots per inch, so a 9.5-inch figure is
#: 950 px wide and fits a laptop's JupyterLab output area without being scaled down.
DPI = 100
#: The smallest text a figure may use, in points at its natural size (the browser test also
#: checks the size after JupyterLab has scaled the image to the output area).
MIN_FONT_PT = 9.0

# --- figures --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextReport:
    """What a figure's text looks like once drawn: the smallest font (points, at the
    figure's own size), the texts drawn outside the canvas (cut off), and how many texts."""

    min_font_pt: float
    cut: tuple[str, ...]
    texts: int


def text_report(fig: matplotlib.figure.Figure) -> TextReport:
    """Draw ``fig`` and measure every visible, non-empty text (titles, labels, ticks,
    legends, annotations): its font size and whether its box lies inside the canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    if fig.canvas is None or not hasattr(fig.canvas, "get_renderer"):
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    # Tick labels exist for ticks outside the axes' limits too, but are not drawn.
    undrawn = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            span = (high - low) * 1e-9
            for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
                if not low - span <= tick.get_loc() <= high + span:
                    undrawn.update((tick.label1, tick.label2))
    sizes, cut = [], []
    for t in fig.findobj(Text):
        if not t.get_visible() or not t.get_text().strip() or t in undrawn:
            continue
        if t.axes is not None and not t.axes.get_visible():
            continue
        sizes.append(t.get_fontsize())
        box = t.get_window_extent(renderer)
        if box.x0 < -1 or box.y0 < -1 or box.x1 > width + 1 or box.y1 > height + 1:
            cut.append(t.get_text())
    return TextReport(min(sizes) if sizes else float("inf"), tuple(cut), len(sizes))


def figure_png(fig: matplotlib.figure.Figure, dpi: int = DPI) -> bytes:
    """The figure as PNG bytes (Agg; no pyplot state involved)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def image_html(png: bytes, alt: str, width_px: int, report: TextReport | None) -> str:
    """An ``<img>`` with alt text, shown at its natural width or narrower (never wider)."""
    data = base64.b64encode(png).decode("ascii")
    measured = ""
    if report is not None:
        measured = (f" data-min-font-pt='{report.min_font_pt:.1f}' data-dpi='{DPI}'"
                    f" data-cut-labels='{len(report.cut)}'")
    return (f"<img src='data:image/png;base64,{data}' alt='{html.escape(alt, quote=True)}'"
            f" width='{width_px}' style='max-width:100%;height:auto'{measured}>")


def figure_bundle(fig: matplotlib.figure.Figure, alt: str) -> dict[str, str]:
    """The MIME bundle of a figure: ``image/png``, ``text/html`` (the PNG in an ``<img>``
    with ``alt``, preferred by JupyterLab) and ``text/plain`` (the alt text)."""
    if not alt.strip():
        raise KaiserEduError("a figure needs alt text: say in words what it shows")
    report = text_report(fig)
    png = figure_png(fig)
    width = round(fig.get_figwidth() * DPI)
    return {"image/png": base64.b64encode(png).decode("ascii"),
            "text/html": image_html(png, alt, width, report),
            "text/plain": f"Figure: {alt}"}


class Figure(matplotlib.figure.Figure):
    """matplotlib's Figure with alt text; a notebook cell ending in one shows the PNG with
    that alt text (:func:`figure_bundle`), even when pyplot was never imported."""

    alt: str = ""

    def _repr_png_(self) -> bytes:
        return figure_png(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return figure_bundle(self, self.alt or self.default_alt())

    def default_alt(self) -> str:
        """Alt text from the figure's own titles, when no one wrote any."""
        titles = [ax.get_title() for ax in self.axes if ax.get_title()]
        supt = self._suptitle.get_text() if self._suptitle is not None else ""
        words = "; ".join(t for t in [supt, *titles] if t)
        return f"Figure: {words}" if words else "A figure without a title"
