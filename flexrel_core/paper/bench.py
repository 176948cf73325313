"""``make bench``: cost of FlexRel scoring, measured side by side in one process.

For each model (the digits CNN, VGG16, and ResNet-18 with its skip connections), on the same batch of
inference samples (default 512):

- ``plain``: one plain forward + backward pass to the input (``torch.autograd.grad`` of the
  predicted logits w.r.t. the input, no LRP rules: the strict baseline, same start as LRP),
- ``train_step``: forward + ``loss.backward()`` with parameter gradients (a training step's pass),
- ``lrp_zennit`` / ``lrp_fast``: the LRP pass alone, through zennit's hooks (``relevance.lrp_backward``)
  and by the fast engine (``fast_engine.lrp_fast``), both without layer hooks,
- ``scoring_zennit`` / ``scoring_fast``: full FlexRel scoring (``pruning_scores``: parameter
  relevance + magnitudes + scores) with ``engine="zennit"`` and ``engine="fast"``.

The ``zoo`` section runs the same cases on torchvision's ResNet-18 and MobileNetV2 (random weights) at 64 px,
batch 8 (``zoo_benchmarks``): MobileNetV2's ``F.adaptive_avg_pool2d`` is read as its module twin and its
ReLU6, depthwise convolutions and inverted residuals go through the fast engine, against the same target.

Also: the sparse encoding's size against the information bound per sparsity (``encoding_bench``)
and the explorer's update time on the default model (``explore.bench``); evaluation on a channels-last
copy and a slice of Figure 2's sweep in worker processes against one process (``bench_sweep``); the dense
model's training in float32 and float64, under this CPU's kernels and narrower ones (``bench_precision``).

Time: median of ``repeats`` runs after one warm-up (``workbook.measure.timings``). Peak memory, on
one more (warm) run: ``workbook.measure.peak_rss_bytes`` -- on CUDA the allocator's peak above what was allocated
before; on CPU the peak resident set size above the level before, with glibc's mmap threshold
fixed (``MALLOC_MMAP_THRESHOLD_``, set by re-executing) so freed buffers go back to the OS and a
later case is not under-counted. Ratios are taken against ``plain``. Results go to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from ..encoding import decode_sparse, dense_size_bytes, encode_sparse, information_bound_bits
from ..fast_engine import lrp_fast
from ..layers import prunable_layers
from ..masks import prune
from ..models import build_model
from ..relevance import lrp_backward
from ..scores import pruning_scores
from ..training import select_device
from ..workbook.cache import write_json
from ..workbook.measure import peak_rss_bytes, timings

ENGINES = ("zennit", "fast")
TARGETS = {
    "fast_scoring_over_plain_time": 1.6,
    "fast_scoring_over_plain_memory": 1.5,
    "zennit_aggregation_over_lrp": 1.15,
    "zennit_scoring_over_plain_time": 3.0,
    "zennit_scoring_over_plain_memory": 1.5,
}


def cases(model: nn.Module, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The passes being compared, on the same model and batch."""

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
        "lrp_zennit": lambda: lrp_backward(model, x),
        "lrp_fast": lambda: lrp_fast(model, x),
        "scoring_zennit": lambda: pruning_scores(model, x, delta=0.5, engine="zennit"),
        "scoring_fast": lambda: pruning_scores(model, x, delta=0.5, engine="fast"),
    }


