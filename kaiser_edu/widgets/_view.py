"""Small helpers the widget views share: writing a result into an ``Output`` widget.

A view shows its result by *replacing* the outputs of an :class:`ipywidgets.Output` with one
display bundle (text/html for the front end, text/plain for readers without HTML, and an
image/png when there is a figure). Writing ``Output.outputs`` directly, instead of
``with output: display(...)``, works the same in JupyterLab, in nbval and in a plain pytest
process with no kernel, and leaves nothing behind in the cell's own output.
"""

from __future__ import annotations

import base64
import html as _html
from typing import TYPE_CHECKING

import ipywidgets as widgets

from kaiser_edu.display.figures import figure_bundle, figure_png  # noqa: F401 (figure_png: re-exported)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Okabe-Ito colours (distinguishable with the common colour-vision deficiencies); every view
# also says in words what a colour means.
OKABE_ITO = {
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
    "grey": "#999999",
}

# One colour per paging level, used by the address explorer, the walk stepper and the
# figures alike (level 1 = PT ... 5 = PML5, 0 = page offset).
LEVEL_COLORS = {
    5: OKABE_ITO["reddish_purple"],
    4: OKABE_ITO["orange"],
    3: OKABE_ITO["sky_blue"],
    2: OKABE_ITO["bluish_green"],
    1: OKABE_ITO["yellow"],
    0: OKABE_ITO["blue"],
}
SIGN_COLOR = "#BBBBBB"
OK_COLOR = OKABE_ITO["blue"]  # translated: blue with a check mark
FAULT_COLOR = OKABE_ITO["vermillion"]  # fault: vermillion with a cross


def show(output: widgets.Output, html: str, text: str, png: bytes | None = None,
         alt: str = "", figure: Figure | None = None) -> None:
    """Replace what ``output`` shows with one bundle: HTML and plain text, then maybe a
    figure: ``figure`` (a matplotlib Figure, shown with ``alt`` text, see
    :func:`kaiser_edu.display.figure_bundle`) or ready-made ``png`` bytes."""
    bundles = [{"output_type": "display_data", "metadata": {},
                "data": {"text/html": html, "text/plain": text}}]
    if figure is not None:
        bundles.append({"output_type": "display_data", "metadata": {},
                        "data": figure_bundle(figure, alt)})
    elif png is not None:  # no alt text possible in JupyterLab: prefer figure=
        bundles.append({"output_type": "display_data", "metadata": {},
                        "data": {"image/png": base64.b64encode(png).decode("ascii"),
                                 "text/plain": alt}})
    output.outputs = tuple(bundles)


def error_html(message: object) -> str:
    """The banner a view shows instead of its result when the input was refused: a cross
    and the message, with the fault colour as a bar on the left."""
    return (f"<div style='color:#000;border-left:6px solid {FAULT_COLOR};padding-left:6px'>"
            f"&#10008; {esc(message)}</div>")


def show_error(output: widgets.Output, message: object, text: str | None = None) -> None:
    """Show :func:`error_html` of ``message`` in ``output`` (plain text: ``text``, by
    default the message). Widget callbacks use it so that an error never reaches the front
    end as an exception."""
    show(output, error_html(message), str(message) if text is None else text)


def shown(output: widgets.Output, mime: str = "text/html") -> str:
    """What ``output`` currently shows in ``mime`` (all bundles joined)."""
    return "\n".join(o["data"][mime] for o in output.outputs
                     if o.get("data", {}).get(mime))


def esc(text: object) -> str:
    return _html.escape(str(text))


def swatch(color: str) -> str:
    """A small coloured square, always placed next to a word that names it."""
    return (f'<span style="display:inline-block;width:0.8em;height:0.8em;background:{color};'
            'border:1px solid #444;vertical-align:middle"></span>')


class OutputView:
    """Mixin for a view that shows its result in ``self.output``: ``.html`` and ``.text``
    read back what it currently shows (what tests and lessons assert on)."""

    output: widgets.Output

    @property
    def html(self) -> str:
        return shown(self.output, "text/html")

    @property
    def text(self) -> str:
        return shown(self.output, "text/plain")
