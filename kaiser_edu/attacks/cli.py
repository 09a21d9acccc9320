"""``kaiser-edu attack meltdown|kaslr``: run an attack on a freshly booted simulated machine.

::

    kaiser-edu attack meltdown --isolation off --target secret
    kaiser-edu attack meltdown --isolation pti --target secret      # nothing comes back
    kaiser-edu attack meltdown --target 2:0x600000 --bytes 47       # the victim, via the direct map
    kaiser-edu attack kaslr --method entrybleed --isolation pti --json

The machine boots with the given isolation mode, CPU model and seed (the seed also drives
KASLR and the noise); pid 1 is the attacker and pid 2 a victim holding a message at
0x600000, the start of its data segment. Bad input prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from kaiser_edu.errors import KaiserEduError

# Kept in step with kaiser_edu.kernel.cpu.CPU_MODELS, kaiser_edu.kernel.isolation and
# kaiser_edu.attacks.kaslr.METHODS (not imported: building the parser stays quick).
ISOLATIONS = ("off", "kaiser", "pti")
METHODS = ("prefetch", "double-fault", "entrybleed")
MAX_BYTES = 1 << 20


class _OneLineParser(argparse.ArgumentParser):
    """Subparsers whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="attack", metavar="ATTACK", parser_class=_OneLineParser)
    m = sub.add_parser("meltdown", help="read kernel (or another process's) memory from user mode")
    m.add_argument("--target", default="secret", metavar="secret|ADDRESS|PID:VA",
                   help="the kernel image's secret (default), any address (0x...), or a "
                        "process's user address read through the direct map (2:0x600000 is "
                        "the victim's message)")
    m.add_argument("--bytes", default=None, metavar="N",
                   help=f"how many bytes (1..{MAX_BYTES}; default: the secret's length, or 64)")
    m.add_argument("--retries", default="50", metavar="R", help="attempts per byte at most")
    k = sub.add_parser("kaslr", help="find the kernel's randomised base addresses by timing")
    k.add_argument("--method", default="prefetch", metavar="|".join(METHODS),
                   help="prefetch (Gruss et al. 2016), double-fault (Hund et al. 2013), or "
                        "entrybleed (Liu et al. 2023); default prefetch")
    k.add_argument("--rounds", default="16", metavar="R", help="probes per candidate slot")
    k.add_argument("--flare", action="store_true",
                   help="boot with FLARE: dummy mappings in every free kernel-image slot")
    for p in (m, k):
        p.add_argument("--isolation", default="off", metavar="|".join(ISOLATIONS),
                       help="kernel page-table isolation mode (default off)")
        p.add_argument("--cpu", default="skylake", metavar="MODEL",
                       help="CPU model: skylake, haswell, westmere, core2 (Meltdown-affected), "
                            "icelake, zen2 (not affected); default skylake")
        p.add_argument("--seed", default="0", metavar="S", help="boot, KASLR and noise seed")
        p.add_argument("--json", action="store_true", help="print one JSON object")
    parser.epilog = "Example: kaiser-edu attack meltdown --isolation pti --target secret"


def _int(text: str, what: str, low: int, high: int) -> int:
    try:
        value = int(text, 0)
    except (TypeError, ValueError):
        raise KaiserEduError(f"{what} must be an integer, got {text!r}") from None
    if not low <= value <= high:
        raise KaiserEduError(f"{what} must be in {low}..{high}, got {value}")
    return value


def _boot(args: argparse.Namespace, flare: bool = False):
    from kaiser_edu.attacks.meltdown import spawn_victim
    from kaiser_edu.kernel.cpu import CPU_MODELS
    from kaiser_edu.kernel.machine import Kernel

    if args.isolation not in ISOLATIONS:
        raise KaiserEduError(f"--isolation must be one of {', '.join(ISOLATIONS)}, "
                             f"got {args.isolation!r}")
    if args.cpu not in CPU_MODELS:
        raise KaiserEduError(f"--cpu must be one of {', '.join(CPU_MODELS)}, got {args.cpu!r}")
    seed = _int(args.seed, "--seed", 0, 2**63 - 1)
    kernel = Kernel(isolation=args.isolation, cpu=args.cpu, seed=seed)
    if flare:
        from kaiser_edu.attacks.flare import apply_flare

        apply_flare(kernel)  # at boot, before any process exists
    attacker = kernel.spawn("attacker")
    spawn_victim(kernel)
    return kernel, attacker, seed


