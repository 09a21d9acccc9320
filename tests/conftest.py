"""Hypothesis profiles for the property tests.

``KAISER_HYPOTHESIS_PROFILE=quick`` runs each property on 15 examples (for slow modes such
as NUMBA_DISABLE_JIT=1 or NUMBA_BOUNDSCHECK=1); the default profile runs 150.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("default", max_examples=150, deadline=None, derandomize=False)
settings.register_profile("quick", max_examples=15, deadline=None)
settings.load_profile(os.environ.get("KAISER_HYPOTHESIS_PROFILE", "default"))
