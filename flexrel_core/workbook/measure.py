"""Measuring time and memory: one timing function and two memory measures, named for what they see.

- ``timings``: wall times of repeated calls after a warm-up (CUDA synchronised around each call);
  callers report the median (benchmarks) or the minimum (``timeit``'s advice: least disturbed by
  other load) and say which.
- ``interleaved_timings``: the same for several calls that are compared with each other, timed in
  rounds (one call of each per round, the order rotated from round to round), so that a drift of the
  machine's speed (another load, the CPU's clock, a cache warming up) falls on every call alike rather
  than on whichever was timed last; the per-round differences of two calls are paired.
- ``peak_tensor_bytes``: the peak of *tensor* memory a call allocates above what was allocated
  before it -- the caching allocator's statistics on CUDA, the running sum of ``torch.profiler``'s
  allocation events on the CPU. It ignores the allocator's own overhead and non-tensor memory.
- ``peak_rss_bytes``: the peak *resident set size* of the process above its level before the
  call (CUDA: as ``peak_tensor_bytes``), sampled every millisecond by a thread -- what the
  operating system sees, allocator caches included. For freed buffers to leave the RSS, glibc's
  mmap threshold must be fixed (``MALLOC_MMAP_THRESHOLD_``) before the process starts.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timings(fn: Callable[[], object], device: str | torch.device = "cpu", repeats: int = 5) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    device = torch.device(device)
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def interleaved_timings(
    fns: dict[str, Callable[[], object]], device: str | torch.device = "cpu", repeats: int = 5
) -> dict[str, list[float]]:
    """Wall seconds of ``repeats`` rounds of calls, one call of each of ``fns`` per round after one warm-up
    call of each; round ``r`` starts at the ``r``-th call (mod ``len(fns)``), so that each call takes each
    place in the order equally often. Returns ``{name: [seconds of round 0, round 1, ...]}``."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    device = torch.device(device)
    names = list(fns)
    for name in names:
        fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            _sync(device)
            start = time.perf_counter()
            fns[name]()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def _cuda_peak(fn: Callable[[], object], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - before)


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence fd 2 (the profiler's C++ start/stop chatter) for the duration of the block."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_tensor_bytes(fn: Callable[[], object], device: str | torch.device = "cpu") -> int:
    """Peak bytes of tensor memory that ``fn()`` allocates above what was allocated before it."""
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_peak(fn, device)
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        with _quiet_stderr():
            prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    running = peak = 0
    for e in sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"]):
        running += int(e["args"]["Bytes"])
        peak = max(peak, running)
    return peak


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes(fn: Callable[[], object], device: str | torch.device = "cpu") -> int:
    """Peak resident memory (bytes) that ``fn()`` adds above the process's level before it ran."""
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_peak(fn, device)
    base, peak, done = _rss_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(peak[0], _rss_bytes()) - base
