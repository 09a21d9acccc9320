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
from process_helpers import stop

from kaiser_edu.cli import main
from kaiser_edu.course import materials

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


def test_an_empty_folder_gets_the_course_copied_once(tmp_path, capsys):
    """--dir naming a folder without the course: this checkout's course is copied there
    (every course file, byte for byte, writable) and the folder is opened."""
    work = tmp_path / "mycourse"
    assert main(["lab", "--dir", str(work), "--dry-run"]) == 0  # a dry run copies nothing
    assert "would prepare" in capsys.readouterr().err and not work.exists()
    assert main(["lab", "--dir", str(work), "--prepare-only"]) == 0
    out = capsys.readouterr().out
    assert f"Copied the course ({len(materials.course_files(REPO))} files) into {work}" in out
    assert materials.course_files(work) == materials.course_files(REPO)
    for rel in materials.course_files(REPO):
        assert (work / rel).read_bytes() == (REPO / rel).read_bytes(), rel
    assert set(materials.read_manifest(work)) == set(materials.course_files(REPO))
    command = dry_run(capsys, "--dir", str(work))
    assert f"--ServerApp.root_dir={work}" in command and command[-1] == "notebooks/00_tour.ipynb"
    assert main(["lab", "--dir", str(work), "--prepare-only"]) == 0  # the second time
    assert "up to date" in capsys.readouterr().out


def test_no_browser_and_port_go_to_jupyter(capsys):
    command = dry_run(capsys, "--no-browser", "--port", "9999")
    assert command[-3:] == ["--no-browser", "--port=9999", "notebooks/00_tour.ipynb"]


def test_update_in_the_checkout_itself_is_refused(capsys):
    assert main(["lab", "--update", "--dry-run"]) == 2
    assert "git pull" in capsys.readouterr().err


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
    assert main(["lab", "--dir", str(tmp_path), "--prepare-only"]) == 0
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["00_tour.ipynb", "notebooks"]
    # not copied by kaiser-edu lab: no manifest, so it cannot tell edits, and refuses
    assert main(["lab", "--dir", str(tmp_path), "--update"]) == 2
    assert "did not copy" in capsys.readouterr().err


