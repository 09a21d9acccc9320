"""Practice problems (kaiser_edu/course/practice.py), ``kaiser-edu practice`` and the
lesson-02 widget.

Golden outputs live in tests/golden/practice/, one file per command line in GOLDEN. Five of
them were checked by hand (index arithmetic, entry addresses, error codes); the derivations
are in the comments below. The other files pin the output against accidental change. To
regenerate one after an intended change, run its command line with ``> FILE`` and check the
diff by reading it, not by trusting it.

Beyond the goldens, every answer for 200 seeds of each kind is checked against a machine
rebuilt *from the problem text alone* (registers, memory dump, access): the reference walk
and the numba MMU on that machine must give the result the answer states, and the answer's
index and entry-address arithmetic must be right. This also proves that the text holds
everything needed to solve the problem.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kaiser_edu.cli import main
from kaiser_edu.course import practice, practice_cli
from kaiser_edu.course.practice import DIFFICULTIES, KINDS, Access, make_problem, rights_check
from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.mmu import MMU
from kaiser_edu.hw.physmem import PhysMem
from kaiser_edu.hw.regs import Registers
from kaiser_edu.hw.walk import access_rights_fault, walk

GOLDEN_DIR = Path(__file__).parent / "golden" / "practice"

# #PF error code bits: P=1 W=2 U=4 RSVD=8 I/D=0x10 PK=0x20.
GOLDEN = {
    # Checked by hand. va 0x7f9104b09d29: >>36 = 0x7f9, >>39 = 0xff (255): entry
    # 0x161105000 + 0x7f8 = 0x1611057f8 = 0xb52d1067 (P RW US A D). >>28 = 0x7f910, >>30 =
    # 0x1fe44, & 0x1ff = 0x44 (68): 0xb52d1000 + 0x220. >>20 = 0x7f9104b, >>21 = 0x3fc8825,
    # & 0x1ff = 0x25 (37): 0x2e278f000 + 0x128. >>12 = 0x7f9104b09, & 0x1ff = 0x109 (265):
    # 0x1f7d6b000 + 0x848 = 0x2ed695007 (P RW US, A clear). PA 0x2ed695000 + 0xd29; the CPU
    # sets A in the PTE (0x007 -> 0x027).
    "translate-easy-2.txt": ["translate", "--seed", "2", "--difficulty", "easy"],
    "translate-1.txt": ["translate", "--seed", "1"],
    # Checked by hand. va 0x7f0740ec262e: PML4 index 0x7f0 >> 3 = 0xfe (254), entry
    # 0x3ae0d2000 + 0x7f0. PDPT index 0x7f074 >> 2 = 0x1fc1d, & 0x1ff = 0x1d (29), entry
    # 0x9fe3f000 + 0xe8 = 0x80000000400000e7: PS=1 in a PDPTE, a 1 GiB page at 0x40000000.
    # Offset = va & 0x3fffffff = 0xec262e; PA 0x40ec262e. User read, U=1 everywhere: allowed.
    "translate-4.txt": ["translate", "--seed", "4"],
    "translate-hard-2.txt": ["translate", "--seed", "2", "--difficulty", "hard"],
    # Checked by hand: Meltdown's access, 5-level. va 0xffffffffb7463b28: bits 56:48 and
    # 47:39 are all ones (511, entries at +0xff8); bits 38:30 = 0x7f << 2 | 0b10 = 0x1fe (510,
    # +0xff0); bits 29:21 = (0xb7463b28 >> 21) & 0x1ff = 0x5ba & 0x1ff = 0x1ba (442, +0xdd0)
    # = 0x80000002b08001e3, a 2 MiB kernel page (PS G NX). No entry has U/S=1: a CPL 3 read
    # is #PF with P=1, U=1 = 0x5.
    "translate-5-la57.txt": ["translate", "--seed", "5", "--levels", "5"],
    # Checked by hand. va 0x550c10976d67: PML4 0x550 >> 3 = 0xaa (170) at 0x34dc1d550;
    # PDPT 0x550c1 >> 2 = 0x15430 -> 0x30 (48) at 0x5635180; PD 0x550c109 >> 1 =
    # 0x2a86084 -> 0x84 (132) at 0x28bf6c420; PT 0x976 & 0x1ff = 0x176 (374) at
    # 0x10013ebb0 = 0x800000029332d025 (P US A NX, R/W=0). A CPL 3 write to a read-only
    # user page: #PF with P=1, W=1, U=1 = 0x7; not a fetch, so I/D=0.
    "fault-easy-3.txt": ["fault", "--seed", "3", "--difficulty", "easy"],
    # Checked by hand. va 0xffffc9cc7dd6e292 (vmalloc): PML4 0xc9c >> 3 = 0x193 (403) at
    # 0x13e813c98 = 0x1ede51063 (no U); PDPT 0xc9cc7 >> 2 -> 0x131 (305) at 0x1ede51988;
    # PD 0xc9cc7dd >> 1 -> 0x1ee (494) at 0x2e93b4f70; PT 0xd6e & 0x1ff = 0x16e (366) at
    # 0x28dcb7b70 = 0x80000003d3847101 (P G NX). A CPL 3 fetch: XD=1 and U/S=0 both deny.
    # Error code P=1 | U=4 | I/D=0x10 (EFER.NXE=1 reports it) = 0x15.
    "fault-6.txt": ["fault", "--seed", "6"],
    # 5-level, hard (raw registers): bits 63:56 of 0x4000555a62956597 are 0x40, neither 0
    # nor 0xff: #GP before any table is read.
    "fault-hard-2-la57.txt": ["fault", "--seed", "2", "--levels", "5", "--difficulty", "hard"],
    "walk-2-la57.txt": ["walk", "--seed", "2", "--levels", "5"],
    "walk-hard-1.txt": ["walk", "--seed", "1", "--difficulty", "hard"],
}


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["practice", *args])
    out, err = capsys.readouterr()
    return code, out, err


# --- goldens ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden(capsys, name):
    code, out, err = run_cli(capsys, *GOLDEN[name], "--answer")
    assert (code, err) == (0, "")
    assert out == (GOLDEN_DIR / name).read_text(), f"{name} changed: see the module docstring"


def test_golden_files_all_listed():
    assert {p.name for p in GOLDEN_DIR.glob("*.txt")} == set(GOLDEN)


# --- the answer agrees with the machine described by the text ---------------------------
_REG = re.compile(r"^  (CR0|CR3|CR4|EFER)\s+= (0x[0-9a-f]{16})", re.M)
_MEM = re.compile(r"^  (0x[0-9a-f]{12}): (0x[0-9a-f]{16})$", re.M)
_ACCESS = re.compile(r"^Access: (data read|data write|instruction fetch), CPL (\d) \([a-z ]+\), "
                     r"RFLAGS\.AC = ([01]), virtual address (0x[0-9a-f]{16})$", re.M)
_KINDS = {"data read": "read", "data write": "write", "instruction fetch": "fetch"}


def machine_from_text(text: str):
    """Registers, memory and access as a student would read them off the problem."""
    maxphy = int(re.search(r"MAXPHYADDR = (\d+)", text).group(1))
    regs = {name.lower(): int(value, 16) for name, value in _REG.findall(text)}
    mem = PhysMem(maxphy)
    for pa, value in _MEM.findall(text):
        mem.write_qword(int(pa, 16), int(value, 16))
    kind, cpl, ac, va = _ACCESS.search(text).groups()
    return (Registers(maxphyaddr=maxphy, **regs), mem,
            Access(int(va, 16), _KINDS[kind], int(cpl), ac == "1"))


def stated_result(answer: str) -> tuple[int, int | None, int | None]:
    """(outcome, pa, error code) from the answer's last line."""
    last = answer.splitlines()[-1]
    if m := re.fullmatch(r"Answer: #GP\(0\): (0x[0-9a-f]{16}) is not canonical\..*", last):
        return b.OUTCOME_GP, None, None
    if m := re.fullmatch(r"Answer: #PF, error code (0x[0-9a-f]+), CR2 = 0x[0-9a-f]{16}", last):
        return b.OUTCOME_PF, None, int(m.group(1), 16)
    m = re.fullmatch(r"Answer: 0x[0-9a-f]{16} -> physical (0x[0-9a-f]{12}) \(.*\); "
                     r"the access is allowed\.", last)
    assert m, f"unexpected last line: {last!r}"
    return b.OUTCOME_OK, int(m.group(1), 16), None


