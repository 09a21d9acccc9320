"""Meltdown on the simulated machine: the issue's outcome table, over several seeds."""

from __future__ import annotations

import numpy as np
import pytest

from kaiser_edu.attacks import meltdown as m
from kaiser_edu.attacks import transient as tr
from kaiser_edu.attacks.flush_reload import calibrate
from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.kernel.machine import Kernel
from kaiser_edu.kernel.timing import timing

SEEDS = (0, 1, 7)


def _boot(isolation, cpu="skylake", seed=0):
    k = Kernel(isolation=isolation, cpu=cpu, seed=seed)
    return k, k.spawn("attacker")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("cpu", ["skylake", "haswell", "core2"])
def test_isolation_off_on_a_vulnerable_cpu_leaks_the_secret(seed, cpu):
    k, attacker = _boot("off", cpu, seed)
    r = m.leak(k, attacker, m.secret_address(k), 54, seed=seed)
    assert r.truth == b"The KAISER secret: kernel memory is not for user eyes!"
    assert r.accuracy >= 0.99, r.data
    assert (r.loads.reason == tr.FORWARDED).all()
    assert r.bytes_per_second > 0 and r.cycles > 0 and r.host_seconds > 0
    assert r.seconds == pytest.approx(timing(cpu).cycles_to_seconds(r.cycles))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("isolation", ["kaiser", "pti"])
def test_isolation_recovers_nothing(seed, isolation):
    k, attacker = _boot(isolation, "skylake", seed)
    r = m.leak(k, attacker, m.secret_address(k), 54, seed=seed, retries=20)
    assert r.truth is not None  # the kernel itself can read it...
    assert not r.recovered.any()  # ...the attacker observes nothing,
    assert r.data == bytes(54)  # no byte better than chance (the secret has no 0 byte)
    assert r.accuracy == 0.0
    assert (r.loads.reason == tr.NOT_PRESENT).all(), r.why


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("cpu", ["zen2", "icelake"])
def test_a_cpu_that_is_not_affected_forwards_nothing(seed, cpu):
    k, attacker = _boot("off", cpu, seed)
    r = m.leak(k, attacker, m.secret_address(k), 32, seed=seed, retries=20)
    assert not r.recovered.any()
    assert (r.loads.reason == tr.NOT_AFFECTED).all(), r.why


@pytest.mark.parametrize("seed", SEEDS)
def test_another_process_through_the_direct_map(seed):
    k, attacker = _boot("off", "skylake", seed)
    victim, va = m.spawn_victim(k)
    address = m.direct_map_address(k, victim, va)
    assert k.layout.page_offset <= address < k.layout.page_offset + k.ram_bytes
    r = m.leak(k, attacker, address, len(m.VICTIM_SECRET), seed=seed)
    assert r.truth == m.VICTIM_SECRET
    assert r.accuracy >= 0.99


@pytest.mark.parametrize("isolation", ["kaiser", "pti"])
def test_direct_map_read_fails_under_isolation(isolation):
    k, attacker = _boot(isolation)
    victim, va = m.spawn_victim(k)
    r = m.leak(k, attacker, m.direct_map_address(k, victim, va), 16, retries=10)
    assert not r.recovered.any()


def test_what_stays_readable_under_pti():
    """The cpu_entry_area and the entry text are in the user PGD: Meltdown reaches them
    (they hold addresses and stacks, no secrets), but not the rest of the image."""
    k, attacker = _boot("pti")
    assert k.switch_to(attacker).ok  # user mode: the user PGD is the active one
    for va in (k.cea("GDT"), k.cea("IDT (read-only)"), k.image.symbol("entry_SYSCALL_64")):
        loads = tr.transient_loads(k, np.arange(va, va + 8, dtype=np.uint64))
        assert (loads.reason == tr.FORWARDED).all(), (hex(va), loads.summary())
    rest = k.image.symbol("do_syscall_64")
    loads = tr.transient_loads(k, np.arange(rest, rest + 8, dtype=np.uint64))
    assert (loads.reason == tr.NOT_PRESENT).all()


