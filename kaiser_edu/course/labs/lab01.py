"""Lab 01, virtual addresses: the checks of ``solutions/lab01_addresses.ipynb``.

The student writes four functions; each check compares them with
:mod:`kaiser_edu.hw.address` (the hardware model) on the edge cases below and on seeded
random addresses, 4-level first, then 5-level (LA57):

=========================  ===============================  ==============================
check                      student function                 engine
=========================  ===============================  ==============================
:data:`check_split`        ``split_address(va, levels)``    :func:`~kaiser_edu.hw.split`
:data:`check_canonical`    ``is_canonical(va, levels)``     ``address.is_canonical``
:data:`check_classify`     ``classify(va, levels)``         ``is_canonical``/``is_user_half``
:data:`check_canonicalize` ``canonicalize(va, levels)``     ``address.canonicalize``
=========================  ===============================  ==============================

Every hint names the bits involved for *this* address and paging depth, e.g. "bits 47:39
index the PML4: shift right by 39 and mask with 0x1ff".
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from kaiser_edu.course.checks import Case, Check, as_int, hex_or_repr
from kaiser_edu.hw import address as hw

U64 = (1 << 64) - 1

#: Addresses every check tries, with why each one matters.
EDGES: tuple[tuple[int, str], ...] = (
    (0x0000_0000_0000_0000, "address 0"),
    (0x0000_7F00_0000_1234, "a typical user address"),
    (0x0000_7FFF_FFFF_FFFF, "top of the 4-level user half"),
    (0x0000_8000_0000_0000, "first address above the 4-level user half"),
    (0xFFFF_7FFF_FFFF_FFFF, "last address below the 4-level kernel half"),
    (0xFFFF_8000_0000_0000, "bottom of the 4-level kernel half"),
    (0xFFFF_8880_0000_0000, "Linux's direct map, 4-level"),
    (0xFFFF_FFFF_8100_0000, "Linux's kernel text"),
    (0xFFFF_FFFF_FFFF_FFFF, "the last address"),
    (0x00FF_FFFF_FFFF_FFFF, "top of the 5-level user half"),
    (0x0100_0000_0000_0000, "first address above the 5-level user half"),
    (0xFEFF_FFFF_FFFF_FFFF, "last address below the 5-level kernel half"),
    (0xFF00_0000_0000_0000, "bottom of the 5-level kernel half"),
    (0xFF11_0000_0000_0000, "Linux's direct map, 5-level"),
    (0x8000_0000_0000_0000, "only bit 63 set"),
)

#: Bits (high, low) of each field of an address.
FIELD_BITS = {"PML5": (56, 48), "PML4": (47, 39), "PDPT": (38, 30), "PD": (29, 21),
              "PT": (20, 12), "offset": (11, 0)}
TABLE_NAMES = {"PML5": "the PML5 (5-level paging only)", "PML4": "the PML4",
               "PDPT": "the page-directory-pointer table (PDPT)",
               "PD": "the page directory (PD)", "PT": "the page table (PT)"}

CLASSES = ("user", "kernel", "non-canonical")


# --- the addresses tried -----------------------------------------------------------------


def addresses(rng: random.Random, levels: int, per_kind: int = 8) -> list[tuple[int, str]]:
    """The edge cases, then random addresses of every kind for ``levels``-level paging."""
    n = hw.va_bits(levels)
    found = list(EDGES)
    for _ in range(per_kind):
        found.append((rng.getrandbits(n - 1), "random, lower half"))
        found.append((hw.canonicalize(rng.getrandbits(n - 1) | 1 << (n - 1), levels),
                      "random, upper half"))
        found.append((rng.getrandbits(64) | 1 << 62, "random 64-bit value"))
        edge = (1 << (n - 1)) + rng.choice((-1, 1)) * rng.randrange(1, 1 << 12)
        found.append((edge, f"near bit {n - 1}, where the lower half ends"))
    return found


def _cases(rng: random.Random, expected: Any) -> list[Case]:
    """One case per (address, levels): 4-level addresses first, then 5-level."""
    return [Case((va,), expected(va, levels), {"levels": levels}, note)
            for levels in (4, 5) for va, note in addresses(rng, levels)]


def _la57_note(va: int, levels: int) -> str:
    if levels == 5 and hw.is_canonical(va, 5) and not hw.is_canonical(va, 4):
        return (" With 5-level paging (LA57) addresses have 57 bits and the sign bit is bit 56:"
                " did you use 48 bits whatever `levels` says?")
    if levels == 4 and hw.is_canonical(va, 5) and not hw.is_canonical(va, 4):
        return " (With 5 levels it would be canonical: with 4, only 48 bits are meaningful.)"
    return ""


# --- exercise 1: split ---------------------------------------------------------------------


def _split_hint(case: Case, got: Any) -> str:
    va, levels = case.args[0], case.kwargs["levels"]
    expected: dict[str, int] = case.expected
    keys = ", ".join(map(repr, expected))
    if not isinstance(got, Mapping):
        return f"Return a dict with the keys {keys}, not a {type(got).__name__}."
    if set(got) != set(expected):
        missing = [k for k in expected if k not in got]
        if "PML5" in missing:
            return (f"With 5-level paging the keys are {keys}: the PML5 index (bits 56:48) "
                    "comes first. Use `levels` to decide which tables there are.")
        if "PML5" in got and levels == 4:
            return f"With 4-level paging there is no PML5: the keys are {keys}."
        extra = [k for k in got if k not in expected]
        return (f"The keys must be exactly {keys} (missing: {missing or 'none'}, "
                f"unexpected: {extra or 'none'}).")
    for key, want in expected.items():
        value = as_int(got[key])
        if value == want:
            continue
        high, low = FIELD_BITS[key]
        if key == "offset":
            return "The page offset is the low 12 bits (11:0): va & 0xfff."
        text = (f"Bits {high}:{low} index {TABLE_NAMES[key]}: shift right by {low} and mask "
                f"with 0x1ff (9 bits): (va >> {low}) & 0x1ff.")
        if value is not None and value > 0x1FF:
            text = f"An index is 9 bits (0 to 511), {key} was {value}: mask it. " + text
        return text
    return f"Compare each field of {hex_or_repr(va)} with its bit range."


check_split = Check(
    exercise="lab01-split",
    title="Exercise 1: split an address into table indices",
    function="split_address",
    cases=lambda rng: _cases(rng, hw.split),
    points=2,
    hint=_split_hint,
    seed=1,
    format_arg=hex_or_repr,
)


# --- exercise 2: canonical? ----------------------------------------------------------------


def _canonical_hint(case: Case, got: Any) -> str:
    va, levels = case.args[0], case.kwargs["levels"]
    n = hw.va_bits(levels)
    top, ones = va >> (n - 1), U64 >> (n - 1)
    bits = f"bits 63:{n - 1}"
    rule = (f"With {levels} levels: top = va >> {n - 1}; canonical if top == 0 or "
            f"top == {ones:#x}.")
    if not isinstance(got, bool) and as_int(got) is None:
        return f"Return True or False. {rule}"
    if case.expected and top:
        return (f"Canonical addresses come in two halves: {bits} all 0 (the lower half) or "
                f"all 1 (the upper half); {hex_or_repr(va)} has them all 1. {rule}")
    if case.expected:
        return (f"The {bits} of {hex_or_repr(va)} are all 0: the lower half is canonical. {rule}"
                + _la57_note(va, levels))
    return (f"The {bits} must all equal bit {n - 1}; for {hex_or_repr(va)}, va >> {n - 1} is "
            f"{top:#x}, neither 0 nor {ones:#x}. {rule}" + _la57_note(va, levels))


check_canonical = Check(
    exercise="lab01-canonical",
    title="Exercise 2: is the address canonical?",
    function="is_canonical",
    cases=lambda rng: _cases(rng, hw.is_canonical),
    points=2,
    hint=_canonical_hint,
    seed=2,
    format_arg=hex_or_repr,
)


# --- exercise 3: user, kernel or non-canonical -----------------------------------------------


def classify(va: int, levels: int = 4) -> str:
    """The engine's answer: ``"user"``, ``"kernel"`` or ``"non-canonical"``."""
    if not hw.is_canonical(va, levels):
        return "non-canonical"
    return "user" if hw.is_user_half(va, levels) else "kernel"


