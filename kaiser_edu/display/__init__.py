"""How the simulator's tables and figures show in a notebook, and as plain text everywhere else.

The lessons are built around a few wide tables (a page walk, the kernel's event log, a
transition's steps). Printed as text, JupyterLab wraps their long lines at any character, so
at laptop width a student reads "points to the PDPT tabl|e" or "CR2=|0x800000". Here:

- :class:`~kaiser_edu.display.tables.TextTable` is the table's fixed-width text (it *is* a ``str``: print it, split it,
  compare it), which is also its ``text/plain`` form, the one nbval compares and terminals
  show. In a notebook it renders as an HTML table whose cells use the code font and never
  break inside a value: a cell may wrap only between words (:func:`~kaiser_edu.display.tables.cell_html`), so an
  address, a flag word or "not-present" stays whole.
- :func:`~kaiser_edu.display.figures.figure_bundle` turns a matplotlib figure into the bundle a notebook shows: the PNG,
  an HTML ``<img>`` with alt text (what a screen reader says; JupyterLab's PNG renderer has
  no alt), and the alt text as ``text/plain``. The ``<img>`` also carries what the figure
  knows about its own text, the smallest font size in points and how many labels stick out
  of the canvas (:func:`~kaiser_edu.display.figures.text_report`), so the browser test can check the size at which the
  notebook really shows it (``tests/test_browser.py``).
- :class:`~kaiser_edu.display.figures.Figure` is matplotlib's Figure with an ``alt`` text that displays itself that way.

Two modules: :mod:`~kaiser_edu.display.tables` (no dependencies: the kernel's event log
uses it) and :mod:`~kaiser_edu.display.figures` (matplotlib). Both sit below
:mod:`kaiser_edu.kernel` and :mod:`kaiser_edu.widgets`, which both use them.
"""