# --- installed from a wheel: the course comes from the package --------------------------
def _course(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.fixture
def pip_installed(tmp_path, monkeypatch):
    """As after `pip install kaiser-edu`: the package is no checkout, its course is in
    kaiser_edu/materials/ (here a small fake one), HOME is empty, cwd holds no course."""
    packaged = _course(tmp_path / "site-packages" / "kaiser_edu" / "materials", {
        "notebooks/00_tour.ipynb": "tour v1", "notebooks/01_virtual_addresses.ipynb": "01 v1",
        "exercises/lab01_addresses.ipynb": "lab01 v1",
        "solutions/lab01_addresses.ipynb": "sol01 v1", "examples/scenarios/a.json": "{}"})
    monkeypatch.setattr(materials, "CHECKOUT_DIR", tmp_path / "site-packages")
    monkeypatch.setattr(materials, "PACKAGED_DIR", packaged)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    return packaged


def test_pip_install_copies_into_home_on_first_use(pip_installed, tmp_path, capsys):
    work = tmp_path / "home" / "kaiser-edu-course"
    command = dry_run(capsys)  # the default folder, and the tour in it
    assert f"--ServerApp.root_dir={work}" in command and command[-1] == "notebooks/00_tour.ipynb"
    (pip_installed / "notebooks" / "00_tour.ipynb").chmod(0o444)  # site-packages read-only
    assert main(["lab", "--prepare-only"]) == 0
    out = capsys.readouterr().out
    assert f"Copied the course (5 files) into {work}" in out and "kaiser-edu lab --dir" in out
    assert (work / "exercises" / "lab01_addresses.ipynb").read_text() == "lab01 v1"
    assert os.stat(work / "notebooks" / "00_tour.ipynb").st_mode & 0o200  # the copy is not


def test_update_brings_new_and_untouched_files_and_keeps_edited_ones(pip_installed, tmp_path,
                                                                      capsys):
    work = tmp_path / "home" / "kaiser-edu-course"
    assert main(["lab", "--prepare-only"]) == 0
    (work / "exercises" / "lab01_addresses.ipynb").write_text("lab01 + my answers")
    (work / "notebooks" / "01_virtual_addresses.ipynb").write_text("01 + my notes")
    (work / "my_own.ipynb").write_text("mine")
    # a newer package: lesson 00, lab 01 and lesson 01 changed, lesson 05 and lab 05 new
    _course(pip_installed, {"notebooks/00_tour.ipynb": "tour v2",
                            "exercises/lab01_addresses.ipynb": "lab01 v2",
                            "notebooks/01_virtual_addresses.ipynb": "01 v2",
                            "notebooks/05_meltdown.ipynb": "05 v1",
                            "exercises/lab05_meltdown.ipynb": "lab05 v1"})
    capsys.readouterr()
    # without --update: nothing changes, the news is announced
    assert main(["lab", "--prepare-only"]) == 0
    assert "5 course file(s) new or changed" in capsys.readouterr().out
    assert (work / "notebooks" / "00_tour.ipynb").read_text() == "tour v1"
    assert not (work / "notebooks" / "05_meltdown.ipynb").exists()
    # --update: new and untouched files come in, edited ones stay and are named
    assert main(["lab", "--update", "--prepare-only"]) == 0
    out = capsys.readouterr().out
    assert (work / "notebooks" / "00_tour.ipynb").read_text() == "tour v2"
    assert (work / "notebooks" / "05_meltdown.ipynb").read_text() == "05 v1"
    assert (work / "exercises" / "lab05_meltdown.ipynb").read_text() == "lab05 v1"
    assert (work / "exercises" / "lab01_addresses.ipynb").read_text() == "lab01 + my answers"
    assert (work / "notebooks" / "01_virtual_addresses.ipynb").read_text() == "01 + my notes"
    assert (work / "my_own.ipynb").read_text() == "mine"
    assert "Updated (you had not changed them): notebooks/00_tour.ipynb" in out
    assert ("Left alone because you edited them" in out
            and "exercises/lab01_addresses.ipynb" in out
            and "notebooks/01_virtual_addresses.ipynb" in out)
    assert "New in the course" in out and "notebooks/05_meltdown.ipynb" in out
    # once more: the edited ones are still named, the rest is in step
    assert main(["lab", "--update", "--prepare-only"]) == 0
    out = capsys.readouterr().out
    assert "Updated" not in out and "New in the course" not in out
    assert "exercises/lab01_addresses.ipynb" in out


def test_a_file_the_student_restored_by_hand_counts_as_untouched(pip_installed, tmp_path):
    """Only content matters: an edit undone (same bytes as copied) may be updated."""
    work = tmp_path / "home" / "kaiser-edu-course"
    assert main(["lab", "--prepare-only"]) == 0
    (work / "exercises" / "lab01_addresses.ipynb").write_text("lab01 v1")
    _course(pip_installed, {"exercises/lab01_addresses.ipynb": "lab01 v2"})
    report = materials.prepare(pip_installed, work, update=True)
    assert report.updated == ["exercises/lab01_addresses.ipynb"] and not report.kept_edited


def test_the_current_folder_is_used_when_it_holds_the_course(pip_installed, tmp_path, capsys):
    here = _course(tmp_path / "elsewhere", {"notebooks/00_tour.ipynb": "a checkout's tour"})
    command = dry_run(capsys)
    assert f"--ServerApp.root_dir={here}" in command


def test_no_course_anywhere_is_one_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(materials, "CHECKOUT_DIR", tmp_path / "a")
    monkeypatch.setattr(materials, "PACKAGED_DIR", tmp_path / "b")
    monkeypatch.chdir(tmp_path)
    assert main(["lab", "--dir", str(tmp_path / "w"), "--prepare-only"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no course found" in err and "pip install" in err


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
        stop(server)
    names = {item["name"] for item in listing["content"]}
    assert "00_tour.ipynb" in names and "07_entry_exit_pti.ipynb" in names
    with pytest.raises(OSError):  # stopping the command stopped the server: no orphan
        urllib.request.urlopen(url, timeout=2)


def test_a_damaged_record_is_one_clear_error(pip_installed, tmp_path, capsys):
    work = tmp_path / "home" / "kaiser-edu-course"
    assert main(["lab", "--prepare-only"]) == 0
    (work / materials.MANIFEST).write_text("{not json")
    assert main(["lab", "--update", "--prepare-only"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "damaged" in err and materials.MANIFEST in err


def test_an_interrupted_first_copy_is_finished_next_time(pip_installed, tmp_path, monkeypatch):
    work = tmp_path / "home" / "kaiser-edu-course"
    real_copy, copied = materials.shutil.copyfile, []

    def copy_two_then_fail(src, dst):
        if len(copied) == 2:
            raise KeyboardInterrupt
        copied.append(dst)
        return real_copy(src, dst)

    monkeypatch.setattr(materials.shutil, "copyfile", copy_two_then_fail)
    with pytest.raises(KeyboardInterrupt):
        main(["lab", "--prepare-only"])
    monkeypatch.setattr(materials.shutil, "copyfile", real_copy)
    report = materials.prepare(pip_installed, work)
    assert report.first_time and len(report.copied) == 3
    assert materials.course_files(work) == materials.course_files(pip_installed)
    assert not materials.prepare(pip_installed, work).first_time
