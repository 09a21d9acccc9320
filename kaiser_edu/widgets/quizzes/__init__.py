"""The lessons' quiz questions, one module per lesson (``lesson06.py`` holds ``QUESTIONS``).

They live here, not in the notebooks, so that a lesson's quiz cell is one line,
``quiz("06")``, and a student reading the notebook does not see which option is right.
"""
