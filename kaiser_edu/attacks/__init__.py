"""The side-channel lab: Meltdown and the KASLR breaks, run on the simulated machine.

Everything here is built on :mod:`kaiser_edu.kernel` and :mod:`kaiser_edu.hw` only, and the
attacks learn what they learn from the same TLB and page walk every other access uses, under
the CR3 the attacker runs on: with isolation off the kernel is in that page table, under
KAISER/PTI it is (almost) not, and that, not a flag, is why the results differ.

Public API (stable: lessons 05 and 09 and labs 05 and 09 build on it)
----------------------------------------------------------------------
:func:`kaiser_edu.attacks.meltdown.leak` ``(kernel, attacker_task, address, length, *,
retries=50, seed=0, warm=True, measurements=3, costs=None) -> LeakResult``
    Meltdown from ``attacker_task``'s user mode, read loop as in IAIK/meltdown's libkdump
    (``measurements`` reads per byte, each up to ``retries`` attempts); ``costs`` replaces
    the CPU model's cycle-cost table (:class:`kaiser_edu.kernel.timing.Timing`). :class:`~kaiser_edu.attacks.meltdown.LeakResult`
    has ``data`` (bytes of ``length``), ``confidence`` (per byte, 0 = nothing observed),
    ``attempts`` (per byte), ``cycles`` / ``seconds`` (simulated, at the CPU model's clock),
    ``bytes_per_second`` (simulated), ``host_seconds``, ``truth`` (what the kernel reads
    through its own mapping, or None), ``accuracy``, ``error_rate``, ``recovered``,
    ``why`` (the MMU's verdict per byte, summarised), ``loads`` (per-byte
    :class:`~kaiser_edu.attacks.transient.TransientLoads`), ``threshold``, ``as_dict()``.
    Targets: :func:`~kaiser_edu.attacks.meltdown.secret_address` (the kernel image's secret),
    any kernel address, :func:`~kaiser_edu.attacks.meltdown.direct_map_address` (another
    process's memory via ``page_offset_base + pa``; :func:`~kaiser_edu.attacks.meltdown.spawn_victim`
    makes a victim holding a message).

:func:`kaiser_edu.attacks.kaslr.break_kaslr` ``(kernel, attacker_task, *, method="prefetch"
| "double-fault" | "entrybleed", seed=0, rounds=16, costs=None) -> KaslrResult``
    :class:`~kaiser_edu.attacks.kaslr.KaslrResult` has ``text_base`` and ``direct_map_base``
    (None when not found; EntryBleed looks only for the text), ``candidates`` and ``times``
    (median probe cycles per candidate text slot, for the figures), ``text`` and
    ``direct_map`` (:class:`~kaiser_edu.attacks.kaslr.Scan`: candidates, times, confirmed
    slots, guess, truth), ``threshold``, ``hit_reference``, ``walk_reference``,
    ``text_correct``, ``direct_map_correct``, ``probes``, ``cycles``, ``seconds``,
    ``host_seconds``, ``as_dict()``.

Building blocks for the lessons and labs
----------------------------------------
:func:`kaiser_edu.attacks.meltdown.observe` ``(kernel, attacker_task, address, length, *,
retries=10, seed=0, warm=True, costs=None) -> Observation``: every timed reload, ``times[byte, attempt,
line]`` (float32), plus calibration samples ``hits``/``misses`` and ``truth``: the input of
a student's own receiver and decoder (lab 05).
:func:`kaiser_edu.attacks.meltdown.idt_text_base` ``(kernel, attacker_task, *, seed=0,
vector=14) -> (text_base | None, LeakResult)``: what stays readable under PTI (the IDT in
the cpu_entry_area, :mod:`kaiser_edu.kernel.idt`) gives away ``_text``, not a secret.
:func:`kaiser_edu.attacks.flush_reload.decode` ``(times, threshold) -> (data, confidence)``:
the reference decoder (line 0 ignored: the zero bias).
:func:`kaiser_edu.attacks.meltdown.story` ``(kernel, attacker_task, address, *, seed=0) ->
Story``: one attempt at one byte; ``Story.steps()`` gives (title, text) for the load, the
forwarding, the dependent access, the fault, the roll-back and the cache line that stays;
``walk``, ``value``, ``line``, ``reload_times``, ``threshold``, ``decoded``.
:func:`kaiser_edu.attacks.flush_reload.calibrate` ``(timing, n, seed) -> (hits, misses,
threshold)``: timed reloads of a cached and a flushed line, and the PoC's threshold.
:class:`kaiser_edu.attacks.kaslr.Prober` ``(kernel, task, method, costs, rng)``: the timed
probes of one method, ``depth(vas)`` and ``run(vas, rounds, depth) -> times``, with
``probes``/``cycles`` counters (lab 09's timing oracle); ``text_candidates()``,
``direct_map_candidates()``, ``ENTRY_SYSCALL_OFFSET``, ``EMPTY_USER_SLOT``.
``KaslrResult.text.first``: each candidate's first probe (cold TLB), e.g. to show that
EntryBleed's syscall, not the probing, put the entry text in the TLB.
:func:`kaiser_edu.attacks.transient.transient_loads` ``(kernel, vas) -> TransientLoads``:
what each user-mode load forwards, and why.

:func:`kaiser_edu.attacks.flare.apply_flare` ``(kernel) -> int``: the FLARE countermeasure
(dummy mappings in every free kernel-image slot of the user-visible tables); call it right
after boot, before spawning. ``Scan.threshold`` is each scan's hit/miss threshold.

Command line: ``kaiser-edu attack meltdown ...`` and ``kaiser-edu attack kaslr ...``
(:mod:`kaiser_edu.attacks.cli`).
"""
