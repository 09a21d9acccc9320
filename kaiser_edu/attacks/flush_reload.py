"""The data cache as Flush+Reload sees it, and the receiver loop of Meltdown, in numba.

Flush+Reload (Yarom and Falkner, USENIX Security 2014) needs only this much of a cache:
lines of 64 bytes that are either present or not, ``clflush`` to make one absent, and a
*timed reload*: ``rdtscp; load; rdtscp`` costs :attr:`Timing.reload_hit` cycles if the line
was cached and :attr:`Timing.reload_miss` if it came from DRAM, plus noise (a normal core of
``noise_sigma`` and, with probability ``tail_prob``, an interrupt adding ``tail_cycles``;
all from :mod:`kaiser_edu.kernel.timing`).

The prefetcher is left out on purpose: the Meltdown probe array has one line per 4 KiB page
(``probe[value * 4096]``), and Intel's hardware prefetchers stay inside a page: "hardware
prefetching will not cross 4KB page boundaries" (IA-32 Intel Architecture Optimization
Reference Manual, 248966-013US, 2006, section 1, hardware prefetching; the same rule is
listed for the later cores' streamers, "Does not prefetch across 4K boundary"). So touching
one probe line never brings in another, which is why the paper and its PoC use a page stride
(IAIK/meltdown libkdump.c: ``mem + i * 4096``).

The threshold between a hit and a miss is calibrated as the PoC does it
(libkdump.c ``detect_flush_reload_threshold``): ``(miss + 2 * hit) / 3`` from the averages
of timed reloads of a flushed and of a cached line.

Meltdown's receiver (:func:`meltdown_rounds`) runs whole bytes inside numba, as the PoC's
libkdump_read() does: ``measurements`` reads per byte, each up to ``retries`` attempts of one
transient load, the fault (a signal, or an RTM abort), and a Flush+Reload scan of the probe
lines in order that stops at the first hit. The runs of lines that the transient access did
not touch are drawn in aggregate (where the first false hit falls, and the sum of their
times), which has the same distribution as drawing each reload and is what makes 4 KiB cost
milliseconds. (Not modelled: a line left cached by a scan that stopped early at a false
hit; with these noise figures a false hit essentially never happens.)
"""

from __future__ import annotations

import math

import numba
import numpy as np

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.kernel.timing import Timing

PROBE_LINES = 256  # one probe page per byte value
PROBE_STRIDE = 4096  # a page per value: no prefetcher crosses it
LINE_SIZE = 64
MEASUREMENTS = 3  # reads per byte, the most frequent wins (libkdump.c: measurements = 3)

# Index of each parameter in the float64 array the kernel takes.
(P_HIT, P_MISS, P_SIGMA, P_TAIL_PROB, P_TAIL, P_THRESHOLD, P_FWD_CACHED, P_FWD_UNCACHED,
 P_CLFLUSH, P_FAULT, P_LOAD, P_WARM) = range(12)
N_PARAMS = 12


@numba.njit(cache=True)
def timed_reload(mean, sigma, tail_prob, tail):
    """One timed reload: its noise-free cost plus the normal core, plus an interrupt's tail
    with probability ``tail_prob`` (scalars only: cheap to call per line)."""
    t = mean + np.random.normal() * sigma
    if np.random.random() < tail_prob:
        t += tail
    return t


@numba.njit(cache=True)
def transmitted_line(forwarded, value, p_forward):
    """The probe line one transient attempt touches, or -1: the value if it was forwarded
    and won the race (probability ``p_forward``), and never for a 0 (the PoC's ``jz``
    retries a 0 instead of transmitting it: Meltdown's zero bias)."""
    if forwarded and value != 0 and np.random.random() < p_forward:
        return np.int64(value)
    return np.int64(-1)


@numba.njit(cache=True)
def _calibrate_kernel(hit, miss, sigma, tail_prob, tail, n, seed):
    np.random.seed(seed)
    hits = np.empty(n, np.float64)
    misses = np.empty(n, np.float64)
    for i in range(n):
        hits[i] = timed_reload(hit, sigma, tail_prob, tail)
        misses[i] = timed_reload(miss, sigma, tail_prob, tail)
    return hits, misses


