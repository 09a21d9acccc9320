"""Helpers shared by the lab tests (test_labNN.py)."""

from __future__ import annotations


def assert_feedback(result, status: str, fragments: list[str]) -> None:
    """A wrong answer got ``status``, no points, and feedback containing every fragment
    (compared with all runs of whitespace made single spaces)."""
    assert result.status == status, result.text()
    assert result.points == 0
    flat = " ".join(result.feedback.split())
    for fragment in fragments:
        assert " ".join(fragment.split()) in flat, result.text()