def check_problem(p) -> None:
    text, answer = p.text(), p.answer()
    regs, mem, acc = machine_from_text(text)
    assert regs.levels == p.levels and acc == p.access
    assert mem.nonzero_qwords() == p.memory
    mmu_mem = PhysMem(mem.maxphyaddr)  # a second copy: the walk sets A/D bits in its own
    for pa, value in p.memory.items():
        mmu_mem.write_qword(pa, value)
    ref = walk(mem, regs, acc.va, acc.kind, acc.cpl, acc.ac)
    outcome, pa, code = stated_result(answer)
    assert (outcome, pa, code) == (ref.outcome, ref.pa, ref.error_code), answer
    fast = MMU(mmu_mem, regs, tlb=None).access(acc.va, acc.kind, acc.cpl, acc.ac)
    assert (fast.outcome, fast.pa) == (ref.outcome, ref.pa)
    if ref.outcome == b.OUTCOME_PF:
        assert fast.error_code == ref.error_code
        assert f"= {code:#x}: {b.describe_error_code(code)}" in answer
    # The arithmetic shown at each level, and the entries it names, are the walk's.
    indices = re.findall(r"index   = bits (\d+):(\d+) = \(va >> (\d+)\) & 0x1ff = (0x[0-9a-f]+)",
                         answer)
    addresses = re.findall(r"address = (0x[0-9a-f]+) \+ (\d+) \* 8 = (0x[0-9a-f]+)", answer)
    assert len(indices) == len(addresses) == len(ref.steps)
    for (hi, lo, shift, index), (table, n, entry_pa), step in zip(indices, addresses, ref.steps):
        assert int(shift) == int(lo) == int(hi) - 8 == b.level_shift(step.level)
        assert (acc.va >> int(shift)) & 0x1FF == int(index, 16) == int(n)
        assert int(table, 16) + int(n) * 8 == int(entry_pa, 16) == step.entry_pa
    # The rule the answer names agrees with the walk's verdict.
    check = re.search(r"^Check: .* -> (denied|allowed)$", answer, re.M)
    if check:
        assert (check.group(1) == "denied") == (ref.outcome != b.OUTCOME_OK)