class DataCache:
    """The data cache as Flush+Reload needs it: 64-byte lines, present or not.

    ``access`` brings an address's line in, ``clflush`` evicts it, ``reload`` times loads of
    a batch of addresses (each ``reload_hit`` or ``reload_miss`` cycles plus the timing
    model's noise) and, as a real load does, leaves their lines cached. No capacity, no
    replacement, no prefetcher (see the module docstring): what a 256-line probe array
    needs. :func:`meltdown_rounds` runs exactly this flush / access / reload sequence, in
    bulk, inside numba.

    >>> from kaiser_edu.kernel.timing import timing
    >>> cache, probe = DataCache(), 0x10_0000
    >>> for v in range(256): cache.clflush(probe + v * PROBE_STRIDE)
    >>> cache.access(probe + 42 * PROBE_STRIDE)
    >>> times = cache.reload(probe + np.arange(256) * PROBE_STRIDE, timing("skylake"), seed=1)
    >>> int(times.argmin())
    42
    """

    def __init__(self) -> None:
        self.lines: set[int] = set()

    @staticmethod
    def line(address: int) -> int:
        return int(address) // LINE_SIZE

    def access(self, address: int) -> None:
        self.lines.add(self.line(address))

    def clflush(self, address: int) -> None:
        self.lines.discard(self.line(address))

    def cached(self, address: int) -> bool:
        return self.line(address) in self.lines

    def reload(self, addresses, t: Timing, seed: int = 0) -> np.ndarray:
        """Timed reloads of ``addresses`` in order (cycles, noise from ``seed``); afterwards
        all of their lines are cached."""
        addresses = np.asarray(addresses, dtype=np.uint64)
        hit = np.array([self.cached(a) for a in addresses.tolist()], bool)
        rng = np.random.default_rng(seed)
        times = np.where(hit, t.reload_hit, t.reload_miss)
        times = times + rng.normal(0.0, t.noise_sigma, len(addresses))
        times += (rng.random(len(addresses)) < t.tail_prob) * t.tail_cycles
        for a in addresses.tolist():
            self.access(a)
        return times


