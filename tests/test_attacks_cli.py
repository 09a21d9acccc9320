"""``kaiser-edu attack meltdown|kaslr``: output, --json, and one-line errors with status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kaiser_edu.cli import main
from kaiser_edu.kernel.image import SECRET_TEXT


def test_meltdown_reads_the_secret_with_isolation_off(capsys):
    assert main(["attack", "meltdown", "--isolation", "off", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert SECRET_TEXT.decode() in out
    assert "100.0%" in out and "forwarded past a protection fault" in out


def test_meltdown_json_under_pti_recovers_nothing(capsys):
    assert main(["attack", "meltdown", "--isolation", "pti", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["recovered"] == 0 and d["accuracy"] == 0.0
    assert d["why"].startswith("not present in the active page tables")
    assert d["truth_hex"] == SECRET_TEXT.hex()


def test_meltdown_reads_the_victim_through_the_direct_map(capsys):
    assert main(["attack", "meltdown", "--target", "2:0x600000", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["data_text"].startswith("Victim's password") and d["accuracy"] == 1.0


def test_kaslr_json(capsys):
    assert main(["attack", "kaslr", "--method", "entrybleed", "--isolation", "pti",
                 "--seed", "4", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["text_correct"] and d["text_base"] == d["true_text_base"]
    assert d["direct_map_base"] is None


def test_kaslr_text_output_says_not_found(capsys):
    assert main(["attack", "kaslr", "--method", "prefetch", "--isolation", "kaiser"]) == 0
    out = capsys.readouterr().out
    assert "kernel text (_text):  not found" in out


@pytest.mark.parametrize("argv,message", [
    (["meltdown", "--cpu", "pentium"], "--cpu must be one of"),
    (["meltdown", "--isolation", "on"], "--isolation must be one of"),
    (["meltdown", "--target", "0x800000000000"], "not canonical"),
    (["meltdown", "--target", "nowhere"], "target must be"),
    (["meltdown", "--target", "9:0x600000"], "no process with pid 9"),
    (["meltdown", "--bytes", "0"], "--bytes must be in 1..1048576"),
    (["meltdown", "--bytes", "2000000"], "--bytes must be in 1..1048576"),
    (["meltdown", "--bytes", "many"], "--bytes must be an integer"),
    (["meltdown", "--seed", "-1"], "--seed must be in"),
    (["kaslr", "--method", "rowhammer"], "--method must be one of"),
    (["kaslr", "--rounds", "1"], "--rounds must be in 2..1024"),
])
def test_bad_input_one_line_exit_2(capsys, argv, message):
    assert main(["attack", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_no_attack_named(capsys):
    assert main(["attack"]) == 2
    assert "choose an attack" in capsys.readouterr().err


def test_through_the_installed_entry_point():
    done = subprocess.run([sys.executable, "-m", "kaiser_edu", "attack", "meltdown",
                           "--bytes", "9"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "The KAISE" in done.stdout


def test_kaslr_with_flare(capsys):
    assert main(["attack", "kaslr", "--flare", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["flare"] and d["text_base"] is None and d["direct_map_correct"]
    assert main(["attack", "kaslr", "--flare", "--method", "entrybleed"]) == 0
    assert "FLARE" in (out := capsys.readouterr().out) and "(correct)" in out
