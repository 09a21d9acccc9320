"""Shared test set-up: hypothesis profiles, and isolation of the course checks.

``KAISER_HYPOTHESIS_PROFILE=quick`` runs each property on 15 examples (for slow modes such
as NUMBA_DISABLE_JIT=1 or NUMBA_BOUNDSCHECK=1); the default profile runs 150.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

settings.register_profile("default", max_examples=150, deadline=None, derandomize=False)
settings.register_profile("quick", max_examples=15, deadline=None)
settings.load_profile(os.environ.get("KAISER_HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _no_check_report(monkeypatch):
    """Checks run by a test must not append to a report that a surrounding `kaiser-edu
    check` asked for, nor behave as under nbgrader."""
    from kaiser_edu.course.checks import NBGRADER_ENV, REPORT_ENV

    monkeypatch.delenv(REPORT_ENV, raising=False)
    monkeypatch.delenv(NBGRADER_ENV, raising=False)