@pytest.mark.parametrize("kind", KINDS)
def test_answers_agree_with_walk_200_seeds(kind):
    for seed in range(200):
        difficulty = DIFFICULTIES[seed % 3]
        levels = 5 if seed % 4 == 3 else 4
        check_problem(make_problem(kind, seed, levels=levels, difficulty=difficulty))


def test_rights_check_agrees_with_the_walk_rules():
    """Every combination of page rights, registers and access: the explanation's verdict
    is the walk's (access_rights_fault, SDM 4.6.1), and it always gives a reason."""
    flags = (False, True)
    for kind, cpl, ac, user, writable, nx, wp, smep, smap, nxe in itertools.product(
        ("read", "write", "fetch"), (0, 3), *[flags] * 8
    ):
        regs = Registers.long_mode(wp=wp, smep=smep, smap=smap, nxe=nxe)
        acc = Access(0x1000, kind, cpl, ac)
        denied, reasons = rights_check(acc, user, writable, nx and nxe, regs)
        expected, _ = access_rights_fault(b.ACCESS_KINDS[kind], cpl, ac, user, writable,
                                          nx and nxe, 0, regs)
        assert denied == expected and reasons, (acc, user, writable, nx, regs)


# --- what the generator covers ----------------------------------------------------------
def test_coverage_over_many_seeds():
    seen = set()
    for kind in KINDS:
        for difficulty in DIFFICULTIES:
            for levels in (4, 5):
                for seed in range(40):
                    r = make_problem(kind, seed, levels=levels, difficulty=difficulty).result
                    if r.ok:
                        seen.add(("size", r.page_size))
                    elif r.outcome == b.OUTCOME_GP:
                        seen.add("gp")
                    else:
                        last = r.steps[-1]
                        if not last.entry & b.PAGE_PRESENT:
                            seen.add(("not present at level", last.level))
                        for bit in (b.X86_PF_PROT, b.X86_PF_WRITE, b.X86_PF_USER,
                                    b.X86_PF_RSVD, b.X86_PF_INSTR):
                            if r.error_code & bit:
                                seen.add(("error bit", bit))
                        if r.error_code == b.X86_PF_PROT | b.X86_PF_INSTR:
                            seen.add("supervisor fetch denied (SMEP or XD)")
                    if r.steps and r.steps[0].level == 5:
                        seen.add("5-level walk")
    expected = {("size", s) for s in b.PAGE_SIZES} | {"gp", "5-level walk"}
    expected |= {("not present at level", lvl) for lvl in range(1, 6)}
    expected |= {("error bit", bit) for bit in (1, 2, 4, 8, 16)}
    expected.add("supervisor fetch denied (SMEP or XD)")
    assert expected <= seen, expected - seen