def _classify_hint(case: Case, got: Any) -> str:
    va, levels = case.args[0], case.kwargs["levels"]
    bits = f"bits 63:{hw.va_bits(levels) - 1}"
    if not isinstance(got, str) or got not in CLASSES:
        return "Return one of the strings 'user', 'kernel' or 'non-canonical' (exactly these)."
    if case.expected == "non-canonical":
        return (f"{hex_or_repr(va)} is in the hole between the halves: its {bits} are neither all 0 "
                "nor all 1. Decide canonical or not first, then which half."
                + _la57_note(va, levels))
    if case.expected == "user":
        return (f"The {bits} of {hex_or_repr(va)} are all 0: the lower half, where Linux puts user "
                "space." + _la57_note(va, levels))
    return (f"The {bits} of {hex_or_repr(va)} are all 1: the upper half, which belongs to the "
            "kernel." + _la57_note(va, levels))


check_classify = Check(
    exercise="lab01-classify",
    title="Exercise 3: user, kernel or non-canonical?",
    function="classify",
    cases=lambda rng: _cases(rng, classify),
    points=2,
    hint=_classify_hint,
    seed=3,
    format_arg=hex_or_repr,
)


# --- exercise 4: canonicalize -----------------------------------------------------------------


def _canonicalize_hint(case: Case, got: Any) -> str:
    va, levels = case.args[0], case.kwargs["levels"]
    n = hw.va_bits(levels)
    low, high = (1 << n) - 1, U64 & ~((1 << n) - 1)
    value = as_int(got)
    if value is None:
        return "Return an int (the canonical address)."
    if value < 0:
        return ("Your result is negative: Python ints are unbounded, so ~x and -x are "
                f"negative. Set the high bits by OR-ing in {high:#x} instead.")
    if value > U64:
        return "Your result has more than 64 bits: keep it within 0xffffffffffffffff."
    if value & low != va & low:
        return f"Bits {n - 1}:0 must stay as they are: start from va & {low:#x}."
    if va >> (n - 1) & 1:
        return (f"Bit {n - 1} of {hex_or_repr(va)} is 1, so bits 63:{n} must all become 1 "
                f"(sign extension): (va & {low:#x}) | {high:#x}.")
    return (f"Bit {n - 1} of {hex_or_repr(va)} is 0, so bits 63:{n} must all become 0: "
            f"va & {low:#x}.")


check_canonicalize = Check(
    exercise="lab01-canonicalize",
    title="Exercise 4: make an address canonical",
    function="canonicalize",
    cases=lambda rng: _cases(rng, hw.canonicalize),
    points=2,
    hint=_canonicalize_hint,
    seed=4,
    format_arg=hex_or_repr,
    format_value=hex_or_repr,
)

CHECKS = (check_split, check_canonical, check_classify, check_canonicalize)
