"""``kaiser-edu walk FILE.json``: the example scenarios, A/D reporting, stdin, and refusals.

The golden outputs below were worked out by hand from the SDM rules (Vol. 3A ch. 4), not
copied from the program: each comment gives the derivation. examples/scenarios/README.md
shows the same outputs, and a test keeps the two in step.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kaiser_edu.cli import main
from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw.scenario import ScenarioError, load_scenario, parse_json, run_scenario

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "scenarios"

# #PF error code bits: P=1 W=2 U=4 RSVD=8 I=16 PK=32.
GOLDEN = {
    # 0x7f0000001234: PML4 254 (entry 0x1000 + 254*8 = 0x17f0), PDPT 0, PD 0, PT 1 (0x4008),
    # offset 0x234. The PTE maps 0x5000 user RW, XD.
    "user_page_4k.json": [
        '{"ok": true, "pa": "0x5234", "page_size": 4096}',  # read
        '{"ok": true, "pa": "0x5234", "page_size": 4096}',  # write: RW at every level
        '{"ok": false, "fault": "PF", "error_code": 21, "cr2": "0x7f0000001234"}',  # XD: P|U|I
        '{"ok": false, "fault": "PF", "error_code": 4, "cr2": "0x7f0000002000"}',  # PTE 2 = 0: U
        # A (0x20) in the four entries, D (0x40) in the PTE from the write.
        '{"memory": {"0x17f0": "0x2027", "0x2000": "0x3027", "0x3000": "0x4027", '
        '"0x4008": "0x8000000000005067"}}',
    ],
    # 0xffffffff81234567: PML4 511 (0x1ff8), PDPT 510 (0x2ff0), PD 9 (0x3048), 2 MiB offset
    # 0x34567; PDE 0x1200183 = P|RW|PS|G, frame 0x1200000. PD 10 (0x3050) = 0x1402083 has
    # bit 13 set: reserved in a 2 MiB leaf. 0xffff888012345678: PML4 273 (0x1888), PDPT 0
    # (0x4000) = 1 GiB leaf at 0, XD; offset 0x12345678.
    "huge_pages.json": [
        '{"ok": true, "pa": "0x1234567", "page_size": 2097152}',  # CPL 0 read
        '{"ok": true, "pa": "0x1234567", "page_size": 2097152}',  # CPL 0 fetch, no XD
        '{"ok": false, "fault": "PF", "error_code": 5, "cr2": "0xffffffff81234567"}',  # U/S=0
        '{"ok": false, "fault": "PF", "error_code": 9, "cr2": "0xffffffff81400010"}',  # P|RSVD
        '{"ok": true, "pa": "0x12345678", "page_size": 1073741824}',  # 1 GiB
        '{"ok": false, "fault": "PF", "error_code": 17, "cr2": "0xffff888012345678"}',  # P|I
        # The bad PDE (0x3050) and nothing after it gets A; 0x80 | 0x20 = 0xa0.
        '{"memory": {"0x1888": "0x4023", "0x1ff8": "0x2023", "0x2ff0": "0x3023", '
        '"0x3048": "0x12001a3", "0x4000": "0x80000000000000a3"}}',
    ],
    # 0x400000: PD 2 (0x3010), PT 0 (0x4000) = 0x5005 user RO exec; 0x401000: PT 1 (0x4008)
    # = user RW XD data. SMEP, SMAP, WP on.
    "smep_smap.json": [
        '{"ok": true, "pa": "0x5000", "page_size": 4096}',  # CPL 3 fetch
        '{"ok": false, "fault": "PF", "error_code": 17, "cr2": "0x400000"}',  # SMEP: P|I
        '{"ok": false, "fault": "PF", "error_code": 1, "cr2": "0x401008"}',  # SMAP, AC=0: P
        '{"ok": true, "pa": "0x6008", "page_size": 4096}',  # AC=1
        '{"ok": false, "fault": "PF", "error_code": 3, "cr2": "0x400000"}',  # WP, R/W=0: P|W
        '{"ok": true, "pa": "0x6010", "page_size": 4096}',  # CPL 3 write
        '{"memory": {"0x1000": "0x2027", "0x2000": "0x3027", "0x3010": "0x4027", '
        '"0x4000": "0x5025", "0x4008": "0x8000000000006067"}}',
    ],
    # 4 levels: canonical iff bits 63:47 are equal. No memory: every PML4E is not present.
    "non_canonical_gp.json": [
        '{"ok": false, "fault": "GP"}',  # 0x0000800000000000
        '{"ok": false, "fault": "GP"}',  # 0xffff7fffffffffff
        '{"ok": false, "fault": "GP"}',  # 0xdead000000000000
        '{"ok": false, "fault": "PF", "error_code": 4, "cr2": "0x7fffffffffff"}',  # U
        '{"ok": false, "fault": "PF", "error_code": 2, "cr2": "0xffff800000000000"}',  # W
        '{"ok": false, "fault": "PF", "error_code": 20, "cr2": "0x401000"}',  # U|I (NXE=1)
        '{"memory": {}}',
    ],
    # 5 levels: 0x800000000abc = PML5 0 (0x1000), PML4 256 (0x2000 + 0x800), PDPT 0, PD 0,
    # PT 0 -> 0x6000. 0x0100000000000000: bit 56 set, 63:57 clear: #GP. 0xff00000000000000:
    # canonical, PML5 index 256 (0x1800) is zero: CPL 0 read, not present: 0.
    "five_level.json": [
        '{"ok": true, "pa": "0x6abc", "page_size": 4096}',
        '{"ok": false, "fault": "GP"}',
        '{"ok": false, "fault": "PF", "error_code": 0, "cr2": "0xff00000000000000"}',
        '{"memory": {"0x1000": "0x2027", "0x2800": "0x3027", "0x3000": "0x4027", '
        '"0x4000": "0x5027", "0x5000": "0x8000000000006027"}}',
    ],
    # PKRU 0x18: key 1 WD (bit 3), key 2 AD (bit 4). 0x10000 = PT 16 (0x4080) key 1 RW exec;
    # 0x11000 = PT 17 (0x4088) key 0 RW XD; 0x12000 = PT 18 (0x4090) key 2 RW XD.
    "protection_keys.json": [
        '{"ok": true, "pa": "0x5000", "page_size": 4096}',  # WD does not stop reads
        '{"ok": false, "fault": "PF", "error_code": 39, "cr2": "0x10008"}',  # P|W|U|PK
        '{"ok": false, "fault": "PF", "error_code": 35, "cr2": "0x10010"}',  # WP: P|W|PK
        '{"ok": true, "pa": "0x5020", "page_size": 4096}',  # keys never apply to fetches
        '{"ok": true, "pa": "0x6008", "page_size": 4096}',  # key 0
        '{"ok": false, "fault": "PF", "error_code": 37, "cr2": "0x12000"}',  # AD: P|U|PK
        '{"memory": {"0x1000": "0x2027", "0x2000": "0x3027", "0x3000": "0x4027", '
        '"0x4080": "0x800000000005027", "0x4088": "0x8000000000006067"}}',
    ],
}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}  # NUMBA_CACHE_DIR is inherited


def _walk_process(arg: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kaiser_edu", "walk", "--json", arg],
        input=stdin,
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=300,
    )


def _walk_in_process(arg: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(["walk", "--json", arg])
    out, err = capsys.readouterr()
    return status, out, err


# --- the examples -------------------------------------------------------------------------
def test_every_example_has_a_golden_output() -> None:
    assert {p.name for p in EXAMPLES.glob("*.json")} == set(GOLDEN)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_example_as_a_command(name: str) -> None:
    proc = _walk_process(str(EXAMPLES / name))
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.splitlines() == GOLDEN[name]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_example_in_process(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = _walk_in_process(str(EXAMPLES / name), capsys)
    assert (status, err) == (0, "")
    assert out.splitlines() == GOLDEN[name]


def test_readme_shows_the_golden_outputs() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    sections = re.split(r"^## `([\w.]+)`.*$", readme, flags=re.M)[1:]
    shown = {
        name: [line.strip() for line in body.splitlines() if line.startswith("    {")]
        for name, body in zip(sections[::2], sections[1::2])
    }
    assert shown == GOLDEN


def test_default_output_is_a_readable_table(capsys: pytest.CaptureFixture[str]) -> None:
    """Without --json: each access in words, the error code in hex with its bits, and the
    A/D bits the walks wrote, old value -> new."""
    status = main(["walk", str(EXAMPLES / "user_page_4k.json")])
    out, err = capsys.readouterr()
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["#", "access", "result"]
    assert lines[1].split()[:6] == ["1", "read", "0x7f0000001234", "at", "CPL", "3"]
    assert "-> 0x5234 (4 KiB page)" in lines[1]
    assert ("#PF error code 0x15 (P=1 W=0 U=1 RSVD=0 I=1 PK=0): user-mode instruction fetch "
            "from a present page (protection violation); CR2=0x7f0000001234") in lines[3]
    assert "#PF error code 0x4 (P=0 W=0 U=1" in lines[4]
    assert lines[5] == "memory written by the walks (accessed/dirty bits):"
    assert "  0x4008: 0x8000000000005007 -> 0x8000000000005067" in lines


def test_table_names_gp_and_ac(capsys: pytest.CaptureFixture[str]) -> None:
    main(["walk", str(EXAMPLES / "non_canonical_gp.json")])
    out = capsys.readouterr().out
    assert "1  read 0x800000000000 at CPL 3" in out and "#GP(0): the address is not canonical" in out
    assert out.rstrip().endswith("memory written by the walks: none")
    main(["walk", str(EXAMPLES / "smep_smap.json")])
    assert "read 0x401008 at CPL 0, AC=1   -> 0x6008 (4 KiB page)" in capsys.readouterr().out


# --- stdin --------------------------------------------------------------------------------
def test_stdin_as_a_command() -> None:
    text = (EXAMPLES / "user_page_4k.json").read_text()
    proc = _walk_process("-", stdin=text)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.splitlines() == GOLDEN["user_page_4k.json"]


def test_stdin_in_process(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO((EXAMPLES / "smep_smap.json").read_text()))
    status, out, err = _walk_in_process("-", capsys)
    assert (status, err) == (0, "")
    assert out.splitlines() == GOLDEN["smep_smap.json"]


# --- semantics ----------------------------------------------------------------------------
# A 4 KiB user page at 0x1000: PML4 0 (0x1000), PDPT 0 (0x2000), PD 0 (0x3000), PT 1 (0x4008).
TABLES = {"0x1000": "0x2007", "0x2000": "0x3007", "0x3000": "0x4007", "0x4008": "0x5007"}


def _run(obj: dict) -> list[dict]:
    return run_scenario(load_scenario(obj))


def test_ad_updates_accumulate_and_only_changes_are_listed() -> None:
    memory = {**TABLES, "0x1000": "0x2027"}  # the PML4E already has A: not a change
    out = _run(
        {
            "memory": memory,
            "accesses": [
                {"va": "0x1008", "kind": "read"},  # A in PDPTE, PDE, PTE
                {"va": "0x1010", "kind": "write"},  # D in the PTE, on top of the earlier A
                {"va": "0x1018", "kind": "write", "cpl": 3, "ac": False},  # nothing new
            ],
        }
    )
    assert [o["pa"] for o in out[:3]] == ["0x5008", "0x5010", "0x5018"]
    assert out[3] == {"memory": {"0x2000": "0x3027", "0x3000": "0x4027", "0x4008": "0x5067"}}


def test_a_faulting_leaf_gets_no_accessed_bit() -> None:
    memory = {**TABLES, "0x4008": "0x5005"}  # read-only
    out = _run({"memory": memory, "accesses": [{"va": "0x1000", "kind": "write"}]})
    assert out[0] == {"ok": False, "fault": "PF", "error_code": 7, "cr2": "0x1000"}  # P|W|U
    assert out[1] == {"memory": {"0x1000": "0x2027", "0x2000": "0x3027", "0x3000": "0x4027"}}


def test_defaults_and_plain_integers() -> None:
    hexed = {
        "paging": {"cr3": "0x1000"},
        "memory": TABLES,
        "accesses": [{"va": "0x1abc", "kind": "read", "cpl": 3, "ac": False}],
    }
    plain = {"memory": {k: int(v, 16) for k, v in TABLES.items()}, "accesses": [{"va": 0x1ABC}]}
    assert (
        _run(hexed)
        == _run(plain)
        == [
            {"ok": True, "pa": "0x5abc", "page_size": 4096},
            {
                "memory": {
                    "0x1000": "0x2027",
                    "0x2000": "0x3027",
                    "0x3000": "0x4027",
                    "0x4008": "0x5027",
                }
            },
        ]
    )


def test_hex_strings_may_use_underscores_and_capitals() -> None:
    out = _run(
        {
            "memory": {k.upper().replace("0X", "0x"): v for k, v in TABLES.items()},
            "accesses": [{"va": "0X0000_0000_0000_1ABC"}],
        }
    )
    assert out[0]["pa"] == "0x5abc"


def test_pcid_in_cr3_changes_nothing_without_a_tlb() -> None:
    base = {"memory": TABLES, "accesses": [{"va": "0x1234"}]}
    with_pcid = {**base, "paging": {"cr3": "0x1fff", "pcide": True}}
    assert _run(with_pcid) == _run(base)


def test_run_scenario_starts_from_the_initial_memory_each_time() -> None:
    scenario = load_scenario({"memory": TABLES, "accesses": [{"va": "0x1000", "kind": "write"}]})
    assert run_scenario(scenario) == run_scenario(scenario)
    assert scenario.memory[0x4008] == 0x5007


def test_empty_accesses_give_only_the_memory_line() -> None:
    assert _run({"accesses": []}) == [{"memory": {}}]


# --- refusals -----------------------------------------------------------------------------
def _doc(**top: object) -> str:
    return json.dumps({"memory": TABLES, "accesses": [{"va": "0x1000"}], **top})


def _access(**fields: object) -> str:
    return json.dumps({"accesses": [{"va": "0x1000"}, {"va": "0x2000"}, {"va": 0, **fields}]})


BAD = [
    # (test id, file text, text the message must contain)
    ("json-syntax", '{"accesses": [}', "invalid JSON at line 1, column 15"),
    (
        "json-trailing-comma",
        '{\n "accesses": [\n  {"va": 1},\n ]\n}',
        "invalid JSON at line 4, column 2",
    ),
    ("json-empty", "", "invalid JSON at line 1, column 1"),
    ("json-nan", '{"accesses": [{"va": NaN}]}', "NaN is not a JSON number"),
    ("top-not-object", "[]", "top level: must be a JSON object"),
    ("top-unknown", _doc(_comment="hi"), 'top level: unknown key "_comment" (allowed: paging'),
    (
        "top-duplicate",
        '{"accesses": [], "accesses": []}',
        'top level: key "accesses" is given more than once',
    ),
    ("no-accesses", '{"memory": {}}', 'top level: missing key "accesses"'),
    ("accesses-not-list", '{"accesses": {}}', "accesses: must be a JSON list"),
    ("access-not-object", '{"accesses": [5]}', "accesses[0]: must be a JSON object"),
    ("access-unknown", _access(cpu=0), 'accesses[2]: unknown key "cpu" (did you mean "cpl"?'),
    ("access-no-va", '{"accesses": [{"kind": "read"}]}', 'accesses[0]: missing key "va"'),
    (
        "kind",
        _access(kind="exec"),
        'accesses[2].kind: must be one of read, write, fetch (got "exec")',
    ),
    ("cpl-range", _access(cpl=4), "accesses[2].cpl: must be 0, 1, 2 or 3 (got 4)"),
    ("cpl-bool", _access(cpl=True), "accesses[2].cpl: must be a JSON integer or a hex string"),
    ("cpl-float", _access(cpl=3.0), "accesses[2].cpl: must be a JSON integer or a hex string"),
    (
        "cpl-decimal-string",
        _access(cpl="3"),
        'accesses[2].cpl: must be a JSON integer or a hex string such as "0x1f" (got "3")',
    ),
    ("ac", _access(ac="yes"), 'accesses[2].ac: must be true or false (got "yes")'),
    ("va-too-big-hex", _access(va="0x10000000000000000"), "accesses[2].va: must be below 2**64"),
    ("va-too-big-int", _access(va=1 << 64), "accesses[2].va: must be below 2**64"),
    ("va-negative", _access(va=-1), "accesses[2].va: must not be negative"),
    ("va-not-hex", _access(va="0x12g4"), "accesses[2].va: must be a JSON integer or a hex"),
    ("va-no-prefix", _access(va="1000"), '(got "1000")'),
    ("paging-not-object", _doc(paging=[4]), "paging: must be a JSON object"),
    (
        "paging-unknown",
        _doc(paging={"lvls": 5}),
        'paging: unknown key "lvls" (did you mean "levels"?',
    ),
    ("levels", _doc(paging={"levels": 3}), "paging.levels: must be 4 or 5 (got 3)"),
    ("levels-bool", _doc(paging={"levels": True}), "paging.levels: must be a JSON integer"),
    ("maxphyaddr", _doc(paging={"maxphyaddr": 53}), "paging.maxphyaddr: must be 32 to 52"),
    ("flag", _doc(paging={"smep": 1}), "paging.smep: must be true or false (got 1)"),
    (
        "cr3-above-maxphyaddr",
        _doc(paging={"maxphyaddr": 36, "cr3": "0x1000000000"}),
        "paging.cr3: bits 62:36 are reserved",
    ),
    ("cr3-bit-63", _doc(paging={"cr3": "0x8000000000001000"}), "paging.cr3: bit 63 must be 0"),
    ("cr3-too-big", _doc(paging={"cr3": "0x10000000000001000"}), "paging.cr3: must be below"),
    ("pkru", _doc(paging={"pkru": "0x100000000"}), "paging.pkru: must be below 2**32"),
    ("memory-not-object", _doc(memory=[]), "memory: must be a JSON object"),
    (
        "memory-misaligned",
        _doc(memory={"0x1003": "0x1"}),
        'memory["0x1003"]: physical address must be 8-byte aligned',
    ),
    (
        "memory-key-not-hex",
        _doc(memory={"0x10g0": "0x1"}),
        'memory["0x10g0"]: physical address must be a hex string',
    ),
    (
        "memory-key-decimal",
        _doc(memory={"4096": "0x1"}),
        'memory["4096"]: physical address must be a hex string',
    ),
    (
        "memory-key-above-maxphyaddr",
        _doc(paging={"maxphyaddr": 36}, memory={"0x1000000000": "0x1"}),
        'memory["0x1000000000"]: physical address is outside the 36-bit physical address space',
    ),
    (
        "memory-key-2**64",
        _doc(memory={"0x10000000000000000": "0x1"}),
        'memory["0x10000000000000000"]: physical address is outside',
    ),
    (
        "memory-value-too-big",
        _doc(memory={"0x1000": "0x10000000000000000"}),
        'memory["0x1000"]: must be below 2**64',
    ),
    (
        "memory-value-not-hex",
        _doc(memory={"0x1000": "0x2007z"}),
        'memory["0x1000"]: must be a JSON integer or a hex string',
    ),
    ("memory-value-null", _doc(memory={"0x1000": None}), 'memory["0x1000"]: must be a JSON'),
    (
        "memory-duplicate",
        '{"memory": {"0x1000": "0x1", "0x1000": "0x2"}, "accesses": []}',
        'memory: key "0x1000" is given more than once',
    ),
    (
        "memory-alias",
        _doc(memory={"0x1000": "0x1", "0x01000": "0x2"}),
        'memory["0x01000"]: the same physical address as memory["0x1000"]',
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_malformed_scenario_is_refused(
    text: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    status, out, err = _walk_in_process(str(path), capsys)
    assert status == 2
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    assert expected in err
    assert "Traceback" not in err


def test_exact_messages_from_the_format_description(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for text, message in [
        (
            _access(kind="exec"),
            'error: accesses[2].kind: must be one of read, write, fetch (got "exec")\n',
        ),
        (
            _doc(memory={"0x1003": "0x1"}),
            'error: memory["0x1003"]: physical address must be 8-byte aligned\n',
        ),
    ]:
        (tmp_path / "bad.json").write_text(text)
        assert _walk_in_process(str(tmp_path / "bad.json"), capsys) == (2, "", message)


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.json"
    status, out, err = _walk_in_process(str(path), capsys)
    assert (status, out) == (2, "")
    assert err.startswith(f"error: {path}: cannot read the scenario file")


def test_directory_and_binary_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _walk_in_process(str(tmp_path), capsys)[0] == 2
    (tmp_path / "bin.json").write_bytes(b'{"accesses": ["\xff"]}')
    status, _, err = _walk_in_process(str(tmp_path / "bin.json"), capsys)
    assert status == 2 and "not UTF-8" in err


@pytest.mark.parametrize("case", ["kind", "json-syntax", "memory-misaligned", "cr3-bit-63"])
def test_refusal_as_a_command_has_no_traceback(case: str, tmp_path: Path) -> None:
    text, expected = next(c[1:] for c in BAD if c[0] == case)
    path = tmp_path / "bad.json"
    path.write_text(text)
    proc = _walk_process(str(path))
    assert (proc.returncode, proc.stdout) == (2, "")
    assert expected in proc.stderr and "Traceback" not in proc.stderr


def test_missing_file_and_bad_stdin_as_a_command(tmp_path: Path) -> None:
    proc = _walk_process(str(tmp_path / "nope.json"))
    assert proc.returncode == 2 and "nope.json" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _walk_process("-", stdin='{"accesses": [{"va": "0x1", "kind": "exec"}]}')
    assert proc.returncode == 2 and "accesses[0].kind" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_load_scenario_raises_a_kaiser_edu_error_naming_the_field() -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario({"accesses": [{"va": 0}, {"va": 0, "cpl": 7}]})
    assert info.value.field == "accesses[1].cpl"
    assert isinstance(info.value, KaiserEduError)
    with pytest.raises(KaiserEduError, match="line 1, column 2"):
        parse_json("{]")