def test_same_seed_same_problem_and_seeds_differ():
    a = make_problem("fault", 42, levels=5, difficulty="hard")
    again = make_problem("fault", 42, levels=5, difficulty="hard")
    assert (a.text(), a.answer()) == (again.text(), again.answer())
    texts = {make_problem("translate", seed).text() for seed in range(50)}
    assert len(texts) == 50
    # The kind is part of the seed: a walk problem is not the translate problem re-asked.
    assert make_problem("walk", 3).memory != make_problem("translate", 3).memory


def test_huge_seeds_and_formats():
    p = make_problem("translate", 2**64 - 1, difficulty="hard")
    text = p.text()
    assert "seed 18446744073709551615" in text
    for pa, value in _MEM.findall(text):  # 16-digit entries, 0x prefixes
        assert len(value) == 18 and len(pa) == 14


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "translat", "seed": 1}, "kind must be one of translate, fault, walk"),
    ({"kind": "walk", "seed": -1}, "seed must be an integer from 0 to 2**64-1"),
    ({"kind": "walk", "seed": 2**64}, "seed must be an integer"),
    ({"kind": "walk", "seed": True}, "seed must be an integer"),
    ({"kind": "walk", "seed": "1"}, "seed must be an integer"),
    ({"kind": "walk", "seed": 1, "levels": 3}, "levels must be 4 or 5"),
    ({"kind": "walk", "seed": 1, "difficulty": "expert"}, "difficulty must be one of easy"),
])
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(KaiserEduError, match=re.escape(message)):
        make_problem(**kwargs)


# --- the command line -------------------------------------------------------------------
def test_cli_problem_then_answer(capsys):
    code, out, err = run_cli(capsys, "translate", "--seed", "1")
    assert (code, err) == (0, "")
    assert out.startswith("Practice problem: translate, seed 1 (4-level paging, medium)")
    assert "Worked answer" not in out
    assert out.rstrip().endswith("(The answer: kaiser-edu practice translate --seed 1 --answer)")
    code, with_answer, _ = run_cli(capsys, "translate", "--seed", "1", "--answer")
    assert with_answer.startswith(out[: out.index("(The answer")])
    assert "Worked answer: translate, seed 1" in with_answer


def test_cli_count_levels_difficulty(capsys):
    code, out, _ = run_cli(capsys, "fault", "--seed", "0x10", "--count", "3", "--levels", "5",
                           "--difficulty", "easy")
    assert code == 0
    heads = re.findall(r"^Practice problem: (.*)$", out, re.M)
    assert heads == [f"fault, seed {s} (5-level paging, easy)" for s in (16, 17, 18)]
    assert "--levels 5 --difficulty easy --answer)" in out


