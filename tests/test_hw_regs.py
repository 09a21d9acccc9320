"""kaiser_edu.hw.regs: the paging registers (SDM 2.5, 4.5 Tables 4-12/4-13, 4.10.1)."""

import dataclasses

import pytest

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.regs import Registers, check_cr3


def test_long_mode_defaults_are_ia32e_paging():
    r = Registers.long_mode(cr3=0x1000)
    assert r.cr0 & b.X86_CR0_PG and r.cr0 & b.X86_CR0_PE and r.cr0 & b.X86_CR0_WP
    assert r.cr4 & b.X86_CR4_PAE and r.cr4 & b.X86_CR4_PGE
    assert not r.cr4 & (b.X86_CR4_LA57 | b.X86_CR4_PCIDE | b.X86_CR4_SMEP | b.X86_CR4_SMAP
                        | b.X86_CR4_PKE)
    assert r.efer == b.EFER_LME | b.EFER_LMA | b.EFER_NXE
    assert (r.levels, r.wp, r.pge, r.pcide, r.smep, r.smap, r.pke, r.nxe) == (
        4, True, True, False, False, False, False, True)
    assert r.maxphyaddr == 52 and r.pkru == 0


@pytest.mark.parametrize("feature, reg, bit", [
    ("smep", "cr4", b.X86_CR4_SMEP), ("smap", "cr4", b.X86_CR4_SMAP),
    ("pke", "cr4", b.X86_CR4_PKE), ("pcide", "cr4", b.X86_CR4_PCIDE),
])
def test_long_mode_feature_switches_on(feature, reg, bit):
    off = Registers.long_mode()
    on = Registers.long_mode(**{feature: True})
    assert not getattr(off, reg) & bit and getattr(on, reg) & bit
    assert getattr(on, feature) is True and getattr(off, feature) is False


@pytest.mark.parametrize("feature, reg, bit", [
    ("wp", "cr0", b.X86_CR0_WP), ("nxe", "efer", b.EFER_NXE), ("pge", "cr4", b.X86_CR4_PGE),
])
def test_long_mode_feature_switches_off(feature, reg, bit):
    r = Registers.long_mode(**{feature: False})
    assert not getattr(r, reg) & bit and getattr(r, feature) is False


def test_levels_5_sets_la57():
    r = Registers.long_mode(levels=5)
    assert r.cr4 & b.X86_CR4_LA57 and r.levels == 5


def test_pcid_is_cr3_low_bits_only_with_pcide_sdm_4_10_1():
    assert Registers.long_mode(cr3=0x5000 | 0x7, pcide=True).pcid == 7
    # PCIDE=0: the current PCID is always 000H (bits 11:0 are PWT/PCD/ignored)
    assert Registers.long_mode(cr3=0x5000 | 0x18).pcid == 0


def test_pgd_pa_masks_low_bits_and_maxphyaddr():
    assert Registers.long_mode(cr3=0x12345000 | 0xABC, pcide=True).pgd_pa == 0x12345000
    r = Registers.long_mode(cr3=(1 << 39) | 0x1000, maxphyaddr=40)
    assert r.pgd_pa == (1 << 39) | 0x1000


def test_registers_are_frozen():
    r = Registers.long_mode()
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.cr3 = 0x2000


def test_with_cr3_returns_new_registers():
    r = Registers.long_mode(cr3=0x1000)
    r2 = r.with_cr3(0x2000)
    assert (r.cr3, r2.cr3) == (0x1000, 0x2000)
    assert r2.cr4 == r.cr4


# --- refusals name the problem ---------------------------------------------------------------
@pytest.mark.parametrize("levels", [3, 6, 0, "4"])
def test_levels_must_be_4_or_5(levels):
    with pytest.raises(KaiserEduError, match=r"levels must be 4 or 5 \(5 = CR4.LA57\)"):
        Registers.long_mode(levels=levels)


@pytest.mark.parametrize("m", [31, 53, 0, 64])
def test_maxphyaddr_range(m):
    with pytest.raises(KaiserEduError, match=rf"maxphyaddr must be between 32 and 52 bits, got {m}"):
        Registers.long_mode(maxphyaddr=m)


@pytest.mark.parametrize("m", [32, 36, 46, 52])
def test_maxphyaddr_valid(m):
    assert Registers.long_mode(maxphyaddr=m).maxphyaddr == m


def test_pkru_is_32_bits():
    Registers.long_mode(pkru=0xFFFF_FFFF)
    with pytest.raises(KaiserEduError, match=r"pkru is a 32-bit register, got 0x100000000"):
        Registers.long_mode(pkru=1 << 32)


@pytest.mark.parametrize("field", ["cr0", "cr3", "cr4", "efer", "pkru"])
@pytest.mark.parametrize("value", [-1, 1 << 64, "1"])
def test_register_values_must_be_64_bit_ints(field, value):
    good = Registers.long_mode()
    with pytest.raises(KaiserEduError, match=rf"{field} must be an integer in \[0, 2\*\*64\)"):
        dataclasses.replace(good, **{field: value}).validate()


@pytest.mark.parametrize("field, clear, name", [
    ("cr0", b.X86_CR0_PG, "CR0.PG"),
    ("cr4", b.X86_CR4_PAE, "CR4.PAE"),
    ("efer", b.EFER_LME, "EFER.LME"),
])
def test_missing_long_mode_bits_are_named(field, clear, name):
    good = Registers.long_mode()
    bad = dataclasses.replace(good, **{field: getattr(good, field) & ~clear})
    with pytest.raises(KaiserEduError, match=rf"only IA-32e \(64-bit\) paging.*must be set: {name}$"):
        bad.validate()


def test_all_missing_long_mode_bits_listed():
    with pytest.raises(KaiserEduError, match=r"CR0.PG, CR4.PAE, EFER.LME"):
        Registers(cr0=0, cr3=0, cr4=0, efer=0).validate()


def test_cr3_reserved_bits_above_maxphyaddr_sdm_table_4_12():
    with pytest.raises(KaiserEduError,
                       match=r"cr3 0x200000001000 sets reserved bits 0x200000000000: with MAXPHYADDR=40"):
        Registers.long_mode(cr3=(1 << 45) | 0x1000, maxphyaddr=40)
    with pytest.raises(KaiserEduError, match=r"only bits 39:12"):
        check_cr3(1 << 62, 40)
    check_cr3((1 << 40) - 1, 40)  # everything up to bit 39 is allowed


def test_cr3_bit_63_is_the_noflush_hint_not_a_register_bit():
    with pytest.raises(KaiserEduError, match=r"bit 63 set: that is the NOFLUSH hint"):
        Registers.long_mode(cr3=(1 << 63) | 0x1000)


def test_with_cr3_validates():
    r = Registers.long_mode(maxphyaddr=40)
    with pytest.raises(KaiserEduError, match="reserved bits"):
        r.with_cr3(1 << 41)
