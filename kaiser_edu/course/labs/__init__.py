"""The checks of each lab notebook, one module per lab (``lab01`` for lab01_addresses ...).

A lab module defines one :class:`kaiser_edu.course.checks.Check` per exercise, with cases
whose expected answers come from the package's engine, and hints that read the student's
wrong answer. The notebook imports them: ``from kaiser_edu.course.labs.lab01 import ...``.
"""
