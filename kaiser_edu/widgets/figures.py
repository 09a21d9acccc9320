"""The figures of lessons 01-03, as matplotlib Figure objects.

Every function returns a fresh :class:`kaiser_edu.display.Figure` and touches no global
pyplot state (no ``plt.figure()``, nothing left open), so a notebook can make as many as it
likes. The class is matplotlib's own Figure with alt text: a notebook cell ending in a
figure shows it as a PNG with that alt text even when pyplot was never imported. Every text
is at least 9 pt (``display.MIN_FONT_PT``) and every figure at most 9.5 inches wide, so a
laptop's JupyterLab shows it unscaled with readable labels.

Figures that need numbers compute them with the numba MMU through
:func:`kaiser_edu.widgets.tlb_lab.tlb_experiment`; the computation is also available on its
own (:func:`miss_rate_data`, :func:`flush_vs_pcid_data`). All of them are deterministic for
a given seed. Those sweeps show a tqdm progress bar if they run for more than a second
(``progress=False`` never shows one - use that, or ``# NBVAL_IGNORE_OUTPUT``, in notebooks
that nbval compares).

Colours are the Okabe-Ito palette, and every colour is doubled by a label, a marker or a
hatch, so nothing depends on telling red from green.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle
from tqdm.auto import tqdm

from kaiser_edu.display.figures import MIN_FONT_PT, Figure
from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.address import is_canonical
from kaiser_edu.hw.mmu import TLBConfig
from kaiser_edu.hw.pgtable import PageTables
from kaiser_edu.widgets import _view
from kaiser_edu.widgets.address_explorer import explore_address
from kaiser_edu.widgets.tlb_lab import TLBParams, tlb_experiment

_TABLE_NAMES = {5: "PML5", 4: "PML4", 3: "PDPT", 2: "PD", 1: "PT"}
_CYCLE = [_view.OKABE_ITO[k] for k in ("blue", "orange", "bluish_green", "reddish_purple",
                                       "sky_blue", "vermillion")]
_MARKERS = ["o", "s", "^", "D", "v", "P"]


def _progress(total: int, progress: bool | None, desc: str) -> tqdm:
    """tqdm that appears after one second (None), at once (True) or never (False)."""
    return tqdm(total=total, desc=desc, disable=progress is False,
                delay=0.0 if progress else 1.0, leave=False)


# --- (a) the tree of page tables -----------------------------------------------------------
# Inches. At 9 pt (display.MIN_FONT_PT) a monospace character is 0.075 in wide, so a 1.62 in
# box holds "[0] P RW A D PS G NX" (20 characters) and a 1.75 in frame box an 18-digit
# address; four table columns and the frames make a 9.4 in figure, which a laptop's
# JupyterLab shows unscaled. Arrows run behind the boxes, never through their text.
_COL_W, _BOX_W, _FRAME_W, _ROW_H, _TITLE_H, _GAP = 1.86, 1.62, 1.75, 0.2, 0.42, 0.2
_FONT = 9


def _short_flags(value: int, level: int, maxphyaddr: int) -> str:
    """describe_entry() without the frame number, plus RSVD if a reserved bit is set."""
    words = b.describe_entry(value, level, maxphyaddr).split(" pfn=")[0]
    if value & b.PAGE_PRESENT and value & b.reserved_mask(maxphyaddr):
        words += " RSVD!"
    return words


def page_table_tree(machine: Any, vas: Iterable[int], *, title: str | None = None) -> Figure:
    """Draw the tables a walk reads to translate ``vas``: one box per table (labelled with
    its level and physical address) listing only the entries used, each with its index and
    flags; arrows from each entry to the table or frame it points to; frames on the right.

    ``machine`` is a :class:`~kaiser_edu.hw.PageTables` or anything with a ``.pt`` (such as
    :func:`kaiser_edu.widgets.walk_stepper.demo_machine`). A not-present entry is listed
    with "not present" and no arrow; a non-canonical address is only named in the caption.
    Patches carry gids ``"table"``, ``"frame"``, ``"arrow"`` and ``"cr3"`` for tests.
    """
    pt: PageTables = machine.pt if hasattr(machine, "pt") else machine
    vas = list(vas)
    if not vas:
        raise KaiserEduError("page_table_tree needs at least one address")
    levels = pt.levels
    maxphy = pt.mem.maxphyaddr
    mask = b.phys_addr_mask(maxphy)
    tables: dict[int, dict] = {}  # table pa -> {"level": int, "rows": {index: value}}
    frames: dict[tuple[int, int], list[int]] = {}  # (base, size) -> vas
    edges: dict[tuple[int, int], tuple[str, Any]] = {}
    captions = []
    for va in vas:
        if not is_canonical(va, levels):
            captions.append(f"{va:#x}: not canonical - #GP, no table is read")
            continue
        path = []
        for e in pt.entries(va):
            table, index = e.pa & ~(b.PAGE_SIZE - 1), (e.pa & 0xFFF) >> 3
            tables.setdefault(table, {"level": e.level, "rows": {}})["rows"][index] = e.value
            path.append(f"{_TABLE_NAMES[e.level]}[{index}]")
            if not e.present:
                path.append("not present (#PF)")
            elif e.is_leaf:
                size = 1 << b.level_shift(e.level)
                base = e.value & mask & ~(size - 1)
                frames.setdefault((base, size), []).append(va)
                edges[(table, index)] = ("frame", (base, size))
                path.append(f"{b.size_name(size)} frame {base:#x}")
            else:
                edges[(table, index)] = ("table", e.value & mask)
        captions.append(f"{va:#x}: " + " -> ".join(path))

    # Order each column like the entries pointing into it (fewer crossing arrows): a node's
    # sort key is its parent's key followed by the index of the entry that points to it.
    sort_key: dict[tuple[str, Any], tuple[int, ...]] = {}
    for table, node in tables.items():
        if node["level"] == levels:
            sort_key[("table", table)] = (0,)
    for level in range(levels, 0, -1):
        for (table, index), target in sorted(edges.items()):
            parent = sort_key.get(("table", table))
            if tables[table]["level"] == level and parent is not None:
                key = (*parent, index)
                sort_key[target] = min(sort_key.get(target, key), key)

    # Layout in inches: column 0 = top-level table ... column levels = frames.
    columns: dict[int, list[tuple[str, Any, float]]] = {}
    for table, node in tables.items():
        height = _TITLE_H + _ROW_H * len(node["rows"]) + 0.06
        columns.setdefault(levels - node["level"], []).append(("table", table, height))
    for key, frame_vas in frames.items():
        height = _TITLE_H + _ROW_H * len(frame_vas) + 0.06
        columns.setdefault(levels, []).append(("frame", key, height))
    for items in columns.values():
        items.sort(key=lambda item: sort_key.get((item[0], item[1]), (1 << 20,)))
    cr3_h = 0.5
    col_heights = [sum(h for *_, h in items) + _GAP * (len(items) - 1)
                   + (cr3_h if col == 0 else 0) for col, items in columns.items()]
    body_h = max(col_heights) if col_heights else 1.0
    caption_h = 0.19 * len(captions) + 0.15
    title_h = 0.45
    width = 0.25 + _COL_W * levels + _FRAME_W
    height = title_h + body_h + caption_h + 0.2
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")

    anchor: dict[Any, tuple[float, float]] = {}  # node -> (x left, y of its title)
    row_y: dict[tuple[int, int], tuple[float, float]] = {}  # (table, index) -> (x right, y)
    for col, items in sorted(columns.items()):
        x = 0.2 + col * _COL_W
        y = height - title_h - (cr3_h if col == 0 else 0)
        for kind, key, h in items:
            if kind == "table":
                level = tables[key]["level"]
                color = _view.LEVEL_COLORS[level]
                name = (f"{_TABLE_NAMES[level]} ({b.linux_level_name(level, levels)})\n"
                        f"@ {key:#x}")
                lines = []
                for index, value in sorted(tables[key]["rows"].items()):
                    lines.append((index, f"[{index}] {_short_flags(value, level, maxphy)}",
                                  bool(value & b.PAGE_PRESENT)))
            else:
                base, size = key
                color = "#DDDDDD"
                name = f"{b.size_name(size)} frame\n{base:#x}"
                lines = [(None, f"{va:#x}", True) for va in frames[key]]
            box = FancyBboxPatch((x, y - h), _BOX_W if kind == "table" else _FRAME_W, h,
                                 boxstyle="round,pad=0.02", facecolor=color,
                                 edgecolor="#333333", linewidth=0.8, zorder=2, gid=kind)
            ax.add_patch(box)
            ax.text(x + 0.06, y - _TITLE_H / 2 - 0.02, name, fontsize=_FONT, fontweight="bold",
                    va="center", ha="left", linespacing=1.1)
            anchor[(kind, key)] = (x, y - _TITLE_H / 2)
            for i, (index, text, present) in enumerate(lines):
                ry = y - _TITLE_H - _ROW_H * (i + 0.5)
                ax.text(x + 0.08, ry, text if present else f"[{index}] not present  x",
                        fontsize=_FONT, family="monospace", va="center", ha="left",
                        style="normal" if present else "italic")
                if index is not None:
                    row_y[(key, index)] = (x + _BOX_W, ry)
            y -= h + _GAP

    top = next((t for t, n in tables.items() if n["level"] == levels), None)
    if top is not None:
        x0, y0 = anchor[("table", top)]
        ax.add_patch(FancyBboxPatch((x0, y0 + _TITLE_H / 2 + 0.18), 1.3, 0.24,
                                    boxstyle="round,pad=0.02", facecolor="white",
                                    edgecolor="#333333", gid="cr3"))
        ax.text(x0 + 0.06, y0 + _TITLE_H / 2 + 0.30, f"CR3 = {top:#x}", fontsize=_FONT,
                va="center", family="monospace")
        ax.add_patch(FancyArrowPatch((x0 + 0.45, y0 + _TITLE_H / 2 + 0.18),
                                     (x0 + 0.45, y0 + _TITLE_H / 2 + 0.02),
                                     arrowstyle="-|>", mutation_scale=8, gid="arrow"))
    for (table, index), (kind, target) in edges.items():
        start = row_y[(table, index)]
        end = anchor[(kind, target)]
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=8,
                                     shrinkA=1, shrinkB=1, linewidth=0.8, color="#222222",
                                     connectionstyle="arc3,rad=0.0", zorder=1, gid="arrow"))
    ax.text(0.2, height - 0.22, title or f"Page tables translating {len(vas)} address"
            f"{'es' if len(vas) > 1 else ''} ({levels}-level paging)", fontsize=10,
            fontweight="bold", va="center")
    for i, line in enumerate(captions):
        ax.text(0.2, caption_h - 0.19 * (i + 1), line, fontsize=_FONT, family="monospace",
                va="center")
    fig.alt = ("Tree of page tables: " + "; ".join(captions) + ". Starting from CR3, each "
               "box is one table with the entries the walks read, and arrows lead to the "
               "next table or to the page frame.")
    return fig


# --- (b) miss rate against working set -------------------------------------------------------
DEFAULT_CONFIGS = ((16, 64), (64, 512), (64, 1536))
DEFAULT_WORKING_SETS = (8, 16, 32, 64, 128, 256, 512, 1024, 1536, 2048, 4096, 8192)


def _config_pair(config: TLBConfig | TLBParams | tuple[int, int]) -> dict[str, int]:
    if isinstance(config, TLBConfig):
        return {"l1_entries": config.l1_entries, "l1_ways": config.l1_ways,
                "l2_entries": config.l2_entries, "l2_ways": config.l2_ways}
    if isinstance(config, TLBParams):
        return {"l1_entries": config.l1_entries, "l1_ways": config.l1_ways,
                "l2_entries": config.l2_entries, "l2_ways": config.l2_ways}
    l1, l2 = config
    return {"l1_entries": int(l1), "l2_entries": int(l2)}


def _config_label(pair: dict[str, int]) -> str:
    return f"L1 {pair['l1_entries']} + L2 {pair['l2_entries']} entries"


def miss_rate_data(
    configs: Sequence[TLBConfig | TLBParams | tuple[int, int]] = DEFAULT_CONFIGS,
    working_sets: Sequence[int] = DEFAULT_WORKING_SETS,
    *,
    accesses: int = 40_000,
    pattern: str = "random",
    seed: int = 0,
    progress: bool | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """For each TLB config (a TLBConfig, TLBParams or ``(l1_entries, l2_entries)``), the
    :func:`~kaiser_edu.widgets.tlb_lab.tlb_experiment` result at each working-set size."""
    pairs = [_config_pair(c) for c in configs]
    out: dict[str, list[dict[str, Any]]] = {}
    with _progress(len(pairs) * len(working_sets), progress, "TLB sweep") as bar:
        for pair in pairs:
            runs = []
            for ws in working_sets:
                runs.append(tlb_experiment(TLBParams(working_set=int(ws), accesses=accesses,
                                                     pattern=pattern, seed=seed, **pair)))
                bar.update()
            out[_config_label(pair)] = runs
    return out


def miss_rate_vs_working_set(
    configs: Sequence[TLBConfig | TLBParams | tuple[int, int]] = DEFAULT_CONFIGS,
    working_sets: Sequence[int] = DEFAULT_WORKING_SETS,
    *,
    accesses: int = 40_000,
    pattern: str = "random",
    seed: int = 0,
    progress: bool | None = None,
) -> Figure:
    """TLB misses (page walks) per access against the working set, one curve per TLB
    config; a dotted vertical line marks each config's reach (its L2 entries).

    Below the reach the working set fits and almost nothing misses; above it a random
    access misses with probability about 1 - reach / working set (the L2 is LRU within
    each set, so the knee is a little soft). With ``pattern="loop"`` the LRU pathology
    appears: a loop one page larger than the TLB misses every time.
    """
    data = miss_rate_data(configs, working_sets, accesses=accesses, pattern=pattern,
                          seed=seed, progress=progress)
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for i, (label, runs) in enumerate(data.items()):
        color, marker = _CYCLE[i % len(_CYCLE)], _MARKERS[i % len(_MARKERS)]
        xs = [r["params"]["working_set"] for r in runs]
        ys = [100 * r["miss_rate"] for r in runs]
        ax.plot(xs, ys, marker=marker, color=color, label=label, linewidth=1.6)
        ax.axvline(runs[0]["reach_pages"], color=color, linestyle=":", linewidth=1,
                   label="_reach")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("working set (4 KiB pages, log scale); dotted: L2 reach")
    ax.set_ylabel("page walks per access (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"TLB miss rate vs working set ({pattern} reads, {accesses} per point, "
                 f"seed {seed})", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(title="TLB", fontsize=MIN_FONT_PT, title_fontsize=MIN_FONT_PT, loc="upper left")
    knees = ", ".join(f"{label} ({runs[0]['reach_pages']} pages)" for label, runs in data.items())
    fig.alt = (f"Line chart: page walks per access against the working set, from "
               f"{working_sets[0]} to {working_sets[-1]} pages on a log scale, one line per TLB: "
               f"{knees}. Each line stays near 0% until the working set exceeds the TLB's "
               "reach, then climbs towards 100%.")
    return fig


# --- (c) CR3 switches: flush versus PCID --------------------------------------------------------
DEFAULT_SWITCH_INTERVALS = (10, 30, 100, 300, 1000, 3000, 10_000)


def flush_vs_pcid_data(
    switch_intervals: Sequence[int] = DEFAULT_SWITCH_INTERVALS,
    *,
    working_set: int = 48,
    l1_entries: int = 64,
    l2_entries: int = 1536,
    n_spaces: int = 2,
    accesses: int = 60_000,
    seed: int = 0,
    progress: bool | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """tlb_experiment results for each switch interval with PCIDE=0 (``"flush"``) and with
    PCIDs (``"pcid"``), plus ``"never"``: one run without any CR3 write."""
    base = TLBParams(l1_entries=l1_entries, l2_entries=l2_entries, working_set=working_set,
                     n_spaces=n_spaces, accesses=accesses, seed=seed)
    out: dict[str, list[dict[str, Any]]] = {"flush": [], "pcid": []}
    with _progress(2 * len(switch_intervals) + 1, progress, "CR3 sweep") as bar:
        for n in switch_intervals:
            for key, pcid in (("flush", False), ("pcid", True)):
                out[key].append(tlb_experiment(base, switch_every=int(n), pcid=pcid))
                bar.update()
        out["never"] = [tlb_experiment(base, switch_every=0)]
        bar.update()
    return out


def flush_vs_pcid(
    switch_intervals: Sequence[int] = DEFAULT_SWITCH_INTERVALS,
    *,
    working_set: int = 48,
    l1_entries: int = 64,
    l2_entries: int = 1536,
    n_spaces: int = 2,
    accesses: int = 60_000,
    seed: int = 0,
    progress: bool | None = None,
) -> Figure:
    """Page walks per access when the CPU switches between ``n_spaces`` address spaces
    every N accesses: with CR4.PCIDE=0 each MOV to CR3 flushes the TLB and every space
    refills its working set after each switch; with PCIDs (and the NOFLUSH bit) each
    space's entries survive and the miss rate stays at the no-switch level as long as all
    the working sets fit in the TLB together."""
    data = flush_vs_pcid_data(switch_intervals, working_set=working_set,
                              l1_entries=l1_entries, l2_entries=l2_entries,
                              n_spaces=n_spaces, accesses=accesses, seed=seed,
                              progress=progress)
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    styles = {"flush": ("full flush on every CR3 write (PCIDE=0)", _CYCLE[5], "o", "-"),
              "pcid": ("PCID tagging, CR3 written with NOFLUSH", _CYCLE[0], "s", "--")}
    for key, (label, color, marker, ls) in styles.items():
        xs = [r["params"]["switch_every"] for r in data[key]]
        ys = [r["miss_rate"] for r in data[key]]
        ax.plot(xs, ys, marker=marker, linestyle=ls, color=color, label=label, linewidth=1.6)
    never = data["never"][0]["miss_rate"]
    ax.axhline(never, color="#555555", linestyle=":", linewidth=1.2,
               label=f"no CR3 writes ({never:.3f})")
    ax.set_xscale("log")
    ax.set_xlabel("accesses between CR3 writes (log scale)")
    ax.set_ylabel("page walks per access")
    ax.set_title(f"Address-space switches: flush vs PCID ({n_spaces} spaces x {working_set} "
                 f"pages, L1 {l1_entries} + L2 {l2_entries})", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=MIN_FONT_PT, loc="upper right")
    first, last = data["flush"][0], data["flush"][-1]
    fig.alt = (f"Line chart: page walks per access against the accesses between CR3 writes. "
               f"With a full flush on every CR3 write the rate falls from "
               f"{first['miss_rate']:.2f} (every {first['params']['switch_every']} accesses) "
               f"to {last['miss_rate']:.3f} (every {last['params']['switch_every']}); with "
               f"PCIDs it stays at the no-switch level, {never:.3f}.")
    return fig


# --- (d) the 64 bits of an address -----------------------------------------------------------
def address_bits_figure(va: int, levels: int = 4) -> Figure:
    """The 64 bits of ``va`` as a row of cells coloured and labelled by field (sign
    extension, PML5/PML4/PDPT/PD/PT indices, offset), with each field's value underneath.
    Sign-extension bits that break the canonical rule are hatched and outlined.
    Each bit cell is a Rectangle with gid ``"bit"``."""
    info = explore_address(va, levels)
    cell, x0 = 0.138, 0.3  # 9.4 inches: shown unscaled at laptop width
    fig = Figure(figsize=(x0 * 2 + 64 * cell, 1.75))
    ax = fig.add_axes((0, 0, 1, 1))
    width = x0 * 2 + 64 * cell
    ax.set_xlim(0, width)
    ax.set_ylim(0, 1.75)
    ax.axis("off")
    top_value = va >> info.top_bit & 1
    y = 0.7
    for f in info.fields:
        for bit in range(f.hi, f.lo - 1, -1):
            value = va >> bit & 1
            x = x0 + (63 - bit) * cell
            bad = f.name == "sign extension" and value != top_value
            ax.add_patch(Rectangle((x, y), cell, 0.32, facecolor=f.color,
                                   edgecolor="#000000" if bad else "#555555",
                                   linewidth=1.6 if bad else 0.4,
                                   hatch="//" if bad else None, gid="bit"))
            dark = f.color in (_view.LEVEL_COLORS[0], _view.LEVEL_COLORS[5])
            ax.text(x + cell / 2, y + 0.16, str(value), ha="center", va="center",
                    fontsize=MIN_FONT_PT, family="monospace",
                    color="white" if dark else "black",
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.4}
                    if bad else None)
        left = x0 + (63 - f.hi) * cell
        right = x0 + (64 - f.lo) * cell
        # The highest bit of each field (and bit 0): one number per field boundary, so no
        # two labels at 9 pt share a pair of neighbouring cells.
        edges = [(f.hi, left + cell / 2)] + ([(0, right - cell / 2)] if f.lo == 0 else [])
        for edge_bit, x in edges:
            ax.text(x, y + 0.36, str(edge_bit), ha="center", va="bottom", fontsize=MIN_FONT_PT)
        ax.plot([left + 0.02, right - 0.02], [y - 0.08, y - 0.08], color="#333333",
                linewidth=1)
        shown = f"{f.value:#x}" if f.name in ("offset", "sign extension") else str(f.value)
        label = "sign ext." if f.name == "sign extension" else f.name
        ax.text((left + right) / 2, y - 0.22, label, ha="center", va="center",
                fontsize=MIN_FONT_PT, fontweight="bold")
        ax.text((left + right) / 2, y - 0.44, shown, ha="center", va="center",
                fontsize=MIN_FONT_PT, family="monospace")
    status = (f"canonical, {info.half} half" if info.canonical
              else f"NOT canonical (hatched bits differ from bit {info.top_bit}): #GP(0)")
    ax.text(x0, 1.55, f"{va:#018x} ({levels}-level paging): {status}; Linux: "
            f"{info.region.name}", fontsize=9.5, fontweight="bold", va="center")
    fields = ", ".join(f"{f.name} bits {f.hi}-{f.lo} = "
                       f"{f.value:#x}" if f.name in ("offset", "sign extension") else
                       f"{f.name} bits {f.hi}-{f.lo} = {f.value}" for f in info.fields)
    fig.alt = (f"The 64 bits of {va:#018x} as a row of cells grouped by field: {fields}. "
               f"The address is {status}.")
    return fig


# --- the TLB lab's bar chart ------------------------------------------------------------------
def tlb_runs_figure(results: Sequence[dict[str, Any]]) -> Figure:
    """Where each of the last few TLB-lab runs found its translations: a horizontal bar per
    run split into L1 hits, L2 hits and page walks (hatched), as shares of the accesses."""
    if not results:
        raise KaiserEduError("tlb_runs_figure needs at least one tlb_experiment result")
    fig = Figure(figsize=(8.0, 1.1 + 0.5 * len(results)), layout="constrained")
    ax = fig.add_subplot()
    labels = []
    parts = (("L1 hits", "l1_hits", _view.OKABE_ITO["blue"], None),
             ("L2 hits", "l2_hits", _view.OKABE_ITO["sky_blue"], "..."),
             ("page walks", "walks", _view.OKABE_ITO["vermillion"], "///"))
    for i, r in enumerate(results):
        p = r["params"]
        switch = f"CR3/{p['switch_every']}" if p["switch_every"] else "no CR3"
        labels.append(f"L1 {p['l1_entries']}/L2 {p['l2_entries']}, ws {p['working_set']}, "
                      f"{switch}{', PCID' if p['pcid'] else ''}")
        left = 0.0
        for name, key, color, hatch in parts:
            share = r[key] / r["accesses"]
            ax.barh(i, share, left=left, color=color, hatch=hatch, edgecolor="#333333",
                    linewidth=0.5, label=name if i == 0 else "_")
            left += share
    ax.set_yticks(range(len(results)), labels, fontsize=MIN_FONT_PT)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of accesses", fontsize=MIN_FONT_PT)
    ax.tick_params(axis="x", labelsize=MIN_FONT_PT)
    ax.set_title("Where translations came from (latest run at the bottom)", fontsize=10)
    fig.legend(fontsize=MIN_FONT_PT, ncols=3, loc="outside lower center", frameon=False)
    last = results[-1]
    fig.alt = (f"Bar chart of the last {len(results)} TLB-lab runs: for the latest ("
               f"{labels[-1]}), {last['l1_hits'] / last['accesses']:.0%} of the accesses hit "
               f"the L1 TLB, {last['l2_hits'] / last['accesses']:.0%} the L2 TLB and "
               f"{last['walks'] / last['accesses']:.0%} needed a page walk.")
    return fig
