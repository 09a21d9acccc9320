"""Lesson 06's models, widget and figure (kaiser_edu/widgets/shadow_pgd.py).

The models are checked against the audit (kaiser_edu.kernel.audit) and against the page
tables read directly from physical memory; the widget is driven by setting its controls'
``.value`` and reading back what its Output shows; the figure is rendered with Agg and its
patches counted by gid.
"""

from __future__ import annotations

import matplotlib
import pytest

matplotlib.use("Agg")

from kaiser_edu.errors import KaiserEduError  # noqa: E402
from kaiser_edu.hw import bits as b  # noqa: E402
from kaiser_edu.kernel import Kernel, audit  # noqa: E402
from kaiser_edu.kernel.isolation import kernel_to_user_pgdp  # noqa: E402
from kaiser_edu.widgets import _view  # noqa: E402
from kaiser_edu.widgets.shadow_pgd import (  # noqa: E402
    DEMO_BUFFER,
    MODES,
    ShadowPgdExplorer,
    check_mode,
    demo_machine,
    pgd_pair_view,
    shadow_pgd_figure,
    slot_text,
    user_reachable_kernel,
    walk_both,
)

BUFFER_SLOT = (DEMO_BUFFER >> 39) & 0x1FF


@pytest.fixture(scope="module")
def machines():
    return {mode: demo_machine(mode) for mode in MODES}


# --- the models against the audit -------------------------------------------------------------
def test_off_user_mode_reaches_everything_the_kernel_maps(machines):
    kernel, task = machines["off"]
    reach = user_reachable_kernel(kernel, task)
    everything = audit.mapped_ranges(kernel.mem, task.mm.pgd, half="kernel")
    assert reach.user_pgd == task.mm.pgd
    assert [r.range for r in reach.ranges] == list(everything)
    assert reach.total_bytes == sum(r.size for r in everything)
    assert reach.total_bytes > kernel.ram_bytes  # the whole direct map, at least
    assert reach.outside_allowed == len(reach.ranges)
    assert "everything the kernel maps" in reach.summary()


@pytest.mark.parametrize("mode", ["kaiser", "pti"])
def test_isolated_modes_reach_only_allowed_ranges(machines, mode):
    kernel, task = machines[mode]
    reach = user_reachable_kernel(kernel, task)
    assert reach.user_pgd == task.mm.user_pgd
    assert reach.ranges and reach.outside_allowed == 0
    assert all(r.allowed for r in reach.ranges)
    allowed = kernel.isolation.shadow_allowed()
    for r in reach.ranges:  # every range lies inside the allowed range that names it
        assert any(s <= r.range.start and r.range.end <= e and name == r.allowed
                   for s, e, name in allowed)
    visible = audit.kernel_visible_ranges(kernel.mem, task.mm.user_pgd, allowed)
    assert [(r.range, r.allowed) for r in reach.ranges] == visible
    assert audit.check_isolation(kernel.mem, task.mm.pgd, task.mm.user_pgd, allowed,
                                 kernel_copy=kernel.isolation.kernel_copy_marking) == []
    # Nothing of the secret in .data and nothing of the direct map is translated.
    secret = kernel.image.secret
    assert not any(r.range.contains(secret) for r in reach.ranges)
    assert not any(r.region.startswith("direct map") for r in reach.ranges)
    summary = reach.summary()
    assert summary.startswith(f"user mode can reach {len(reach.ranges)} kernel ranges, "
                              f"{reach.total_bytes // 1024:,} KiB")


def test_isolation_shrinks_what_user_mode_reaches(machines):
    totals = {m: user_reachable_kernel(*machines[m]).total_bytes for m in MODES}
    assert totals["off"] > 1000 * totals["pti"] > 0
    assert totals["kaiser"] < totals["pti"]  # 4 KiB pages vs. a cloned 2 MiB entry-text PMD


def test_an_unallowed_mapping_in_the_shadow_is_reported():
    kernel, task = demo_machine("pti")
    secret = kernel.image.secret
    kernel.isolation._map_user_pte(secret, kernel.image.pa(secret), b.PAGE_KERNEL_RO)
    reach = user_reachable_kernel(kernel, task)
    bad = [r for r in reach.ranges if r.allowed is None]
    assert len(bad) == 1 and bad[0].range.contains(secret)
    assert "1 of them NOT cloned on purpose" in reach.summary()


# --- the PGD pair ----------------------------------------------------------------------------
def _entry(kernel: Kernel, pgd: int, index: int) -> int:
    return kernel.mem.read_qword(pgd + 8 * index)


