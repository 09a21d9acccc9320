"""The course's exercise system: checks with feedback, generated student notebooks.

- :mod:`~kaiser_edu.course.checks`: :class:`Check` runs a student's function on seeded
  cases and returns a :class:`CheckResult` (passed / failed with a hint / not attempted /
  error), shown as a banner in the notebook and reported to ``kaiser-edu check``
- :mod:`~kaiser_edu.course.labs`: the checks of each lab (``labs.lab01`` ...)
- :mod:`~kaiser_edu.course.metadata`: nbgrader cell metadata (answer, check, read-only)
- :mod:`~kaiser_edu.course.exercises`: exercises/ generated from solutions/, and the
  proof that they are in sync (``kaiser-edu build-exercises``)
- :mod:`~kaiser_edu.course.execute`: running a notebook in a kernel of this environment
- :mod:`~kaiser_edu.course.check_notebook`: ``kaiser-edu check NOTEBOOK.ipynb``

Only :mod:`checks` is imported here: a lab notebook's first cell stays quick, and the
notebook-running tools (nbclient) load only when a command needs them.
"""

from kaiser_edu.course.checks import Case, Check, CheckResult

__all__ = ["Case", "Check", "CheckResult"]
