"""Shared by the tests that start a Jupyter server (test_browser.py, test_lab_cli.py)."""

from __future__ import annotations

import subprocess


def stop(process: subprocess.Popen, grace: float = 20) -> None:
    """End a process this test started, by its handle: SIGTERM, then SIGKILL if it has not
    exited after ``grace`` seconds (never by name: other servers may be running)."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
