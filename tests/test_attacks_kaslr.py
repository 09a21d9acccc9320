"""KASLR breaks: guesses against kernel.layout's truth, per method and isolation mode."""

from __future__ import annotations

import numpy as np
import pytest

from kaiser_edu.attacks.kaslr import (
    METHODS,
    break_kaslr,
    direct_map_candidates,
    text_candidates,
)
from kaiser_edu.errors import KaiserEduError
from kaiser_edu.kernel.layout import KernelLayout
from kaiser_edu.kernel.machine import Kernel

SEEDS = (0, 3, 11)

# What the model says each method finds: (text found, direct map found).
# KAISER maps only the entry text (4 KiB pages, at _text + 0x1000) into the shadow: probing
# slot bases finds nothing, probing entry_SYSCALL_64's address (EntryBleed) finds it.
# PTI clones the entry text's whole 2 MiB PMD, which is _text's own slot: any method that
# probes it finds the base; the direct map is absent from the user PGD under both.
EXPECTED = {
    ("off", "prefetch"): (True, True),
    ("off", "double-fault"): (True, True),
    ("off", "entrybleed"): (True, None),
    ("kaiser", "prefetch"): (False, False),
    ("kaiser", "double-fault"): (False, False),
    ("kaiser", "entrybleed"): (True, None),
    ("pti", "prefetch"): (True, False),
    ("pti", "double-fault"): (True, False),
    ("pti", "entrybleed"): (True, None),
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("isolation,method", sorted(EXPECTED))
def test_outcome_per_mode_and_method(isolation, method, seed):
    k = Kernel(isolation=isolation, cpu="skylake", seed=seed)
    r = break_kaslr(k, k.spawn("attacker"), method=method, seed=seed)
    text_found, dm_found = EXPECTED[isolation, method]
    assert r.text.truth == k.layout.kernel_text
    if text_found:
        assert r.text_base == k.layout.kernel_text
    else:
        assert r.text_base is None  # failure reported, never a wrong guess
    if dm_found is None:
        assert r.direct_map_base is None and r.direct_map is None
    elif dm_found:
        assert r.direct_map_base == k.layout.page_offset
    else:
        assert r.direct_map_base is None
    assert len(r.candidates) == len(r.times) and np.isfinite(r.times).all()


def test_truth_is_always_a_candidate():
    texts, dmaps = set(text_candidates().tolist()), set(direct_map_candidates().tolist())
    for seed in range(200):
        layout = KernelLayout.boot(seed)
        assert layout.kernel_text in texts
        assert layout.page_offset in dmaps


def test_the_mapped_slots_are_faster_in_the_figure():
    k = Kernel(isolation="off", seed=2)
    r = break_kaslr(k, k.spawn("attacker"), method="prefetch", seed=2)
    mapped = r.text.mapped
    assert mapped.sum() == 4  # the image's four 2 MiB pages
    assert r.times[mapped].max() < r.threshold < r.times[~mapped].min()


def test_not_affected_cpu_does_not_matter_for_kaslr():
    """The KASLR breaks need no Meltdown bug: they time translation, which every CPU does."""
    k = Kernel(isolation="off", cpu="zen2", seed=4)
    r = break_kaslr(k, k.spawn("attacker"), method="prefetch", seed=4)
    assert r.text_correct


def test_deterministic_per_seed():
    k1, k2 = Kernel(isolation="off", seed=1), Kernel(isolation="off", seed=1)
    a = break_kaslr(k1, k1.spawn("a"), method="double-fault", seed=5)
    b_ = break_kaslr(k2, k2.spawn("a"), method="double-fault", seed=5)
    assert np.array_equal(a.times, b_.times)


@pytest.mark.parametrize("kwargs,message", [
    ({"method": "rowhammer"}, "method must be one of"),
    ({"rounds": 1}, "rounds"),
    ({"rounds": 10**6}, "rounds"),
])
def test_bad_arguments(kwargs, message):
    k = Kernel(isolation="off", seed=0)
    with pytest.raises(KaiserEduError, match=message):
        break_kaslr(k, k.spawn("a"), **kwargs)


def test_methods_listed():
    assert METHODS == ("prefetch", "double-fault", "entrybleed")


def test_entrybleed_the_syscall_leaves_the_entry_text_in_the_tlb():
    """Under PTI the entry text is global in the user tables: right after the syscall its
    slot is a TLB hit already in the first round, before any probe could have filled it."""
    k = Kernel(isolation="pti", seed=6)
    r = break_kaslr(k, k.spawn("attacker"), method="entrybleed", seed=6)
    true = np.flatnonzero(r.candidates == k.layout.kernel_text)[0]
    assert r.text.first[true] < r.threshold
    others = np.delete(r.text.first, true)
    assert np.median(others) > r.threshold


@pytest.mark.parametrize("seed", (1, 9))
@pytest.mark.parametrize("isolation", ["off", "kaiser", "pti"])
def test_flare_hides_mapping_state_not_tlb_state(isolation, seed):
    """FLARE maps a dummy into every free slot: the breaks that ask 'is it mapped?' report
    nothing (never a wrong guess); EntryBleed, which asks 'did the syscall use it?', wins."""
    from kaiser_edu.attacks.flare import apply_flare, user_visible_tables

    k = Kernel(isolation=isolation, seed=seed)
    assert apply_flare(k) > 400
    tables = user_visible_tables(k)
    for slot in text_candidates()[::37].tolist():
        assert tables.translate(int(slot)) is not None  # every slot translates now
    attacker = k.spawn("attacker")
    for method in ("prefetch", "double-fault"):
        r = break_kaslr(k, attacker, method=method, seed=seed)
        assert r.text_base is None, method
        assert r.text.mapped.sum() > 32  # it saw (most of) them mapped: ambiguous
    r = break_kaslr(k, attacker, method="entrybleed", seed=seed)
    assert r.text_base == k.layout.kernel_text