def test_pgd_pair_matches_memory(machines):
    kernel, task = machines["pti"]
    view = pgd_pair_view(kernel, task)
    assert view.pair and view.mode == "pti"
    assert view.kernel_pgd % 8192 == 0
    assert view.user_pgd == kernel_to_user_pgdp(view.kernel_pgd) == view.kernel_pgd + 4096
    assert view.kernel_cr3 ^ view.user_cr3 == 0x1800  # bit 12 (user PGD) + bit 11 (user PCID)
    present = {i for i in range(512)
               if (_entry(kernel, view.kernel_pgd, i) | _entry(kernel, view.user_pgd, i)) & 1}
    assert {s.index for s in view.slots} == present
    for s in view.slots:
        assert s.kernel_entry == _entry(kernel, view.kernel_pgd, s.index)
        assert s.user_entry == _entry(kernel, view.user_pgd, s.index)


def test_shared_table_detection(machines):
    kernel, task = machines["pti"]
    view = pgd_pair_view(kernel, task)
    for s in view.slots:
        k, u = s.kernel_entry & b.phys_addr_mask(52), s.user_entry & b.phys_addr_mask(52)
        if s.kernel_entry & 1 and s.user_entry & 1:
            assert s.sharing == ("same table" if k == u else "different tables")
        else:
            assert s.sharing == ("kernel copy only" if s.kernel_entry & 1 else "user copy only")
    by_region = {s.regions[0]: s.sharing for s in view.slots}
    assert by_region["user space"] == "same table"
    assert by_region["cpu_entry_area"] == "same table"  # pti_clone_user_shared()
    assert by_region["%esp fixup stacks (espfix)"] == "same table"  # pti_setup_espfix64()
    assert by_region["direct map of all physical memory"] == "kernel copy only"
    # The user half: every slot shared, NX only on the kernel copy (__pti_set_user_pgtbl()).
    user = [s for s in view.slots if s.half == "user"]
    assert {0, BUFFER_SLOT} <= {s.index for s in user}
    assert all(s.sharing == "same table" and s.nx_only_in_kernel_copy for s in user)
    assert all(s.user_bytes == s.kernel_bytes > 0 for s in user)


def test_kaiser_shadow_has_its_own_tables_and_empty_prepopulated_slots(machines):
    view = pgd_pair_view(*machines["kaiser"])
    kernel_half = [s for s in view.slots if s.half == "kernel"]
    assert len(kernel_half) == 256  # kaiser_init() pre-populates every kernel-half entry
    assert view.empty_shadow_slots == sum(s.sharing == "user copy only" for s in kernel_half)
    assert all(s.sharing in ("different tables", "user copy only") for s in kernel_half)
    assert not any(s.empty_shadow for s in view.shown_slots())
    assert "pre-populated by kaiser_init()" in view.text()


def test_off_has_one_pgd(machines):
    kernel, task = machines["off"]
    view = pgd_pair_view(kernel, task)
    assert not view.pair and view.user_pgd == view.kernel_pgd
    assert view.kernel_cr3 == view.user_cr3
    assert {s.sharing for s in view.slots} == {"one PGD"}
    assert not any(s.nx_only_in_kernel_copy for s in view.slots)


def test_a_new_user_mapping_appears_in_both_copies():
    kernel, task = demo_machine("pti")
    addr = 0x6000_0000_0000
    index = (addr >> 39) & 0x1FF
    kernel.mmap(task, b.PAGE_SIZE, addr=addr)
    with pytest.raises(KaiserEduError, match="present in neither copy"):
        pgd_pair_view(kernel, task).slot(index)  # mmap() alone maps nothing yet
    kernel.user_store(task, addr, 1)
    s = pgd_pair_view(kernel, task).slot(index)
    assert s.sharing == "same table" and s.nx_only_in_kernel_copy
    assert s.kernel_entry == s.user_entry | b.PAGE_NX


def test_walk_both_shares_every_level_below_the_pgd(machines):
    kernel, task = machines["pti"]
    levels = walk_both(kernel, task, DEMO_BUFFER)
    assert [lv.level for lv in levels] == [4, 3, 2, 1]
    assert not levels[0].same_entry and all(lv.same_entry for lv in levels[1:])
    pte = levels[-1].kernel
    assert pte.value == levels[-1].user.value and pte.value & b.PAGE_DIRTY
    kernel_only = walk_both(kernel, task, kernel.layout.direct_map(0))
    assert kernel_only[0].user is not None and not kernel_only[0].user.present
    assert "same entry" in levels[1].describe()


def test_slot_text_decodes_both_copies(machines):
    view = pgd_pair_view(*machines["pti"])
    text = slot_text(view.slot(BUFFER_SLOT))
    assert "kernel copy" in text and "user copy" in text and "NX is set" in text


