"""JSON scenarios for ``kaiser-edu walk FILE.json``: page tables, registers and accesses in one
file, translated by the reference walk (:func:`kaiser_edu.hw.walk.walk`).

This docstring is the reference of the format. Worked examples with their expected output
are in ``examples/scenarios/`` (see its README.md).

The file
========

One JSON object with three keys::

    {"paging": {"levels": 4, "cr3": "0x1000", "cr0_wp": true, "smep": false, "smap": false,
                "nxe": true, "pke": false, "pkru": "0x0", "pcide": false, "maxphyaddr": 52},
     "memory": {"0x1000": "0x2007", "0x2000": "0x3007"},
     "accesses": [{"va": "0x7f0000001234", "kind": "read", "cpl": 3, "ac": false}]}

``paging`` (optional; every field optional, defaults as shown above)
    ``levels``      4, or 5 for 5-level paging (CR4.LA57).
    ``cr3``         CR3: the top-level table (PML4, or PML5 with 5 levels) is at bits
                    MAXPHYADDR-1:12. Bits 11:0 are the PCID when ``pcide`` is true (any value
                    0 to 0xfff is allowed) and PWT/PCD/ignored bits otherwise; either way the
                    walk ignores them, and with no TLB in a scenario the PCID changes nothing
                    in the output. Bits 62:MAXPHYADDR are reserved and refused, as is bit 63
                    (the NOFLUSH hint belongs to the MOV instruction, it is never in CR3).
    ``cr0_wp``      CR0.WP: supervisor writes honour R/W=0.
    ``smep``        CR4.SMEP: supervisor instruction fetches from user pages fault.
    ``smap``        CR4.SMAP: supervisor data accesses to user pages fault unless ``ac``.
    ``nxe``         EFER.NXE: bit 63 (XD) means no-execute; with ``nxe`` false it is reserved.
    ``pke``         CR4.PKE: protection keys (bits 62:59 of the leaf) apply to user pages.
    ``pkru``        PKRU, a 32-bit value: for key k, bit 2k = access disable, 2k+1 = write
                    disable.
    ``pcide``       CR4.PCIDE (see ``cr3``).
    ``maxphyaddr``  physical address width, 32 to 52 bits. Entry bits 51:MAXPHYADDR are
                    reserved (a walk that meets one set faults with RSVD).

``memory`` (optional, default empty)
    Physical memory: ``{"address": value}``, each key an 8-byte-aligned physical address
    below 2**MAXPHYADDR written as a hex string, each value the 64-bit qword stored there.
    Memory not listed reads as zero (a not-present entry). Two keys naming the same address
    (``"0x1000"`` and ``"0x01000"``) are an error.

``accesses`` (required, a list, may be empty)
    Each access is an object:

    ``va``    (required) the linear address, 0 to 2**64-1. A non-canonical address is
              allowed: it is what produces ``#GP``.
    ``kind``  ``"read"`` (default), ``"write"`` or ``"fetch"`` (instruction fetch).
    ``cpl``   0 to 3 (default 3); CPL 3 is a user-mode access, 0 to 2 supervisor.
    ``ac``    RFLAGS.AC (default false): lets a supervisor access reach user pages under SMAP.

Values
------
Every number may be written as a hex string (``"0x1f"``; the prefix is required, the digits
are case-insensitive, ``_`` may separate digit groups: ``"0xffff_8880_0000_0000"``) or as a
plain non-negative JSON integer (``31``). Hex strings are the recommended form for addresses
and entries: they read like the SDM and survive tools that turn large JSON numbers into
floats. Floats, negative numbers, decimal strings and ``true``/``false`` are refused.
Memory *keys* are JSON object keys, which are always strings, so they must be hex strings.
Flags (``cr0_wp``, ``smep``, ... ``ac``) must be JSON ``true`` or ``false``.

Any key not listed above, at any level, is an error (there is no comment key: the
explanations of a scenario belong in a README next to it), as is a key given twice.

What runs
=========
The accesses run in order on one physical memory, with no TLB: every access walks the tables.
Each walk sets A in every table entry it passed through, even when the access then faults,
and A (plus D on a write) in the leaf only when the access is allowed (the rules of
:mod:`kaiser_edu.hw.walk`). The updates of an earlier access are seen by later ones.

Output
======
One JSON object per line, one line per access::

    {"ok": true, "pa": "0x5234", "page_size": 4096}
    {"ok": false, "fault": "PF", "error_code": 5, "cr2": "0x7f0000001234"}
    {"ok": false, "fault": "GP"}

``page_size`` is 4096, 2097152 or 1073741824. ``error_code`` is the #PF error code as a JSON
integer (P=1, W=2, U=4, RSVD=8, I=16, PK=32) and ``cr2`` the faulting address. A last line
lists every qword whose value changed (the A/D updates), by ascending address::

    {"memory": {"0x17f0": "0x2027", "0x4008": "0x8000000000005067"}}

Addresses and values in the output are lowercase hex strings without leading zeros.

Errors
======
A malformed scenario is reported on stderr as ``error: FIELD: PROBLEM`` naming the field by
its path (``paging.levels``, ``memory["0x1003"]``, ``accesses[2].kind``) and what is allowed,
with exit status 2 and no output on stdout. Only the first problem is reported (checked in
the order top level, ``paging``, ``memory``, ``accesses``). A missing or unreadable file and
invalid JSON (with its line and column) are reported the same way. Faults are results, not
errors: a scenario whose accesses all fault exits with status 0.

``FILE`` may be ``-`` to read the scenario from standard input.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from dataclasses import dataclass
from typing import Any

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.physmem import PhysMem
from kaiser_edu.hw.regs import Registers
from kaiser_edu.hw.walk import WalkResult, walk

TOP_KEYS = ("paging", "memory", "accesses")
PAGING_DEFAULTS: dict[str, Any] = {
    "levels": 4,
    "cr3": 0x1000,
    "cr0_wp": True,
    "smep": False,
    "smap": False,
    "nxe": True,
    "pke": False,
    "pkru": 0,
    "pcide": False,
    "maxphyaddr": 52,
}
PAGING_FLAGS = ("cr0_wp", "smep", "smap", "nxe", "pke", "pcide")
ACCESS_KEYS = ("va", "kind", "cpl", "ac")
KINDS = ("read", "write", "fetch")

_HEX = re.compile(r"0[xX][0-9a-fA-F]+(?:_[0-9a-fA-F]+)*")
_U64 = 1 << 64


class ScenarioError(KaiserEduError):
    """A malformed scenario; ``field`` is the path of the offending value."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field


