"""Lesson 04's privilege lab: the model against the hardware, the view, and bad input.

Every rule of Intel SDM Vol. 3A 4.6 the lesson teaches (U/S at CPL 3, SMEP, SMAP with and
without RFLAGS.AC, NX, R/W with CR0.WP) is checked on the simulated kernel with its expected
#PF error code, and every combination of the lab's settings is checked against both
implementations of the walk: the reference walk (kaiser_edu.hw.walk) and the numba MMU.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.mmu import MMU
from kaiser_edu.hw.walk import walk
from kaiser_edu.widgets.privilege import (
    ACCESS_KINDS,
    RULES,
    PrivilegeLab,
    Target,
    privilege_check,
    privilege_machine,
    privilege_targets,
)


@pytest.fixture(scope="module")
def kernel():
    return privilege_machine(seed=0)


def _regs(kernel, smep: bool, smap: bool):
    cr4 = kernel.mmu.regs.cr4 & ~(b.X86_CR4_SMEP | b.X86_CR4_SMAP)
    cr4 |= (b.X86_CR4_SMEP if smep else 0) | (b.X86_CR4_SMAP if smap else 0)
    return replace(kernel.mmu.regs, cr4=cr4)


def test_machine_runs_one_process_with_smep_smap_and_no_isolation(kernel):
    assert kernel.isolation.name == "off" and not kernel.isolation.pgd_pair
    assert kernel.mmu.regs.smep and kernel.mmu.regs.smap
    task = kernel.current
    assert task is not None and task.alive and kernel.cr3 & ~0xFFF == task.mm.pgd
    names = [t.name for t in privilege_targets(kernel)]
    assert names[:6] == ["user data page", "user code page", "kernel text (do_syscall_64)",
                         "kernel secret (.data)", "secret via the direct map",
                         "cpu_entry_area (entry stack)"]


def test_targets_come_from_the_booted_kernel():
    a, c = privilege_machine(seed=1), privilege_machine(seed=2)
    ta = {t.name: t for t in privilege_targets(a)}
    tc = {t.name: t for t in privilege_targets(c)}
    # KASLR moves the image and the direct map; the cpu_entry_area stays put.
    assert ta["kernel secret (.data)"].va == a.image.secret
    assert ta["kernel secret (.data)"].va != tc["kernel secret (.data)"].va
    assert ta["secret via the direct map"].va == a.layout.direct_map(a.image.pa(a.image.secret))
    assert ta["cpu_entry_area (entry stack)"].va == tc["cpu_entry_area (entry stack)"].va
    assert ta["secret via the direct map"].region == "direct map of all physical memory"
    # Both secret addresses reach the same physical bytes.
    pas = {privilege_check(a, 0, name).pa for name in
           ("kernel secret (.data)", "secret via the direct map")}
    assert pas == {a.image.pa(a.image.secret)}


# (cpl, target, access, smep, smap, ac) -> (rule, error code or None)
RULE_CASES = [
    (3, "kernel secret (.data)", "read", True, True, False, "U/S", 0x5),
    (3, "kernel secret (.data)", "write", True, True, False, "U/S", 0x7),
    (3, "secret via the direct map", "read", False, False, False, "U/S", 0x5),
    (3, "kernel text (do_syscall_64)", "fetch", True, True, False, "U/S", 0x15),
    (3, "cpu_entry_area (entry stack)", "read", True, True, False, "U/S", 0x5),
    (3, "user data page", "write", True, True, False, "allowed", None),
    (3, "user data page", "fetch", True, True, False, "NX", 0x15),
    (0, "user code page", "fetch", True, True, False, "SMEP", 0x11),
    (0, "user code page", "fetch", False, True, False, "allowed", None),
    (0, "user data page", "read", True, True, False, "SMAP", 0x1),
    (0, "user data page", "write", True, True, False, "SMAP", 0x3),
    (0, "user data page", "read", True, True, True, "allowed", None),
    (0, "user data page", "write", True, False, False, "allowed", None),
    (0, "kernel secret (.data)", "read", True, True, False, "allowed", None),
    (0, "kernel secret (.data)", "fetch", True, True, False, "NX", 0x11),
    (0, "kernel text (do_syscall_64)", "write", True, True, False, "R/W", 0x3),
    (0, "kernel text (do_syscall_64)", "fetch", True, True, False, "allowed", None),
]


@pytest.mark.parametrize("cpl,target,access,smep,smap,ac,rule,code", RULE_CASES)
def test_each_rule_with_its_error_code(kernel, cpl, target, access, smep, smap, ac, rule,
                                       code):
    r = privilege_check(kernel, cpl, target, access, smep=smep, smap=smap, ac=ac)
    assert r.rule == rule and r.rule in RULES
    assert r.error_code == code
    assert r.allowed == (code is None)
    if code is not None:
        assert f"error code {code:#x}" in r.text() and b.describe_error_code(code) in r.text()
    assert r.translation_exists  # every target is mapped: only the rights differ


def test_user_read_of_the_kernel_is_a_protection_fault_with_every_us_bit_shown(kernel):
    r = privilege_check(kernel, 3, "kernel secret (.data)", "read")
    assert r.error_code == b.X86_PF_PROT | b.X86_PF_USER  # 0x5: present, user, read
    assert [name for name, _ in r.us_bits()] == ["PML4E", "PDPTE", "PDE"]  # 2 MiB page
    assert all(bit == 0 for _, bit in r.us_bits())
    assert "Meltdown" in r.note() and "translation exists" in r.text()
    assert r.walk.rows[-1].value & b.PAGE_PRESENT
    data = privilege_check(kernel, 3, "user data page", "read")
    assert [bit for _, bit in data.us_bits()] == [1, 1, 1, 1]


def test_model_agrees_with_the_reference_walk_and_the_numba_mmu():
    kernel = privilege_machine(seed=3)  # its own: the numba MMU below sets A/D bits
    targets = privilege_targets(kernel)
    for t, cpl, access, smep, smap, ac in itertools.product(
            targets, (0, 3), ACCESS_KINDS, (False, True), (False, True), (False, True)):
        r = privilege_check(kernel, cpl, t.name, access, smep=smep, smap=smap, ac=ac)
        regs = _regs(kernel, smep, smap)
        ref = walk(kernel.mem, regs, t.va, access, cpl, ac, set_ad=False)
        hw = MMU(kernel.mem, regs, tlb=None).access(t.va, access, cpl, ac)
        where = f"{t.name} cpl={cpl} {access} smep={smep} smap={smap} ac={ac}"
        assert (r.allowed, r.error_code, r.pa) == (ref.ok, ref.error_code, ref.pa), where
        assert r.allowed == hw.ok, where
        assert (r.error_code or 0) == hw.error_code and r.pa == hw.pa, where


def test_check_changes_nothing(kernel):
    snapshot = kernel.mem.nonzero_qwords()
    cr3, n_events = kernel.cr3, len(kernel.events)
    for t in privilege_targets(kernel):
        for access in ACCESS_KINDS:
            privilege_check(kernel, 3, t.name, access)
            privilege_check(kernel, 0, t.name, access, smap=False)
    assert kernel.mem.nonzero_qwords() == snapshot
    assert kernel.cr3 == cr3 and len(kernel.events) == n_events


def test_addresses_that_do_not_translate(kernel):
    guard_hole = 0xFFFF_8000_0000_0000  # mm.rst: "guard hole, reserved for hypervisor"
    hole = privilege_check(kernel, 3, guard_hole, "read")
    assert hole.rule == "not present" and hole.error_code == b.X86_PF_USER
    assert not hole.translation_exists and hole.target.region == "unused hole"
    gp = privilege_check(kernel, 0, 0x8000_0000_0000, "read")
    assert gp.rule == "non-canonical" and gp.error_code is None and not gp.allowed
    assert "#GP" in gp.verdict() and not gp.us_bits()
    mine = Target("mine", kernel.image.secret, "kernel text, data, bss", "the secret")
    assert privilege_check(kernel, 3, mine).error_code == 0x5


@pytest.mark.parametrize("kwargs,message", [
    ({"cpl": 5}, "cpl must be 0"),
    ({"cpl": True}, "cpl must be 0"),
    ({"access": "execute"}, "access must be one of read, write, fetch"),
    ({"target": "the moon"}, "unknown target 'the moon'"),
    ({"target": -1}, "target must be a target name"),
    ({"target": 1.5}, "target must be a target name"),
    ({"smep": "yes"}, "smep must be True or False"),
    ({"ac": 1}, "ac must be True or False"),
])
def test_bad_input_is_refused_with_what_is_allowed(kernel, kwargs, message):
    with pytest.raises(KaiserEduError, match=message):
        privilege_check(kernel, **kwargs)


def test_no_running_process_is_an_error():
    kernel = privilege_machine(seed=4)
    kernel.current = None
    with pytest.raises(KaiserEduError, match="no process is running"):
        privilege_targets(kernel)


def _words(text: str) -> str:
    """The text with its line wrapping undone (long sentences wrap at 96 columns)."""
    return " ".join(text.split())


def test_lab_view_follows_every_control(kernel):
    lab = PrivilegeLab(kernel)
    assert lab.target.value == "kernel secret (.data)" and lab.cpl.value == 3
    assert "error code 0x5" in _words(lab.text) and "U/S=<b>0</b>" in lab.html
    assert lab.smep.value and lab.smap.value and not lab.ac.value  # the kernel's CR4

    lab.cpl.value = 0
    assert "allowed" in _words(lab.text) and "error code" not in _words(lab.text)
    lab.access.value = "fetch"
    assert "error code 0x11" in _words(lab.text) and "rule: NX" in _words(lab.text)
    lab.target.value = "user code page"
    assert "rule: SMEP" in _words(lab.text)
    lab.smep.value = False
    assert "allowed" in _words(lab.text) and "SMEP is off" in _words(lab.text)
    lab.target.value = "user data page"
    lab.access.value = "read"
    assert "error code 0x1 " in _words(lab.text) and "rule: SMAP" in _words(lab.text)
    lab.ac.value = True
    assert "RFLAGS.AC=1" in _words(lab.text) and "copy_from_user" in _words(lab.text)
    lab.ac.value = False
    lab.smap.value = False
    assert "SMAP is off" in _words(lab.text)
    lab.cpl.value = 3
    assert "CPL 3 (user) read of user data page" in _words(lab.text)
    assert lab.check is not None and lab.check.allowed
    assert repr(lab).startswith("PrivilegeLab(cpl=3, target='user data page'")


def test_lab_shows_errors_instead_of_raising():
    kernel = privilege_machine(seed=5)
    lab = PrivilegeLab(kernel)
    kernel.current = None  # the process is gone: the next refresh cannot find targets
    lab.access.value = "write"
    assert lab.check is None and "no process is running" in lab.text
    assert "&#10008;" in lab.html
