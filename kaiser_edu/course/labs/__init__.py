"""The checks of each lab notebook, one module per lab (``lab01`` for lab01_addresses ...).

A lab module defines one :class:`kaiser_edu.course.checks.Check` per exercise, with cases
whose expected answers come from the package's engine, and hints that read the student's
wrong answer. The notebook imports them: ``from kaiser_edu.course.labs.lab01 import ...``.

The lab protocol
----------------
Every tool that grades (``kaiser-edu check``, ``check --graded``, ``kaiser-edu grade``,
nbgrader) works for any lab that follows it; nothing lists the labs by hand.

1. **Files.** The authored lab is ``solutions/labNN_<topic>.ipynb``; its checks are in
   ``kaiser_edu/course/labs/labNN.py``; ``exercises/labNN_<topic>.ipynb`` is generated
   (``kaiser-edu build-exercises``), never edited.
2. **Exercises and points are declared once, in the solution's nbgrader metadata.** Each
   exercise has a *check cell*: a code cell with ``grade: true, locked: true, points: N``
   and ``grade_id`` equal to its Check's ``exercise``, whose whole source is one call,
   ``check_name(function_name)``: ``check_name`` a Check of the lab module,
   ``function_name`` (or class) what the student's answer defines. ``Check.points`` must
   equal the cell's points (tests/test_labs.py and tests/test_graded.py check both).
   Graded runs take the exercises, their order and their points from these cells only.
3. **Answers** are code cells with ``solution: true`` (the code between ``### BEGIN
   SOLUTION`` and ``### END SOLUTION`` is replaced in the exercise). In a graded run *only*
   these cells run, in order, in a sandbox where ``kaiser_edu`` cannot be imported
   (:mod:`kaiser_edu.course.graded`). So an answer must not rely on the setup cell or on
   demo cells: everything it uses comes from other answer cells or from the lab's kit.
4. **The kit**, ``ANSWER_KIT = AnswerKit(...)`` in the lab module
   (:class:`~kaiser_edu.course.checks.AnswerKit`; omit it if the answers need nothing):
   the names the setup cell gives the answers (``constants``; ``functions`` the answers
   may call, which run in the grader; ``records``, dataclasses the answers build), and,
   for every type of object a check hands to the student's code, the attributes and
   methods it may use (``objects``). A check may pass the student's code plain values
   (ints, strings, tuples, lists, dicts) and objects of the declared types, nothing else.
5. **The check** calls the student's function and compares what comes back with its
   own reference; it must treat the answer as untrusted (a value of the wrong type is a
   wrong answer, never an exception), let ``KeyboardInterrupt`` (and any
   ``BaseException`` that is not an ``Exception``) through, and use
   :func:`~kaiser_edu.course.checks.where` / :func:`~kaiser_edu.course.checks.raiser`
   (not ``__traceback__`` directly) to name the student's line, so that feedback is the
   same in a graded run, where the student's exceptions come back from the sandbox.

To plug in a new lab: add its solution and module as above, run ``kaiser-edu
build-exercises``, then ``pytest tests/test_labs.py tests/test_graded.py``: the graded run
of its solution must earn every point and its untouched exercise none.
"""