def bench_model(name: str, model: nn.Module, x: torch.Tensor, device: torch.device, repeats: int) -> dict:
    """Time and peak memory of every case for one model, and each engine's ratios to the plain pass."""
    model = model.to(device).eval()
    x = x.to(device)
    row: dict = {"model": name, "input": list(x.shape), "device": str(device), "repeats": repeats}
    for case, fn in cases(model, x).items():
        # Timings first: their warm-up call keeps one-time allocations out of the memory peak.
        row[f"{case}_seconds"] = statistics.median(timings(fn, device, repeats))
        row[f"{case}_memory_bytes"] = peak_rss_bytes(fn, device)
        memory = row[f"{case}_memory_bytes"] / 2**20
        print(f"  {name:>10} {case:>14}: {row[f'{case}_seconds']:.4f} s, {memory:.1f} MiB", flush=True)
    for e in ENGINES:
        row[f"{e}_lrp_over_plain_time"] = row[f"lrp_{e}_seconds"] / row["plain_seconds"]
        row[f"{e}_aggregation_over_lrp"] = row[f"scoring_{e}_seconds"] / row[f"lrp_{e}_seconds"]
        row[f"{e}_scoring_over_plain_time"] = row[f"scoring_{e}_seconds"] / row["plain_seconds"]
        row[f"{e}_scoring_over_train_step_time"] = row[f"scoring_{e}_seconds"] / row["train_step_seconds"]
        row[f"{e}_scoring_over_plain_memory"] = row[f"scoring_{e}_memory_bytes"] / max(row["plain_memory_bytes"], 1)
    row["meets"] = {k: row[k] <= v for k, v in TARGETS.items()}
    return row


