"""``kaiser-edu lab``: which course and notebook it opens, the errors it gives, and a real
JupyterLab started through it that serves the course."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kaiser_edu.cli import main
from kaiser_edu.course import lab_cli

REPO = Path(__file__).resolve().parents[1]


def dry_run(capsys, *argv: str) -> list[str]:
    assert main(["lab", "--dry-run", *argv]) == 0
    return shlex.split(capsys.readouterr().out)


def test_opens_the_tour_of_this_checkout_with_this_python(capsys):
    command = dry_run(capsys)
    assert command[:3] == [sys.executable, "-m", "jupyterlab"]
    assert f"--ServerApp.root_dir={REPO}" in command
    assert command[-1] == "notebooks/00_tour.ipynb"


@pytest.mark.parametrize(("argv", "opened"), [
    (("--lesson", "6"), "notebooks/06_kaiser_shadow_pgd.ipynb"),
    (("--lesson", "0"), "notebooks/00_tour.ipynb"),
    (("--lab", "7"), "exercises/lab07_entry_cr3.ipynb"),
])
def test_opens_the_lesson_or_lab_asked_for(capsys, argv, opened):
    assert dry_run(capsys, *argv)[-1] == opened
    assert (REPO / opened).is_file()


def test_passes_what_follows_the_double_dash_to_jupyter(capsys):
    command = dry_run(capsys, "--lesson", "4", "--", "--port=9999", "--no-browser")
    assert command[-3:] == ["--port=9999", "--no-browser", "notebooks/04_user_kernel_split.ipynb"]
    assert "--" not in command


def test_a_missing_lesson_names_the_ones_that_exist(capsys):
    assert main(["lab", "--lesson", "42", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "no lesson 42" in err and "available: 00, 01" in err


def test_a_folder_without_the_course_is_refused(tmp_path, capsys):
    assert main(["lab", "--dir", str(tmp_path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "no course found" in err and str(tmp_path) in err and "--dir" in err


def test_lesson_and_lab_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        main(["lab", "--lesson", "1", "--lab", "1"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_copy_of_the_course_elsewhere_is_found_with_dir(tmp_path, capsys):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "00_tour.ipynb").write_text("{}")
    command = dry_run(capsys, "--dir", str(tmp_path))
    assert f"--ServerApp.root_dir={tmp_path.resolve()}" in command
    assert command[-1] == "notebooks/00_tour.ipynb"
    assert lab_cli.course_root(tmp_path) == tmp_path.resolve()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_jupyterlab_started_by_it_serves_the_course(tmp_path):
    """The command really starts JupyterLab (no browser), rooted at the course: its
    contents API lists the lessons."""
    port, token = _free_port(), "kaiser-edu-lab-test"
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"))
    server = subprocess.Popen(
        [sys.executable, "-m", "kaiser_edu", "lab", "--", "--no-browser", "--ip=127.0.0.1",
         f"--port={port}", f"--IdentityProvider.token={token}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}/api/contents/notebooks?token={token}"
    try:
        _serve_and_stop(server, url)
    finally:  # whatever happened, leave no server behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)


def _serve_and_stop(server: subprocess.Popen, url: str) -> None:
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as reply:
                    listing = json.load(reply)
                break
            except OSError:
                assert server.poll() is None, f"jupyter lab exited: {server.stderr.read()}"
                assert time.monotonic() < deadline, "jupyter lab did not answer in 60 s"
                time.sleep(0.5)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    names = {item["name"] for item in listing["content"]}
    assert "00_tour.ipynb" in names and "07_entry_exit_pti.ipynb" in names
    with pytest.raises(OSError):  # stopping the command stopped the server: no orphan
        urllib.request.urlopen(url, timeout=2)