def _meltdown(args: argparse.Namespace) -> dict:
    from kaiser_edu.attacks import meltdown as m
    from kaiser_edu.kernel.image import SECRET_TEXT

    kernel, attacker, seed = _boot(args)
    address, what = m.parse_target(kernel, args.target)
    default = len(SECRET_TEXT) if args.target == "secret" else (
        len(m.VICTIM_SECRET) if ":" in args.target else 64)
    length = default if args.bytes is None else _int(args.bytes, "--bytes", 1, MAX_BYTES)
    retries = _int(args.retries, "--retries", 1, 100_000)
    r = m.leak(kernel, attacker, address, length, retries=retries, seed=seed)
    out = r.as_dict()
    out["target"] = what
    return out


def _show_meltdown(d: dict) -> str:
    acc = "n/a (no kernel mapping)" if d["accuracy"] is None else f"{d['accuracy']:.1%}"
    if d["recovered"]:
        rate = f"{d['bytes_per_second'] / 1024:,.1f} KiB/s simulated"
    else:
        rate = "nothing observed"
    return "\n".join([
        f"Meltdown on {d['cpu']}, isolation {d['isolation']}",
        f"target:    {d['address']} = {d['target']}, {d['length']} bytes",
        f"MMU:       {d['why']}",
        f"recovered: {d['data_text']!r}  ({d['recovered']} of {d['length']} bytes observed)",
        f"hex:       {d['data_hex'][:128]}{'...' if len(d['data_hex']) > 128 else ''}",
        f"accuracy:  {acc} against what the kernel reads through its own mapping",
        f"leak rate: {rate} ({d['cycles']:,.0f} cycles at the model's clock); "
        f"host time {d['host_seconds']:.2f} s",
    ])


def _kaslr(args: argparse.Namespace) -> dict:
    from kaiser_edu.attacks.kaslr import break_kaslr

    if args.method not in METHODS:
        raise KaiserEduError(f"--method must be one of {', '.join(METHODS)}, "
                             f"got {args.method!r}")
    rounds = _int(args.rounds, "--rounds", 2, 1024)
    kernel, attacker, seed = _boot(args, flare=args.flare)
    d = break_kaslr(kernel, attacker, method=args.method, seed=seed, rounds=rounds).as_dict()
    d["flare"] = args.flare
    return d


def _show_kaslr(d: dict) -> str:
    def verdict(guess, truth, correct):
        if guess is None:
            return f"not found (truth {truth})"
        return f"{guess} ({'correct' if correct else f'WRONG, truth {truth}'})"
    lines = [
        f"KASLR break by {d['method']} on {d['cpu']}, isolation {d['isolation']}"
        + (", FLARE" if d["flare"] else ""),
        f"kernel text (_text):  {verdict(d['text_base'], d['true_text_base'], d['text_correct'])}",
    ]
    if d["true_direct_map_base"] is not None:
        lines.append("direct map base:      " + verdict(
            d["direct_map_base"], d["true_direct_map_base"], d["direct_map_correct"]))
    lines += [
        f"slots confirmed mapped: {', '.join(d['text_slots_confirmed']) or 'none'}",
        f"threshold {d['threshold']:.1f} cycles (TLB hit {d['hit_reference']:.1f}, "
        f"one-level walk {d['walk_reference']:.1f}); {d['probes']:,} probes, "
        f"{d['simulated_seconds'] * 1e3:.2f} ms simulated, host {d['host_seconds']:.2f} s",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.attack is None:
        print("kaiser-edu attack: error: choose an attack: meltdown or kaslr", file=sys.stderr)
        return 2
    try:
        if args.attack == "meltdown":
            d = _meltdown(args)
            text = _show_meltdown(d)
        else:
            d = _kaslr(args)
            text = _show_kaslr(d)
    except KaiserEduError as e:
        print(f"kaiser-edu attack {args.attack}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(d, indent=1) if args.json else text)
    return 0
