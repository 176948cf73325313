"""``make bench``: cost of FlexRel scoring, measured side by side in one process.

For each model, on the same batch of inference samples (default 512):

- ``plain``: one plain forward + backward pass to the input (``torch.autograd.grad`` of the
  predicted logits w.r.t. the input, no LRP rules: the strict baseline, same start as LRP),
- ``train_step``: forward + ``loss.backward()`` with parameter gradients (a training step's pass),
- ``lrp``: the LRP pass alone (zennit composite, ``relevance.lrp_backward`` without layer hooks),
- ``scoring``: full FlexRel scoring (``pruning_scores``: parameter relevance + magnitudes + scores).

Also: the sparse encoding's size against the information bound per sparsity
(``encoding.bench``, issue 4) and the explorer's update time on the default model
(``explorer.bench``, issue 5).

Time: median of ``repeats`` runs after one warm-up. Peak memory: on CUDA
``torch.cuda.max_memory_allocated`` above what was allocated before; on CPU the peak resident set
size above the level before, sampled every millisecond by a thread, with glibc's mmap threshold
fixed (``MALLOC_MMAP_THRESHOLD_``, set by re-executing) so freed buffers go back to the OS and a
later case is not under-counted. Ratios are taken against ``plain``. Results go to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable

import torch
from torch import nn

from .cache import write_json
from .models import build_model
from .relevance import lrp_backward
from .scores import pruning_scores
from .training import select_device

TARGETS = {"aggregation_over_lrp": 1.15, "scoring_over_plain_time": 3.0, "scoring_over_plain_memory": 1.5}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Peak memory (bytes) that ``fn()`` adds above the level before it ran."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
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


def median_time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time (s) of ``repeats`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cases(model: nn.Module, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The four passes being compared, on the same model and batch."""

    def plain() -> torch.Tensor:
        xi = x.detach().clone().requires_grad_(True)
        logits = model(xi)
        start = torch.zeros_like(logits).scatter_(1, logits.argmax(1, keepdim=True), 1.0) * logits.detach()
        return torch.autograd.grad(logits, xi, grad_outputs=start)[0]

    def train_step() -> None:
        logits = model(x)
        nn.functional.cross_entropy(logits, logits.argmax(1)).backward()
        model.zero_grad(set_to_none=True)

    return {
        "plain": plain,
        "train_step": train_step,
        "lrp": lambda: lrp_backward(model, x),
        "scoring": lambda: pruning_scores(model, x, delta=0.5),
    }


def bench_model(name: str, model: nn.Module, x: torch.Tensor, device: torch.device, repeats: int) -> dict:
    """Time and peak memory of every case for one model, and the ratios the issue targets."""
    model = model.to(device).eval()
    x = x.to(device)
    row: dict = {"model": name, "input": list(x.shape), "device": str(device), "repeats": repeats}
    for case, fn in cases(model, x).items():
        row[f"{case}_memory_bytes"] = peak_memory(fn, device)
        row[f"{case}_seconds"] = median_time(fn, device, repeats)
        print(f"  {name:>10} {case:>10}: {row[f'{case}_seconds']:.4f} s, {row[f'{case}_memory_bytes'] / 2**20:.1f} MiB")
    row["lrp_over_plain_time"] = row["lrp_seconds"] / row["plain_seconds"]
    row["aggregation_over_lrp"] = row["scoring_seconds"] / row["lrp_seconds"]
    row["scoring_over_plain_time"] = row["scoring_seconds"] / row["plain_seconds"]
    row["scoring_over_train_step_time"] = row["scoring_seconds"] / row["train_step_seconds"]
    row["scoring_over_plain_memory"] = row["scoring_memory_bytes"] / max(row["plain_memory_bytes"], 1)
    row["meets"] = {k: row[k] <= v for k, v in TARGETS.items()}
    return row


def scoring_benchmarks(samples: int, vgg_size: int, device: torch.device, repeats: int, vgg_repeats: int) -> list[dict]:
    """The digits model on 8x8 inputs and VGG16 (random weights) at ``vgg_size`` px, same sample count."""
    torch.manual_seed(0)
    rows = [bench_model("digits_cnn", build_model("digits_cnn"), torch.randn(samples, 1, 8, 8), device, repeats)]
    vgg = build_model("vgg16", in_channels=3, num_classes=1000)
    rows.append(bench_model("vgg16", vgg, torch.randn(samples, 3, vgg_size, vgg_size), device, vgg_repeats))
    return rows


def format_table(rows: list[dict]) -> str:
    """A plain-text table of the ratios, with the targets."""
    head = f"{'model':>10} | {'plain s':>8} | {'LRP s':>8} | {'score s':>8} | {'LRP/plain':>9} | "
    head += f"{'score/LRP':>9} (<=1.15) | {'score/plain':>11} (<=3) | {'mem score/plain':>15} (<=1.5)"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['model']:>10} | {r['plain_seconds']:8.4f} | {r['lrp_seconds']:8.4f} | {r['scoring_seconds']:8.4f} | "
            f"{r['lrp_over_plain_time']:9.2f} | {r['aggregation_over_lrp']:9.3f}          | "
            f"{r['scoring_over_plain_time']:11.2f}       | {r['scoring_over_plain_memory']:15.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/bench.json")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--vgg-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--vgg-repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip", nargs="*", default=[], choices=["scoring", "encoding", "explorer"])
    args = parser.parse_args(argv)
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # see module docstring
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
        os.execv(sys.executable, [sys.executable, "-m", "flexrel_core.bench", *sys.argv[1:]])
    device = select_device(args.device)
    report: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "targets": TARGETS}
    if "encoding" not in args.skip:
        from .encoding import bench as encoding_bench

        report["encoding"] = encoding_bench()
        print("sparse encoding: size / information bound (size / dense)")
        for r in report["encoding"]:
            ratios = f"{r['size_over_bound']:.3f} ({r['size_over_dense']:.3f})"
            print(f"  {r['model']:>10} sparsity {r['sparsity']:.2f}: {ratios}")
    if "explorer" not in args.skip:
        from .explorer import bench as explorer_bench

        report["explorer"] = ex = explorer_bench("default", moves=20)
        medians = f"delta {ex['delta_update_median_s']:.3f} s, p {ex['p_update_median_s']:.3f} s"
        print(f"explorer update, median of 20 moves: {medians}")
    if "scoring" not in args.skip:
        print(f"FlexRel scoring benchmark on {device} ({torch.get_num_threads()} threads), {args.samples} samples")
        report["scoring"] = scoring_benchmarks(args.samples, args.vgg_size, device, args.repeats, args.vgg_repeats)
        print(format_table(report["scoring"]))
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
