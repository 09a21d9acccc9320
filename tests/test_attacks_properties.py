"""Property tests: Meltdown reads exactly what the active page tables translate, nothing else.

The oracle is independent of the attack code: :func:`kaiser_edu.hw.walk.walk` at CPL 0 with
RFLAGS.AC=1 (a supervisor read that SMAP does not stop) under the attacker's CR3. Wherever it
translates, a Meltdown read on an affected CPU must return the bytes at that physical
address; wherever it does not (not present), no mode and no CPU may return anything.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kaiser_edu.attacks import meltdown as m
from kaiser_edu.attacks import transient as tr
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.walk import walk
from kaiser_edu.kernel import layout as L
from kaiser_edu.kernel.machine import Kernel

pytestmark = pytest.mark.property

ISOLATIONS = ("off", "kaiser", "pti")
CPUS = ("skylake", "core2", "zen2", "icelake")


@cache
def machine(isolation: str, cpu: str):
    """One booted machine per mode and CPU (boot is the slow part), with an attacker that
    runs, and a victim whose message sits in its data page."""
    k = Kernel(isolation=isolation, cpu=cpu, seed=5)
    attacker = k.spawn("attacker")
    victim, va = m.spawn_victim(k)
    assert k.switch_to(attacker).ok
    return k, attacker, m.direct_map_address(k, victim, va)


def interesting_address(k, victim_alias: int):
    """Addresses near everything the lessons point at, mapped or not, in either table."""
    img = k.image
    anchors = [
        img.secret, img.text, img.entry_text[0], img.symbol("do_syscall_64"), img.rodata,
        img.percpu("cpu_tss_rw"), img.end, img.text - b.PMD_SIZE,
        k.cea("GDT"), k.cea("IDT (read-only)"), k.cea("entry stack"), L.CPU_ENTRY_AREA_BASE
        + (1 << 20), L.ESPFIX_BASE_ADDR, L.VSYSCALL_ADDR, victim_alias,
        k.layout.page_offset, k.layout.page_offset + k.ram_bytes - 64,
        k.layout.page_offset + k.ram_bytes, k.layout.vmalloc_base + 5 * b.PAGE_SIZE,
        L.LDT_BASE_ADDR, 0xFFFF_8000_0000_0000, 0x40_0000, 0x60_0000, 0x1234_5000,
    ]
    return st.tuples(st.sampled_from(anchors), st.integers(-3 * b.PAGE_SIZE, 3 * b.PAGE_SIZE))


def supervisor_view(k, vas):
    """(translated, bytes) per address: a supervisor read under the current CR3."""
    regs = k.mmu.regs
    ok = np.zeros(len(vas), bool)
    pa = np.zeros(len(vas), np.uint64)
    for i, va in enumerate(vas):
        w = walk(k.mem, regs, int(va), "read", cpl=0, ac=True, set_ad=False)
        if w.ok:
            ok[i], pa[i] = True, w.pa
    return ok, tr.read_bytes(k.mem, pa, ok)


@given(data=st.data(), isolation=st.sampled_from(ISOLATIONS), cpu=st.sampled_from(CPUS),
       length=st.integers(1, 24), seed=st.integers(0, 2**32))
def test_meltdown_reads_exactly_what_the_active_tables_translate(data, isolation, cpu,
                                                                 length, seed):
    k, attacker, alias = machine(isolation, cpu)
    anchor, delta = data.draw(interesting_address(k, alias))
    address = (anchor + delta) % (1 << 64)
    hi = address >= 1 << 63
    # stay inside the address's canonical half
    if hi:
        address = max(address, 0xFFFF_8000_0000_0000)
        address = min(address, (1 << 64) - length)
    else:
        address = min(max(address, 0), (1 << 47) - length)
    r = m.leak(k, attacker, address, length, seed=seed, retries=60)
    vas = np.arange(address, address + length, dtype=np.uint64)
    translated, expected = supervisor_view(k, vas)
    got = np.frombuffer(r.data, np.uint8)
    user = vas < np.uint64(1 << 47)
    affected = k.cpu.meltdown
    # Wherever the tables translate: the supervisor's bytes (user pages need no bug).
    readable = translated & (affected | user)
    assert np.array_equal(got[readable], expected[readable]), (hex(address), r.why)
    nonzero = readable & (expected != 0)
    assert (r.confidence[nonzero] > 0).all()
    # Everywhere else: nothing at all.
    assert not got[~readable].any() and not r.recovered[~readable].any(), (hex(address), r.why)
    # And the reason matches the walk: not present <=> not translated.
    not_present = r.loads.reason == tr.NOT_PRESENT
    assert np.array_equal(not_present, ~translated)


@given(isolation=st.sampled_from(ISOLATIONS), cpu=st.sampled_from(CPUS),
       address=st.integers(0xFFFF_8000_0000_0000, 2**64 - 8), seed=st.integers(0, 99))
def test_no_mode_leaks_through_a_not_present_translation(isolation, cpu, address, seed):
    """Random kernel-half addresses: where the user tables have no translation, no CPU
    in no isolation mode observes a byte."""
    k, attacker, _ = machine(isolation, cpu)
    r = m.leak(k, attacker, address, 8, seed=seed, retries=20)
    translated, _ = supervisor_view(k, np.arange(address, address + 8, dtype=np.uint64))
    assert not r.recovered[~translated].any()
    assert (r.loads.reason[~translated] == tr.NOT_PRESENT).all()


def test_a_mapping_added_to_the_shadow_leaks_under_kaiser():
    """Nothing in the attack knows what a secret is: map the secret's page into KAISER's
    shadow with kaiser_add_mapping() and Meltdown reads it under KAISER too."""
    k = Kernel(isolation="kaiser", cpu="skylake", seed=2)
    attacker = k.spawn("attacker")
    before = m.leak(k, attacker, m.secret_address(k), 16, seed=1)
    assert not before.recovered.any()
    k.isolation.kaiser_add_mapping(m.secret_address(k), b.PAGE_SIZE, b.PAGE_KERNEL, "oops")
    after = m.leak(k, attacker, m.secret_address(k), 16, seed=1)
    assert after.data == b"The KAISER secre"


@settings(max_examples=16)
@given(isolation=st.sampled_from(ISOLATIONS), cpu=st.sampled_from(("skylake", "core2", "zen2")),
       method=st.sampled_from(("prefetch", "double-fault", "entrybleed")),
       flare=st.booleans(), boot=st.integers(0, 10**6), seed=st.integers(0, 10**6))
def test_a_kaslr_break_is_right_or_says_nothing(isolation, cpu, method, flare, boot, seed):
    """Whatever the machine, a break's answer is the truth or None, never a wrong slot."""
    from kaiser_edu.attacks.flare import apply_flare
    from kaiser_edu.attacks.kaslr import break_kaslr

    k = Kernel(isolation=isolation, cpu=cpu, seed=boot)
    if flare:
        apply_flare(k)
    r = break_kaslr(k, k.spawn("attacker"), method=method, seed=seed)
    assert r.text_base in (None, k.layout.kernel_text)
    assert r.direct_map_base in (None, k.layout.page_offset)