def test_cached_data_leaks_faster_than_uncached():
    k, attacker = _boot("off")
    warm = m.leak(k, attacker, m.secret_address(k), 32, seed=3)
    cold = m.leak(k, attacker, m.secret_address(k), 32, seed=3, warm=False, retries=400)
    assert warm.attempts.sum() < cold.attempts.sum()
    assert cold.accuracy >= 0.9  # slower, but the retries get there


def test_zero_bias_a_real_zero_reads_as_nothing_seen():
    k, attacker = _boot("off")
    # 8 bytes just past the secret's text: zero padding of its 64-byte slot
    r = m.leak(k, attacker, m.secret_address(k) + 56, 8, seed=0, retries=5)
    assert r.truth == bytes(8) and r.data == bytes(8)
    assert not r.recovered.any()
    assert (r.attempts == 3 * 5).all()  # each of 3 reads retries a 0 to the end: never sent


def test_calibration_separates_hits_from_misses():
    t = timing("skylake")
    hits, misses, thr = calibrate(t, 2000, seed=4)
    assert np.median(hits) < thr < np.median(misses)
    assert thr == pytest.approx((misses.mean() + 2 * hits.mean()) / 3)


def test_same_seed_same_result():
    (k1, a1), (k2, a2) = _boot("off"), _boot("off")
    a = m.leak(k1, a1, m.secret_address(k1), 16, seed=9)
    b_ = m.leak(k2, a2, m.secret_address(k2), 16, seed=9)
    assert a.data == b_.data and a.cycles == b_.cycles


@pytest.mark.parametrize("address,length,message", [
    (0x0000_8000_0000_0000, 8, "not canonical"),
    (0xFFFF_FFFF_8000_0000, 0, "length"),
    (0xFFFF_FFFF_8000_0000, -3, "length"),
    (0xFFFF_FFFF_8000_0000, m.MAX_LEAK_BYTES + 1, "length"),
    (0x0000_7FFF_FFFF_FFF0, 64, "canonical half"),
])
def test_bad_requests_are_refused(address, length, message):
    k, attacker = _boot("off")
    with pytest.raises(KaiserEduError, match=message):
        m.leak(k, attacker, address, length)


def test_bad_retries_refused():
    k, attacker = _boot("off")
    with pytest.raises(KaiserEduError, match="retries"):
        m.leak(k, attacker, m.secret_address(k), 4, retries=0)


def test_observe_and_the_reference_decoder_agree_with_leak():
    from kaiser_edu.attacks.flush_reload import decode

    k, attacker = _boot("off")
    obs = m.observe(k, attacker, m.secret_address(k), 20, retries=8, seed=2)
    assert obs.times.shape == (20, 8, 256) and obs.times.dtype == np.float32
    threshold = (obs.misses.mean() + 2 * obs.hits.mean()) / 3
    data, confidence = decode(obs.times, threshold)
    assert bytes(data) == obs.truth == b"The KAISER secret: k"
    assert (confidence > 0.5).all()
    # under PTI the same receiver sees only misses
    k, attacker = _boot("pti")
    obs = m.observe(k, attacker, m.secret_address(k), 20, retries=8, seed=2)
    assert (obs.times.min(axis=(1, 2)) > threshold).all()
    assert not decode(obs.times, threshold)[0].any()


def test_observe_refuses_huge_requests():
    k, attacker = _boot("off")
    with pytest.raises(KaiserEduError, match="at most 65536"):
        m.observe(k, attacker, m.secret_address(k), 4096, retries=100)


def test_decode_refuses_wrong_shapes():
    from kaiser_edu.attacks.flush_reload import decode

    with pytest.raises(KaiserEduError, match="shape"):
        decode(np.zeros((3, 255)), 100.0)


