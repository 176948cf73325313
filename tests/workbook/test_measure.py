"""Measuring: peak tensor memory sees a known allocation; timings are repeated calls after a warm-up."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from flexrel_core.workbook.measure import peak_tensor_bytes, timings


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
