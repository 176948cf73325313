"""Measuring: peak tensor memory sees a known allocation; timings are repeated calls after a warm-up."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from flexrel_core.workbook.measure import interleaved_timings, peak_tensor_bytes, timings


def test_peak_tensor_bytes_sees_a_known_allocation():
    def work():
        a = torch.ones(1000, 1000)  # 4 MB
        b = a * 2  # another 4 MB while a is alive
        return float(b.sum())

    peak = peak_tensor_bytes(work)
    assert 8_000_000 <= peak < 12_000_000


def test_peak_rss_bytes_sees_a_large_allocation():
    """As the benchmark runs it: glibc's mmap threshold fixed before the process starts, so freed
    buffers leave the resident set (in a long-lived process without it, a new tensor can reuse pages
    that an earlier one left resident, and no growth shows)."""
    code = (
        "import torch\n"
        "from flexrel_core.workbook.measure import peak_rss_bytes\n"
        "torch.ones(64_000_000).sum()\n"  # an earlier, freed allocation of the same size
        "print(peak_rss_bytes(lambda: float(torch.ones(16_000_000).sum())))\n"  # 64 MB, touched
    )
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(out.stdout) >= 48_000_000


def test_timings_call_after_a_warm_up():
    calls = []
    times = timings(lambda: calls.append(1), repeats=3)
    assert len(times) == 3 and len(calls) == 4 and all(t >= 0 for t in times)


def test_interleaved_timings_rotate_the_order_of_the_calls():
    calls = []
    times = interleaved_timings({k: (lambda k=k: calls.append(k)) for k in "abc"}, repeats=4)
    assert calls == list("abc") + list("abcbcacababc")  # a warm-up of each, then rotated rounds
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4, "c": 4}
    assert all(t >= 0 for v in times.values() for t in v)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        interleaved_timings({"a": lambda: None}, repeats=0)