@pytest.mark.parametrize("isolation,forwarded", [("off", True), ("pti", False)])
def test_story_steps_through_one_attempt(isolation, forwarded):
    k, attacker = _boot(isolation)
    s = m.story(k, attacker, m.secret_address(k), seed=2)
    titles = [t for t, _ in s.steps()]
    assert titles == ["the load", "the forwarding", "the dependent access", "the fault",
                      "the roll-back", "the cache line that stays"]
    assert len(s.reload_times) == 256
    if forwarded:
        assert s.value == ord("T") and s.line == ord("T") and s.decoded == ord("T")
        assert "protection violation" in s.walk.summary()
    else:
        assert s.value is None and s.line is None and s.decoded is None
        assert "not-present" in s.walk.summary()
    assert "TSX" in s.fault  # the Skylake model has RTM


def test_data_cache_flush_reload_finds_the_touched_line():
    from kaiser_edu.attacks.flush_reload import PROBE_STRIDE, DataCache

    cache, probe, t = DataCache(), 0x4000_0000, timing("haswell")
    lines = probe + np.arange(256) * PROBE_STRIDE
    for seed in range(5):
        for a in lines:
            cache.clflush(int(a))
        cache.access(probe + 200 * PROBE_STRIDE + 63)  # same 64-byte line as +200*4096
        assert cache.cached(probe + 200 * PROBE_STRIDE) and not cache.cached(probe + 64)
        times = cache.reload(lines, t, seed=seed)
        _, _, thr = calibrate(t, 500, seed)
        assert list(np.flatnonzero(times < thr)) == [200]
        assert all(cache.cached(int(a)) for a in lines)  # a reload caches what it loads


def test_more_noise_means_false_hits_and_errors():
    """With a noise core far wider than the hit/miss gap, misses cross the threshold: the
    receiver stops at false hits, so bytes come back wrong. Nothing else changed."""
    from dataclasses import replace

    k, attacker = _boot("off")
    quiet = m.leak(k, attacker, m.secret_address(k), 54, seed=4)
    noisy = m.leak(k, attacker, m.secret_address(k), 54, seed=4,
                   costs=replace(timing("skylake"), noise_sigma=90.0))
    assert quiet.accuracy == 1.0
    assert noisy.accuracy < 0.9 and noisy.error_rate > 0.1


def test_a_stale_tlb_entry_forwards_the_old_frame():
    """The forwarded value comes from the translation the hardware used: after the kernel
    repoints .data's 2 MiB page without a TLB flush, a load that hits the stale (global)
    TLB entry forwards the old frame's byte; the fault drops the entry, and the next load
    walks the tables and forwards the new frame's byte."""
    from kaiser_edu.hw.mmu import TraceBuilder

    k, attacker = _boot("off")
    assert k.switch_to(attacker).ok
    secret = m.secret_address(k)
    k.run_ops(TraceBuilder().read(secret, cpl=0))  # the kernel uses the page: TLB filled
    pmd = next(e for e in k.kernel_tables.entries(secret) if e.level == 2)
    new = k.alloc.alloc_contig(512, align=b.PMD_SIZE)
    k.mem.write_qword(new + (secret & (b.PMD_SIZE - 1)), int.from_bytes(b"NEWFRAME", "little"))
    k.mem.write_qword(pmd.pa, (pmd.value & ~b.phys_addr_mask(52)) | new)  # no flush
    loads = tr.transient_loads(k, np.array([secret, secret + 1], np.uint64))
    assert list(loads.tlb) == [1, 0]  # an L1 TLB hit, then (entry dropped) a walk
    assert bytes(loads.value) == b"TE"  # old frame's 'T', new frame's 'E'


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("isolation", ["off", "kaiser", "pti"])
def test_the_idt_in_the_cpu_entry_area_reveals_the_text_base(isolation, seed):
    """Under PTI no secret leaks, but the IDT is mapped in the user tables: its #PF gate
    names asm_exc_page_fault, whose offset in the image gives _text."""
    from kaiser_edu.kernel.idt import handlers

    k, attacker = _boot(isolation, "skylake", seed)
    assert handlers(k)[14] == k.image.symbol("asm_exc_page_fault")
    base, r = m.idt_text_base(k, attacker, seed=seed)
    assert base == k.layout.kernel_text, (r.why, r.data.hex())
    k2, attacker2 = _boot(isolation, "zen2", seed)
    assert m.idt_text_base(k2, attacker2, seed=seed)[0] is None  # not affected: nothing