# --- bad input -------------------------------------------------------------------------------
def test_bad_input_errors(machines):
    kernel, task = machines["pti"]
    with pytest.raises(KaiserEduError, match="mode must be one of off, kaiser, pti"):
        check_mode("kpti")
    with pytest.raises(KaiserEduError, match="mode must be one of"):
        demo_machine("on")
    with pytest.raises(KaiserEduError, match="Kernel"):
        pgd_pair_view("not a kernel", task)
    other_kernel, other_task = machines["kaiser"]
    with pytest.raises(KaiserEduError, match="not a task of this kernel"):
        user_reachable_kernel(kernel, other_task)
    with pytest.raises(KaiserEduError, match="64-bit address"):
        walk_both(kernel, task, -1)
    with pytest.raises(KaiserEduError, match="present in neither copy"):
        pgd_pair_view(kernel, task).slot(300)
    with pytest.raises(KaiserEduError, match="no task given"):
        pgd_pair_view(Kernel(isolation="pti"))
    with pytest.raises(KaiserEduError, match="mode must be one of"):
        ShadowPgdExplorer(mode="KPTI")


# --- the widget -------------------------------------------------------------------------------
def test_view_updates_when_the_mode_is_set():
    w = ShadowPgdExplorer()
    assert w.mode.value == "pti" and "Linux PTI" in w.html
    pti_text = w.text
    assert "all of them mapped into the user PGD on purpose" in pti_text
    w.mode.value = "off"
    assert w.text != pti_text and "everything the kernel maps" in w.text
    assert "one PGD" in w.html and w.pair.mode == "off"
    w.set_mode("kaiser")
    assert "KAISER 2017" in w.html and "kernel stack of pid 1" in w.text
    assert "pre-populated by kaiser_init()" in w.html
    w.set_mode("pti")
    assert w.text == pti_text  # the cached machine, unchanged
    assert set(w.machines) == set(MODES)
    assert repr(w) == "ShadowPgdExplorer(mode='pti', slot=None)"


def test_slot_dropdown_shows_one_slot_and_survives_mode_changes():
    w = ShadowPgdExplorer()
    assert BUFFER_SLOT in [v for _, v in w.slot.options]
    before = w.text
    w.slot.value = BUFFER_SLOT
    assert w.text != before and f"PGD[{BUFFER_SLOT}] covers" in w.text
    assert "NX is set in the kernel copy only" in w.html
    w.mode.value = "off"  # the slot exists there too: still selected
    assert w.slot.value == BUFFER_SLOT and f"PGD[{BUFFER_SLOT}] covers" in w.text
    w.slot.value = max(v for _, v in w.slot.options)  # a kernel slot
    assert "NX is set" not in w.text


def test_set_mode_refuses_bad_modes_and_callbacks_never_raise():
    w = ShadowPgdExplorer()
    with pytest.raises(KaiserEduError, match="mode must be one of"):
        w.set_mode("nopti")
    assert w.mode.value == "pti"
    w._safely(lambda: w.pair.slot(300))
    assert w.text.startswith("error: PGD slot 300") and _view.FAULT_COLOR in w.html


# --- the figure -------------------------------------------------------------------------------
def _gids(fig) -> dict[str, int]:
    counts: dict[str, int] = {}
    for patch in fig.axes[0].patches:
        if patch.get_gid():
            counts[patch.get_gid()] = counts.get(patch.get_gid(), 0) + 1
    return counts


def test_figure_draws_shared_tables_once(machines):
    kernel, task = machines["pti"]
    view = pgd_pair_view(kernel, task)
    fig = shadow_pgd_figure(kernel, task)
    gids = _gids(fig)
    rows = len(view.shown_slots())
    assert gids["kernel_entry"] == gids["user_entry"] == rows
    same = sum(s.sharing == "same table" for s in view.slots)
    one_side = sum(s.sharing in ("kernel copy only", "user copy only") for s in view.slots)
    different = sum(s.sharing == "different tables" for s in view.slots)
    assert gids["table"] == same + one_side + 2 * different
    assert gids["arrow"] == 2 * same + one_side + 2 * different
    assert _view.figure_png(fig).startswith(b"\x89PNG")


@pytest.mark.parametrize("mode", ["off", "kaiser"])
def test_figure_other_modes(machines, mode):
    kernel, task = machines[mode]
    fig = shadow_pgd_figure(kernel, task, title="x")
    texts = " ".join(" ".join(t.get_text() for t in fig.axes[0].texts).split())  # unwrapped
    if mode == "off":
        assert "the same PGD" in texts
    else:
        assert "pre-populated by kaiser_init()" in texts
    assert _gids(fig)["kernel_entry"] == len(pgd_pair_view(kernel, task).shown_slots())