def test_cli_without_seed_prints_a_reusable_seed(capsys):
    code, out, _ = run_cli(capsys, "walk")
    seed = re.match(r"Practice problem: walk, seed (\d+) ", out).group(1)
    assert code == 0 and run_cli(capsys, "walk", "--seed", seed)[1] == out


@pytest.mark.parametrize("args, message", [
    (["translat", "--seed", "1"], "invalid choice: 'translat'"),
    (["translate", "--seed", "-1"], "--seed: must be an integer from 0 to 2**64-1"),
    (["translate", "--seed", "one"], "--seed: must be an integer"),
    (["translate", "--seed", str(2**64)], "--seed: must be an integer"),
    (["translate", "--count", "0"], "--count: must be an integer from 1 to 1000"),
    (["translate", "--levels", "3"], "--levels: invalid choice: 3"),
    (["translate", "--difficulty", "expert"], "--difficulty: invalid choice: 'expert'"),
    ([], "the following arguments are required: kind"),
])
def test_cli_rejects_bad_input(capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        main(["practice", *args])
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and out == ""
    assert message in err and "usage: kaiser-edu practice" in err


def test_cli_bad_input_in_a_real_process_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "kaiser_edu", "practice", "fault", "--seed",
                           "x"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "Traceback" not in proc.stderr and "--seed: must be an integer" in proc.stderr


def test_cli_choices_match_the_generator():
    assert practice_cli.KINDS == practice.KINDS
    assert practice_cli.DIFFICULTIES == practice.DIFFICULTIES


def test_cli_module_does_not_import_the_simulator():
    code = ("import sys, kaiser_edu.course.practice_cli; "
            "print('kaiser_edu.hw.physmem' in sys.modules, 'numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.split() == ["False", "False"]


# --- the widget -------------------------------------------------------------------------
def test_widget_set_values_and_click():
    from kaiser_edu.widgets import _view
    from kaiser_edu.widgets.practice import PracticeWidget

    w = PracticeWidget()
    first = _view.shown(w.output)
    assert "Practice problem: translate, seed 0" in first and "Worked answer" not in first

    w.answer_button.click()
    assert "Worked answer: translate, seed 0" in _view.shown(w.output)
    assert w.answer_button.description == "Hide answer"
    assert "Worked answer" in _view.shown(w.output, "text/plain")

    w.answer_button.click()
    assert "Worked answer" not in _view.shown(w.output)

    w.new_button.click()
    assert w.seed.value == 1 and "translate, seed 1" in _view.shown(w.output)

    w.kind.value = "fault"
    w.difficulty.value = "hard"
    w.levels.value = 5
    w.seed.value = 7
    html = _view.shown(w.output)
    assert "Practice problem: fault, seed 7 (5-level paging, hard)" in html
    expected = make_problem("fault", 7, levels=5, difficulty="hard")
    w.answer_button.click()
    assert w.text == expected.text() + "\n\n" + expected.answer()

    w.new_button.click()  # a new problem hides the answer again
    assert w.state.seed == 8 and not w.state.show_answer
    assert "Worked answer" not in _view.shown(w.output)


def test_widget_model_is_pure():
    from kaiser_edu.widgets.practice import PracticeState, practice_view, toggle_answer

    state = PracticeState("walk", 3, 4, "easy")
    assert practice_view(state) == practice_view(state)
    html, text = practice_view(toggle_answer(state))
    assert "&#10004; allowed" in html or "&#10008; faults" in html
    assert text.endswith(make_problem("walk", 3, difficulty="easy").answer())


def test_widget_refuses_bad_arguments():
    from kaiser_edu.widgets.practice import PracticeWidget

    with pytest.raises(KaiserEduError, match="difficulty must be one of"):
        PracticeWidget(difficulty="expert")
