"""Measuring: peak tensor memory sees a known allocation; timings are repeated calls after a warm-up."""

from __future__ import annotations

import torch

from flexrel_core.workbook.measure import peak_rss_bytes, peak_tensor_bytes, timings


def test_peak_tensor_bytes_sees_a_known_allocation():
    def work():
        a = torch.ones(1000, 1000)  # 4 MB
        b = a * 2  # another 4 MB while a is alive
        return float(b.sum())

    peak = peak_tensor_bytes(work)
    assert 8_000_000 <= peak < 12_000_000


def test_peak_rss_bytes_sees_a_large_allocation():
    def work():
        a = torch.ones(8_000_000)  # 32 MB, touched
        return float(a.sum())

    assert peak_rss_bytes(work) >= 16_000_000


def test_timings_call_after_a_warm_up():
    calls = []
    times = timings(lambda: calls.append(1), repeats=3)
    assert len(times) == 3 and len(calls) == 4 and all(t >= 0 for t in times)
