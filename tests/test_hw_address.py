"""kaiser_edu.hw.address: canonical addresses (SDM 3.3.7.1; sandpile.org can_addr) and the
split into table indices (SDM 4.5; Linux Documentation/arch/x86/x86_64/mm.rst)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import address as ad

U64 = (1 << 64) - 1


def test_va_bits():
    assert ad.va_bits(4) == 48
    assert ad.va_bits(5) == 57


@pytest.mark.parametrize(
    "va, canon4, canon5",
    [
        (0, True, True),
        (0x0000_7FFF_FFFF_FFFF, True, True),  # top of the 4-level user half
        (0x0000_8000_0000_0000, False, True),  # first non-canonical (4-level)
        (0xFFFF_7FFF_FFFF_FFFF, False, True),  # last non-canonical (4-level)
        (0xFFFF_8000_0000_0000, True, True),  # bottom of the 4-level kernel half
        (U64, True, True),
        (0x00FF_FFFF_FFFF_FFFF, False, True),  # top of the 5-level user half
        (0x0100_0000_0000_0000, False, False),  # first non-canonical (5-level)
        (0xFEFF_FFFF_FFFF_FFFF, False, False),  # last non-canonical (5-level)
        (0xFF00_0000_0000_0000, False, True),  # bottom of the 5-level kernel half
        (0x8000_0000_0000_0000, False, False),
        (0x0000_0000_0040_0000, True, True),
        (0xFFFF_8880_0000_0000, True, True),  # Linux direct map (4-level)
        (0xFF11_0000_0000_0000, False, True),  # Linux direct map (5-level)
    ],
)
def test_is_canonical_4_and_5_level(va, canon4, canon5):
    assert ad.is_canonical(va, 4) is canon4
    assert ad.is_canonical(va, 5) is canon5


def test_is_user_half():
    assert ad.is_user_half(0x7FFF_FFFF_F000)
    assert not ad.is_user_half(0xFFFF_8000_0000_0000)
    assert ad.is_user_half(0x00FF_FFFF_FFFF_F000, 5)
    assert not ad.is_user_half(0xFF00_0000_0000_0000, 5)


@pytest.mark.parametrize(
    "va, levels, out",
    [
        (0x0000_8000_0000_0000, 4, 0xFFFF_8000_0000_0000),
        (0x0000_7FFF_FFFF_F000, 4, 0x0000_7FFF_FFFF_F000),
        (0xFFFF_8880_0000_0000, 4, 0xFFFF_8880_0000_0000),
        (0x1_0000_0000_1000, 4, 0x1000),  # bits above 47 are replaced by bit 47
        (0x0100_0000_0000_0000, 5, 0xFF00_0000_0000_0000),
        (0x0000_8000_0000_0000, 5, 0x0000_8000_0000_0000),
    ],
)
def test_canonicalize(va, levels, out):
    assert ad.canonicalize(va, levels) == out


@pytest.mark.property
@given(st.integers(0, U64), st.sampled_from([4, 5]))
def test_canonicalize_properties(va, levels):
    c = ad.canonicalize(va, levels)
    assert 0 <= c <= U64
    assert ad.is_canonical(c, levels)
    n = ad.va_bits(levels)
    assert c & ((1 << n) - 1) == va & ((1 << n) - 1)  # the meaningful bits are kept
    assert (c == va) == ad.is_canonical(va, levels)


def test_split_docstring_example():
    assert ad.split(0x00007F0000001234) == {"PML4": 254, "PDPT": 0, "PD": 0, "PT": 1,
                                             "offset": 0x234}
    assert list(ad.split(0x00007F0000001234)) == ["PML4", "PDPT", "PD", "PT", "offset"]


def test_split_linux_kernel_addresses():
    # direct map (page_offset_base) at PGD index 273; kernel text in PGD 511, PUD 510
    assert ad.split(0xFFFF_8880_0000_0000)["PML4"] == 273
    s = ad.split(0xFFFF_FFFF_8100_0000)
    assert (s["PML4"], s["PDPT"], s["PD"], s["PT"], s["offset"]) == (511, 510, 8, 0, 0)


def test_split_5_level_has_pml5():
    va = (3 << 48) | (5 << 39) | (7 << 30) | (11 << 21) | (13 << 12) | 0xABC
    assert ad.split(va, 5) == {"PML5": 3, "PML4": 5, "PDPT": 7, "PD": 11, "PT": 13,
                               "offset": 0xABC}
    assert "PML5" not in ad.split(va, 4)


@pytest.mark.property
@given(st.integers(0, (1 << 57) - 1))
def test_split_reassembles(va):
    s = ad.split(va, 5)
    back = (s["PML5"] << 48 | s["PML4"] << 39 | s["PDPT"] << 30 | s["PD"] << 21
            | s["PT"] << 12 | s["offset"])
    assert back == va
    assert all(0 <= v < 512 for k, v in s.items() if k != "offset")


def test_table_index():
    va = 0xFFFF_FFFF_FFFF_FFFF
    assert [ad.table_index(va, lv) for lv in range(1, 6)] == [511] * 5
    assert ad.table_index(1 << 39, 4) == 1
    assert ad.table_index(1 << 39, 3) == 0


def test_check_va_accepts_canonical():
    ad.check_va(0xFFFF_8000_0000_0000, 4)
    ad.check_va(0x00FF_FFFF_FFFF_F000, 5)


def test_check_va_non_canonical_names_rule_and_ranges():
    with pytest.raises(KaiserEduError,
                       match=r"0x800000000000 is not canonical for 4-level paging: bits 63:47"):
        ad.check_va(0x0000_8000_0000_0000, 4)
    with pytest.raises(KaiserEduError, match=r"0x7fffffffffff and 0xffff800000000000"):
        ad.check_va(0x0000_8000_0000_0000, 4)
    with pytest.raises(KaiserEduError, match=r"5-level paging: bits 63:56.*0xff00000000000000"):
        ad.check_va(0x0100_0000_0000_0000, 5)


def test_check_va_names_the_field():
    with pytest.raises(KaiserEduError, match=r"^start address 0x800000000000 is not canonical"):
        ad.check_va(0x0000_8000_0000_0000, 4, what="start address")


@pytest.mark.parametrize("bad", [-1, 1 << 64, 1.5, "0x1000", None])
def test_check_va_rejects_non_64_bit_values(bad):
    with pytest.raises(KaiserEduError, match=r"must be an integer in \[0, 2\*\*64\)"):
        ad.check_va(bad, 4)


def test_kaiser_edu_error_is_a_value_error():
    assert issubclass(KaiserEduError, ValueError)