@dataclass(frozen=True)
class Access:
    """One access of a scenario."""

    va: int
    kind: str = "read"
    cpl: int = 3
    ac: bool = False


@dataclass(frozen=True)
class Scenario:
    """A validated scenario: registers, initial memory {pa: qword}, accesses in order."""

    regs: Registers
    memory: dict[int, int]
    accesses: tuple[Access, ...]


# --- JSON text ----------------------------------------------------------------------------
class _JsonObject(dict[str, Any]):
    """A parsed JSON object that remembers keys given more than once."""

    duplicates: tuple[str, ...] = ()


def _object_pairs(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        obj.duplicates = tuple(k for k, _ in pairs if k in seen or seen.add(k))
    return obj


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(text: str, source: str = "<scenario>") -> Any:
    """Parse JSON text; syntax errors become a KaiserEduError with line and column."""
    try:
        return json.loads(text, object_pairs_hook=_object_pairs, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise KaiserEduError(
            f"{source}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from None
    except ValueError as e:  # NaN/Infinity, or an integer with too many decimal digits
        raise KaiserEduError(f"{source}: invalid JSON: {e}") from None
    except RecursionError:
        raise KaiserEduError(f"{source}: invalid JSON: nested too deeply") from None


def read_scenario(path: str) -> Scenario:
    """Load and validate the scenario in file ``path`` (``-`` for standard input)."""
    source = "<stdin>" if path == "-" else path
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except OSError as e:
        raise KaiserEduError(f"{source}: cannot read the scenario file: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise KaiserEduError(f"{source}: not UTF-8 text (byte {e.start}): {e.reason}") from None
    return load_scenario(parse_json(text, source))


# --- validation ---------------------------------------------------------------------------
def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _json_object(value: Any, where: str) -> dict[str, Any]:
    """Check that ``value`` is a JSON object that gives no key twice."""
    if not isinstance(value, dict):
        raise ScenarioError(where, f"must be a JSON object {{...}} (got {_show(value)})")
    duplicates = getattr(value, "duplicates", ())
    if duplicates:
        raise ScenarioError(where, f"key {_show(duplicates[0])} is given more than once")
    return value


def _object(value: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    """A JSON object with only ``allowed`` keys."""
    obj = _json_object(value, where)
    unknown = [k for k in obj if k not in allowed]
    if unknown:
        names = ", ".join(_show(k) for k in unknown)
        close = difflib.get_close_matches(unknown[0], allowed, n=1)
        hint = f"did you mean {_show(close[0])}? " if close else ""
        word = "key" if len(unknown) == 1 else "keys"
        raise ScenarioError(where, f"unknown {word} {names} ({hint}allowed: {', '.join(allowed)})")
    return obj


def _integer(value: Any, where: str) -> int:
    """A non-negative integer given as a hex string or a JSON integer."""
    if isinstance(value, str) and _HEX.fullmatch(value):
        return int(value, 16)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScenarioError(
            where, f'must be a JSON integer or a hex string such as "0x1f" (got {_show(value)})'
        )
    if value < 0:
        raise ScenarioError(where, f"must not be negative (got {value})")
    return value


def _below(value: Any, where: str, limit: int, limit_text: str) -> int:
    number = _integer(value, where)
    if number >= limit:
        raise ScenarioError(where, f"must be below {limit_text} (got {number:#x})")
    return number


def _choice(value: Any, where: str, allowed: tuple[int, ...], text: str) -> int:
    number = _integer(value, where)
    if number not in allowed:
        raise ScenarioError(where, f"must be {text} (got {number})")
    return number


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ScenarioError(where, f"must be true or false (got {_show(value)})")
    return value


def _paging(value: Any) -> Registers:
    p = {**PAGING_DEFAULTS, **_object(value, "paging", tuple(PAGING_DEFAULTS))}
    flags = {name: _flag(p[name], f"paging.{name}") for name in PAGING_FLAGS}
    levels = _choice(p["levels"], "paging.levels", (4, 5), "4 or 5")
    maxphy = _choice(p["maxphyaddr"], "paging.maxphyaddr", tuple(range(32, 53)), "32 to 52")
    cr3 = _cr3(p["cr3"], maxphy)
    pkru = _below(p["pkru"], "paging.pkru", 1 << 32, "2**32 (PKRU is a 32-bit register)")
    try:
        return Registers.long_mode(
            cr3,
            levels=levels,
            wp=flags["cr0_wp"],
            smep=flags["smep"],
            smap=flags["smap"],
            nxe=flags["nxe"],
            pke=flags["pke"],
            pcide=flags["pcide"],
            pkru=pkru,
            maxphyaddr=maxphy,
        )
    except KaiserEduError as e:  # not expected after the checks above; keep the field name
        raise ScenarioError("paging", str(e)) from None


def _cr3(value: Any, maxphyaddr: int) -> int:
    cr3 = _below(value, "paging.cr3", _U64, "2**64")
    if cr3 >> 63:
        raise ScenarioError(
            "paging.cr3",
            f"bit 63 must be 0: it is the NOFLUSH hint of MOV to CR3, never "
            f"stored in CR3 (got {cr3:#x})",
        )
    if cr3 >> maxphyaddr:
        raise ScenarioError(
            "paging.cr3",
            f"bits 62:{maxphyaddr} are reserved with paging.maxphyaddr = "
            f"{maxphyaddr}; only bits {maxphyaddr - 1}:0 may be set (got {cr3:#x})",
        )
    return cr3


def _memory(value: Any, maxphyaddr: int) -> dict[int, int]:
    memory: dict[int, int] = {}
    first_key: dict[int, str] = {}
    for key, qword in _json_object(value, "memory").items():
        where = f"memory[{_show(key)}]"
        pa = _memory_address(key, where, maxphyaddr)
        if pa in first_key:
            raise ScenarioError(
                where, f"the same physical address as memory[{_show(first_key[pa])}]"
            )
        first_key[pa] = key
        memory[pa] = _below(qword, where, _U64, "2**64 (a qword is 64 bits)")
    return memory


def _memory_address(key: str, where: str, maxphyaddr: int) -> int:
    if not _HEX.fullmatch(key):
        raise ScenarioError(where, 'physical address must be a hex string such as "0x1000"')
    pa = int(key, 16)
    if pa >> maxphyaddr:
        raise ScenarioError(
            where,
            f"physical address is outside the {maxphyaddr}-bit physical address space "
            f"(paging.maxphyaddr = {maxphyaddr}: at most {(1 << maxphyaddr) - 8:#x})",
        )
    if pa & 7:
        raise ScenarioError(where, "physical address must be 8-byte aligned")
    return pa


def _access(value: Any, where: str) -> Access:
    a = _object(value, where, ACCESS_KEYS)
    if "va" not in a:
        raise ScenarioError(where, 'missing key "va" (the linear address to access)')
    kind = a.get("kind", "read")
    if kind not in KINDS:
        raise ScenarioError(
            f"{where}.kind", f"must be one of {', '.join(KINDS)} (got {_show(kind)})"
        )
    return Access(
        va=_below(a["va"], f"{where}.va", _U64, "2**64"),
        kind=kind,
        cpl=_choice(a.get("cpl", 3), f"{where}.cpl", (0, 1, 2, 3), "0, 1, 2 or 3"),
        ac=_flag(a.get("ac", False), f"{where}.ac"),
    )


def load_scenario(obj: Any) -> Scenario:
    """Validate a parsed scenario (see the module docstring); raises ScenarioError."""
    top = _object(obj, "top level", TOP_KEYS)
    if "accesses" not in top:
        raise ScenarioError("top level", 'missing key "accesses" (a list of accesses)')
    regs = _paging(top.get("paging", {}))
    memory = _memory(top.get("memory", {}), regs.maxphyaddr)
    accesses = top["accesses"]
    if not isinstance(accesses, list):
        raise ScenarioError("accesses", f"must be a JSON list [...] (got {_show(accesses)})")
    return Scenario(
        regs=regs,
        memory=memory,
        accesses=tuple(_access(a, f"accesses[{i}]") for i, a in enumerate(accesses)),
    )


# --- running ------------------------------------------------------------------------------
def _outcome(result: WalkResult) -> dict[str, Any]:
    if result.outcome == b.OUTCOME_OK:
        return {"ok": True, "pa": hex(result.pa), "page_size": result.page_size}
    if result.outcome == b.OUTCOME_PF:
        return {"ok": False, "fault": "PF", "error_code": result.error_code, "cr2": hex(result.va)}
    return {"ok": False, "fault": "GP"}


def run_scenario(scenario: Scenario) -> list[dict[str, Any]]:
    """Run the accesses in order on a fresh copy of the memory: one result object per
    access, then ``{"memory": {...}}`` with every qword that changed."""
    mem = PhysMem(scenario.regs.maxphyaddr)
    for pa, qword in scenario.memory.items():
        mem.write_qword(pa, qword)
    out: list[dict[str, Any]] = []
    touched: set[int] = set()
    for a in scenario.accesses:
        result = walk(mem, scenario.regs, a.va, a.kind, a.cpl, a.ac)
        touched.update(pa for pa, _, _ in result.ad_updates)
        out.append(_outcome(result))
    changed = {
        hex(pa): hex(mem.read_qword(pa))
        for pa in sorted(touched)
        if mem.read_qword(pa) != scenario.memory.get(pa, 0)
    }
    out.append({"memory": changed})
    return out


def result_line(access: Access, result: dict[str, Any]) -> tuple[str, str]:
    """(the access, its result) in words: the error code in hex with its bits decoded."""
    what = f"{access.kind} {access.va:#x} at CPL {access.cpl}" + (", AC=1" if access.ac else "")
    if result["ok"]:
        return what, f"-> {result['pa']} ({b.size_name(result['page_size'])} page)"
    if result["fault"] == "GP":
        return what, "#GP(0): the address is not canonical (no page table is read)"
    code = result["error_code"]
    return what, (f"#PF error code {code:#x} ({b.error_code_bits(code)}): "
                  f"{b.describe_error_code(code)}; CR2={result['cr2']}")


def format_table(scenario: Scenario, results: list[dict[str, Any]]) -> str:
    """The default output of ``kaiser-edu walk``: one numbered line per access saying what
    it was and what happened, then the page-table qwords whose A/D bits the walks set."""
    lines = [(f"{n}", *result_line(a, r))
             for n, (a, r) in enumerate(zip(scenario.accesses, results), 1)]
    w_n = max([1, *(len(n) for n, _, _ in lines)])
    w_a = max([len("access"), *(len(a) for _, a, _ in lines)])
    out = [f"{'#':>{w_n}}  {'access':<{w_a}}  result"]
    out += [f"{n:>{w_n}}  {a:<{w_a}}  {r}" for n, a, r in lines]
    changed = results[-1]["memory"]
    if changed:
        out.append("memory written by the walks (accessed/dirty bits):")
        out += [f"  {pa}: {old} -> {new}" for pa, (old, new) in changed.items()]
    else:
        out.append("memory written by the walks: none")
    return "\n".join(out)


# --- the subcommand -----------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the scenario (JSON; - reads standard input)")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per access, then the changed memory (for programs)")
    parser.epilog = (
        "Prints a table: each access, its result (the physical address, or the fault with its "
        "error code in hex and decoded), then the page-table entries whose A/D bits changed. "
        "--json prints one JSON object per access instead. The format is documented in "
        "kaiser_edu/hw/scenario.py and examples/scenarios/."
    )


def run(args: argparse.Namespace) -> int:
    try:
        scenario = read_scenario(args.file)
    except KaiserEduError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = run_scenario(scenario)
    if args.json:
        for obj in results:
            print(json.dumps(obj))
        return 0
    before = {hex(pa): hex(q) for pa, q in scenario.memory.items()}
    changed = {pa: (before.get(pa, "0x0"), new) for pa, new in results[-1]["memory"].items()}
    print(format_table(scenario, [*results[:-1], {"memory": changed}]))
    return 0
