"""The side-channel lab's figures, reproducible: python examples/attack_figures.py [SEEDS]

Meltdown accuracy, bytes observed and simulated leak rate per CPU model and isolation mode
(the kernel secret, 54 bytes, and a victim's page of 4 KiB random bytes read through the
direct map), then which KASLR break finds what, over boots 0..SEEDS-1 (default 5).
"""

from __future__ import annotations

import sys

import numpy as np

from kaiser_edu.attacks import meltdown as m
from kaiser_edu.attacks.flare import apply_flare
from kaiser_edu.attacks.kaslr import METHODS, break_kaslr
from kaiser_edu.kernel import Kernel

SEEDS = range(int(sys.argv[1]) if len(sys.argv) > 1 else 5)

print("Meltdown: mean over boots", list(SEEDS))
print(f"{'cpu':8} {'isolation':9} {'secret ok':>9} {'4 KiB ok':>9} {'observed':>9} "
      f"{'KiB/s sim':>9} {'host s':>7}")
for cpu in ("skylake", "haswell", "core2", "zen2"):
    for isolation in ("off", "kaiser", "pti"):
        rows = []
        for seed in SEEDS:
            k = Kernel(isolation=isolation, cpu=cpu, seed=seed)
            attacker = k.spawn("attacker")
            victim, va = m.spawn_victim(k, np.random.default_rng(seed).bytes(4096))
            page = m.leak(k, attacker, m.direct_map_address(k, victim, va), 4096, seed=seed)
            secret = m.leak(k, attacker, m.secret_address(k), 54, seed=seed)
            rows.append((secret.accuracy, page.accuracy, page.recovered.mean(),
                         page.bytes_per_second / 1024, page.host_seconds))
        s, p, o, rate, host = np.array(rows).T
        shown = f"{rate.mean():9.1f}" if o.mean() else f"{'none':>9}"  # nothing leaked
        print(f"{cpu:8} {isolation:9} {s.mean():9.2%} {p.mean():9.2%} {o.mean():9.2%} "
              f"{shown} {np.median(host):7.3f}")

print("\nKASLR (skylake): boots where _text / page_offset_base was found (never wrong: "
      "a wrong guess would be counted as WRONG)")
for flare in (False, True):
    for isolation in ("off", "kaiser", "pti"):
        for method in METHODS:
            text = dmap = wrong = 0
            for seed in SEEDS:
                k = Kernel(isolation=isolation, seed=seed)
                if flare:
                    apply_flare(k)
                r = break_kaslr(k, k.spawn("attacker"), method=method, seed=seed)
                text += r.text_base == k.layout.kernel_text
                dmap += r.direct_map_base == k.layout.page_offset
                wrong += r.text_base not in (None, k.layout.kernel_text)
                wrong += r.direct_map_base not in (None, k.layout.page_offset)
            print(f"{'FLARE ' if flare else ''}{isolation:6} {method:12} text {text}/{len(SEEDS)}"
                  f"  direct map {dmap}/{len(SEEDS)}  WRONG {wrong}")