def scoring_benchmarks(
    samples: int, vgg_size: int, device: torch.device, repeats: int, vgg_repeats: int, resnet_size: int = 32
) -> list[dict]:
    """The digits model on 8x8 inputs, VGG16 (random weights) at ``vgg_size`` px and torchvision's ResNet-18
    (random weights: skip connections, LRP through their sums) at ``resnet_size`` px, same sample count."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    rows = [bench_model("digits_cnn", build_model("digits_cnn"), torch.randn(samples, 1, 8, 8), device, repeats)]
    vgg = build_model("vgg16", in_channels=3, num_classes=1000)
    rows.append(bench_model("vgg16", vgg, torch.randn(samples, 3, vgg_size, vgg_size), device, vgg_repeats))
    resnet = resnet18(weights=None, num_classes=1000)
    x = torch.randn(samples, 3, resnet_size, resnet_size)
    rows.append(bench_model("resnet18", resnet, x, device, vgg_repeats))
    return rows


ZOO_MODELS = ("resnet18", "mobilenet_v2")


def zoo_benchmarks(
    device: torch.device, repeats: int, size: int = 64, batch: int = 8, models: tuple[str, ...] = ZOO_MODELS
) -> list[dict]:
    """``bench_model`` rows for torchvision builders (random weights, seeded, 1000 classes) on ``batch``
    random images of ``size`` px, named ``"<builder>@<size>px"``."""
    import torchvision

    rows = []
    for name in models:
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None)
        x = torch.randn(batch, 3, size, size)
        rows.append(bench_model(f"{name}@{size}px", model, x, device, repeats))
    return rows


def encoding_bench(sparsities: tuple[float, ...] = (0.5, 0.7, 0.9, 0.95, 0.99), seed: int = 0) -> list[dict]:
    """Encoded size against the information bound and the dense encoding, per model and sparsity.

    Models: the default ``digits_cnn`` and ``vgg_small`` at 32x32x3 (~0.6M weights), randomly
    initialised (seeded) and pruned by global magnitude -- the bound depends only on the counts,
    and the coder on the positions, which magnitude on random weights spreads like a trained mask.
    """
    rows = []
    for name, kwargs in (("digits_cnn", {}), ("vgg_small", {"in_channels": 3, "image_size": 32})):
        for p in sparsities:
            torch.manual_seed(seed)
            model = build_model(name, **kwargs)
            prune(model, pruning_scores(model, method="magnitude", normalize="global"), p)
            start = time.perf_counter()
            blob = encode_sparse(model)
            enc_s = time.perf_counter() - start
            start = time.perf_counter()
            decode_sparse(blob, build_model(name, **kwargs))
            dec_s = time.perf_counter() - start
            bound = information_bound_bits(model) / 8
            dense = dense_size_bytes(model)
            rows.append(
                {
                    "model": name,
                    "sparsity": p,
                    "weights": sum(m.weight.numel() for m in prunable_layers(model).values()),
                    "bytes": len(blob),
                    "bound_bytes": round(bound, 1),
                    "dense_bytes": dense,
                    "size_over_bound": len(blob) / bound,
                    "size_over_dense": len(blob) / dense,
                    "half_bytes": len(encode_sparse(model, half=True)),
                    "encode_s": enc_s,
                    "decode_s": dec_s,
                }
            )
    return rows


def format_table(rows: list[dict]) -> str:
    """A plain-text table of both engines' ratios side by side, with the fast engine's targets."""
    t, m = TARGETS["fast_scoring_over_plain_time"], TARGETS["fast_scoring_over_plain_memory"]
    head = f"{'model':>10} | {'engine':>6} | {'plain s':>8} | {'LRP s':>8} | {'score s':>8} | {'LRP/plain':>9} | "
    head += f"{'score/LRP':>9} | {'score/plain':>11} (fast <={t}) | {'mem score/plain':>15} (fast <={m})"
    lines = [head, "-" * len(head)]
    for r in rows:
        for e in ENGINES:
            lines.append(
                f"{r['model']:>10} | {e:>6} | {r['plain_seconds']:8.4f} | {r[f'lrp_{e}_seconds']:8.4f} | "
                f"{r[f'scoring_{e}_seconds']:8.4f} | {r[f'{e}_lrp_over_plain_time']:9.2f} | "
                f"{r[f'{e}_aggregation_over_lrp']:9.3f} | {r[f'{e}_scoring_over_plain_time']:11.2f}             | "
                f"{r[f'{e}_scoring_over_plain_memory']:15.2f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/bench.json")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--vgg-size", type=int, default=64)
    parser.add_argument("--resnet-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--vgg-repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--zoo-size", type=int, default=64)
    parser.add_argument("--zoo-batch", type=int, default=8)
    sections = ["scoring", "zoo", "encoding", "explorer", "sweep", "precision"]
    parser.add_argument("--skip", nargs="*", default=[], choices=sections)
    args = parser.parse_args(argv)
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # see module docstring
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
        os.execv(sys.executable, [sys.executable, "-m", "flexrel_core.paper.bench", *sys.argv[1:]])
    device = select_device(args.device)
    report: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "targets": TARGETS}
    if "encoding" not in args.skip:
        report["encoding"] = encoding_bench()
        print("sparse encoding: size / information bound (size / dense)")
        for r in report["encoding"]:
            ratios = f"{r['size_over_bound']:.3f} ({r['size_over_dense']:.3f})"
            print(f"  {r['model']:>10} sparsity {r['sparsity']:.2f}: {ratios}")
    if "explorer" not in args.skip:
        from .explore import bench as explorer_bench

        report["explorer"] = ex = explorer_bench("default", moves=20)
        shown = f"delta {ex['delta_feedback_median_s']:.3f} s, p {ex['p_feedback_median_s']:.3f} s"
        print(f"explorer, median of 20 moves until the new setting shows: {shown}")
        print(f"  a p move complete with its Figure 4 curve: {ex['p_update_median_s']:.3f} s")
    if "sweep" not in args.skip:
        from .bench_sweep import run_clean

        report |= run_clean()
    if "precision" not in args.skip:
        from .bench_precision import describe, precision_bench

        report["precision"] = precision_bench()
        print("\n".join(describe(report["precision"])))
    if "scoring" not in args.skip:
        print(f"FlexRel scoring benchmark on {device} ({torch.get_num_threads()} threads), {args.samples} samples")
        report["scoring"] = scoring_benchmarks(
            args.samples, args.vgg_size, device, args.repeats, args.vgg_repeats, args.resnet_size
        )
        print(format_table(report["scoring"]))
    if "zoo" not in args.skip:
        print(f"torchvision models at {args.zoo_size} px, batch {args.zoo_batch}, on {device}")
        report["zoo"] = zoo_benchmarks(device, args.repeats, args.zoo_size, args.zoo_batch)
        print(format_table(report["zoo"]))
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