def calibrate(t: Timing, n: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Timed reloads of a cached line and of a flushed line, ``n`` of each, and the threshold
    the PoC derives from them: ``(mean miss + 2 * mean hit) / 3``. The lesson's histogram."""
    if not isinstance(n, int) or n < 2:
        raise KaiserEduError(f"calibration needs an integer n >= 2 samples, got {n!r}")
    hits, misses = _calibrate_kernel(t.reload_hit, t.reload_miss, t.noise_sigma, t.tail_prob,
                                     t.tail_cycles, n, np.int64(seed))
    return hits, misses, float((misses.mean() + 2 * hits.mean()) / 3)


@numba.njit(cache=True)
def _scan_misses(count, cost, sigma, tail_prob, tail, p_false):
    """Flush+Reload of ``count`` lines in a row that were not touched, in aggregate: how
    many were scanned before the first false hit (if any), whether there was one, and
    their cycles. The same distribution as drawing each reload."""
    if count <= 0:
        return 0, False, 0.0
    scanned, found = count, False
    if p_false > 0.0:
        # where the first false hit falls (geometric), by inversion: log1p keeps a tiny
        # p_false from rounding to "never" or dividing by zero
        x = math.log(1.0 - np.random.random()) / math.log1p(-p_false) if p_false < 1.0 else 1.0
        if x <= count:
            scanned, found = max(1, int(math.ceil(x))), True
    cycles = scanned * cost + np.random.normal() * sigma * math.sqrt(scanned)
    cycles += np.random.binomial(scanned, tail_prob) * tail
    return scanned, found, cycles


@numba.njit(cache=True)
def meltdown_rounds(forwarded, value, cached, params, retries, measurements, seed):
    """The PoC's read loop for every byte: returns (data, confidence, attempts, cycles).

    As libkdump_read() does it (IAIK/meltdown libkdump.c): ``measurements`` reads, each of
    up to ``retries`` attempts; an attempt is one transient load (``forwarded[i]`` and
    ``value[i]`` were decided by the MMU before this runs; ``cached[i]`` says whether the
    target line is in the cache), the fault, then Flush+Reload of lines 0, 1, 2, ... that
    stops at the first hit on a line >= 1 (each reload is followed by a clflush of that
    line). A read that never hits gives 0. The byte is the most frequent non-zero result
    (``accept_after`` = 1), 0 with confidence 0 if every read gave 0: a real 0 (never
    transmitted: the PoC's ``jz`` retries it, Meltdown's zero bias) looks the same.
    """
    np.random.seed(seed)
    n = forwarded.shape[0]
    hit_t = params[P_HIT]
    miss_t = params[P_MISS]
    sigma = params[P_SIGMA]
    tail_prob = params[P_TAIL_PROB]
    tail = params[P_TAIL]
    thr = params[P_THRESHOLD]
    flush = params[P_CLFLUSH]
    # A miss reads below the threshold only if its normal noise is that far below the mean
    # (a tail only adds time): the chance of one false hit per untouched line.
    p_false = 0.5 * math.erfc((miss_t - thr) / (sigma * math.sqrt(2.0))) if sigma > 0 else (
        1.0 if miss_t < thr else 0.0)
    data = np.zeros(n, np.uint8)
    confidence = np.zeros(n, np.float64)
    attempts = np.zeros(n, np.int64)
    cycles = 0.0
    stat = np.zeros(256, np.int64)
    per_attempt = params[P_FAULT] + params[P_LOAD] + params[P_WARM]
    for i in range(n):
        stat[:] = 0
        p_fwd = params[P_FWD_CACHED] if cached[i] else params[P_FWD_UNCACHED]
        for _m in range(measurements):
            r = 0
            for _a in range(retries):
                attempts[i] += 1
                cycles += per_attempt
                line = transmitted_line(forwarded[i], value[i], p_fwd)
                # line 0 first: a hit there is ignored (0 is never transmitted)
                cycles += timed_reload(miss_t, sigma, tail_prob, tail) + flush
                before = line - 1 if line >= 1 else 255
                k, found, c = _scan_misses(before, miss_t + flush, sigma, tail_prob, tail,
                                           p_false)
                cycles += c
                if found:
                    r = k
                    break
                if line < 1:
                    continue
                t = timed_reload(hit_t, sigma, tail_prob, tail)
                cycles += t + flush
                if t < thr:
                    r = line
                    break
                k, found, c = _scan_misses(255 - line, miss_t + flush, sigma, tail_prob, tail,
                                           p_false)
                cycles += c
                if found:
                    r = line + k
                    break
            stat[r] += 1
        best = 1
        for j in range(2, 256):
            if stat[j] > stat[best]:
                best = j
        if stat[best] > 0:
            data[i] = best
            confidence[i] = stat[best] / measurements
    return data, confidence, attempts, cycles


@numba.njit(cache=True)
def observe_rounds(forwarded, value, cached, params, retries, seed):
    """Every timed reload of ``retries`` attempts per byte, line by line:
    a (bytes, retries, 256) array for a student's own receiver and decoder (lab 05)."""
    np.random.seed(seed)
    n = forwarded.shape[0]
    times = np.empty((n, retries, 256), np.float32)
    for i in range(n):
        p_fwd = params[P_FWD_CACHED] if cached[i] else params[P_FWD_UNCACHED]
        for a in range(retries):
            line = transmitted_line(forwarded[i], value[i], p_fwd)
            for j in range(256):
                mean = params[P_HIT] if j == line else params[P_MISS]
                times[i, a, j] = timed_reload(mean, params[P_SIGMA], params[P_TAIL_PROB],
                                              params[P_TAIL])
    return times


def decode(times: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The reference decoder over reload times of shape (bytes, retries, 256): per byte,
    the value whose line was below ``threshold`` most often, ignoring line 0 (never
    transmitted); 0 with confidence 0 where no line ever hit. Confidence is the share of
    hits that agree."""
    times = np.asarray(times)
    if times.ndim != 3 or times.shape[2] != PROBE_LINES:
        raise KaiserEduError(f"times must have shape (bytes, retries, 256), got {times.shape}")
    counts = (times < threshold).sum(axis=1)[:, 1:]
    best = counts.argmax(axis=1)
    top = counts[np.arange(len(counts)), best]
    total = counts.sum(axis=1)
    data = np.where(top > 0, best + 1, 0).astype(np.uint8)
    confidence = np.divide(top, total, out=np.zeros(len(top)), where=total > 0)
    return data, confidence


def params_array(t: Timing, threshold: float, p_cached: float, p_uncached: float,
                 fault_cost: float, warm_cost: float) -> np.ndarray:
    """The float64 parameter vector :func:`meltdown_rounds` takes."""
    p = np.zeros(N_PARAMS, np.float64)
    p[P_HIT], p[P_MISS] = t.reload_hit, t.reload_miss
    p[P_SIGMA], p[P_TAIL_PROB], p[P_TAIL] = t.noise_sigma, t.tail_prob, t.tail_cycles
    p[P_THRESHOLD] = threshold
    p[P_FWD_CACHED], p[P_FWD_UNCACHED] = p_cached, p_uncached
    p[P_CLFLUSH], p[P_FAULT], p[P_LOAD] = t.clflush, fault_cost, t.cache_hit
    p[P_WARM] = warm_cost
    return p
