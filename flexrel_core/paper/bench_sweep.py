"""``make bench``'s sweep section: how the workbook's sweeps use a CPU, measured side by side.

- ``training``: one fine-tuning epoch of the default model pruned to p = 0.9 on the MNIST subset's
  3,000 training images (47 steps of 64), by ``training.train`` -- channels-last layout, fused
  Adam, batches sliced from the stacked tensors -- against the textbook PyTorch loop it replaced
  (a ``DataLoader`` reading sample by sample, contiguous layout, ``torch.optim.Adam``'s default
  implementation), the same masks kept the same way: median of ``repeats`` timings each.
- ``evaluation``: test accuracy of the default model (``vgg_mnist``, 28 px) on 750 images, on the model
  as it is against on its channels-last copy (``training.predict`` evaluates on the copy): median of
  ``repeats`` timings each.
- ``sweep``: a slice of Figure 2's sweep on the default profile's data and model (dense training,
  relevance, one-shot and fine-tuned points; ``seeds`` × magnitude and FlexRel × ``factors``), from an
  empty cache each time: in this process (``workers=1``) against ``parallel.run_tasks``'s worker
  processes, their start-up included. Every stage runs on one thread either way
  (``training.stage_threads``), so the two runs' accuracies must agree exactly: the largest
  difference is reported as a check.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..data import load_dataset, loader
from ..masks import apply_masks, mask_gradients, prune
from ..models import build_model
from ..parallel import cpu_workers, run_tasks, shutdown
from ..scores import pruning_scores
from ..training import _inference_copy, evaluate, torch_threads, train
from ..workbook.config import PruneConfig, TrainConfig
from ..workbook.measure import timings
from . import fig2


def training_bench(repeats: int = 5) -> dict:
    """Seconds of one fine-tuning epoch of the pruned default model, on one thread: the textbook loop
    against ``train``."""
    data = load_dataset("mnist5k", seed=0)
    torch.manual_seed(0)
    dense = build_model("vgg_mnist", image_size=28)
    prune(dense, pruning_scores(dense, method="magnitude"), 0.9)

    def textbook() -> None:
        model = copy.deepcopy(dense).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for x, y in loader(data.train, 64, shuffle=True, generator=torch.Generator().manual_seed(0)):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            mask_gradients(model)
            opt.step()
            apply_masks(model)

    def library() -> None:
        train(copy.deepcopy(dense), data.train, epochs=1, lr=1e-3, seed=0, device="cpu", show_progress=False)

    with torch_threads(1):  # as every cached stage computes (training.stage_threads)
        plain = statistics.median(timings(textbook, repeats=repeats))
        ours = statistics.median(timings(library, repeats=repeats))
    return {
        "textbook_seconds": plain,
        "train_seconds": ours,
        "speedup": plain / ours,
        "steps": len(loader(data.train, 64)),
    }


def evaluation_bench(repeats: int = 7) -> dict:
    """Seconds to evaluate the default model on 750 images: the model itself against its channels-last copy."""
    model = build_model("vgg_mnist", image_size=28).eval()
    data = torch.utils.data.TensorDataset(torch.randn(750, 1, 28, 28), torch.randint(0, 10, (750,)))
    net = _inference_copy(model, torch.device("cpu"))
    plain = statistics.median(timings(lambda: evaluate(_AsIs(model), data, device="cpu"), repeats=repeats))
    copy = statistics.median(timings(lambda: evaluate(net, data, device="cpu"), repeats=repeats))
    return {"plain_seconds": plain, "channels_last_seconds": copy, "speedup": plain / copy}


class _AsIs(torch.nn.Module):
    """The model behind a module without convolutions of its own, so ``predict`` evaluates it as it is."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.run = [model]  # a list: not registered as a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run[0](x)


def sweep_bench(seeds: int = 4, factors: tuple[float, ...] = (0.9, 0.95, 0.97), epochs: int = 2) -> dict:
    """Wall seconds of the same slice of Figure 2's sweep in one process and in worker processes."""
    base = TrainConfig(dataset="mnist5k", image_size=28, model="vgg_mnist", epochs=epochs, lr=2e-3)
    pcfg = PruneConfig(inference_samples=256, fine_tune_epochs=1)
    kw = {"methods": ("magnitude", "flexrel"), "pruning_factors": factors, "seeds": range(seeds), "device": "cpu"}
    out: dict = {"seeds": seeds, "factors": list(factors), "dense_epochs": epochs, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as many:
        start = time.perf_counter()
        alone = fig2.compute(base, pcfg, cache_root=one, workers=1, **kw)
        out["one_process_seconds"] = time.perf_counter() - start
        shutdown()
        out["workers"] = cpu_workers(seeds * 2)
        start = time.perf_counter()
        run_tasks(abs, [0] * out["workers"], workers=out["workers"])  # start the workers
        out["worker_start_seconds"] = time.perf_counter() - start
        side = fig2.compute(base, pcfg, cache_root=many, **kw)
        out["workers_seconds"] = time.perf_counter() - start
    out["speedup"] = out["one_process_seconds"] / out["workers_seconds"]
    cols = ["one_shot_accuracy", "fine_tuned_accuracy"]
    out["largest_accuracy_difference_points"] = float(100 * (alone[cols] - side[cols]).abs().max().max())
    return out


def run_clean() -> dict:
    """``main`` in a fresh interpreter without ``bench.py``'s ``MALLOC_MMAP_THRESHOLD_`` (which makes
    every large allocation a system call: right for measuring peak memory, wrong for timing sweeps)."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sweep.json"
        subprocess.run([sys.executable, "-m", __name__, str(out)], env=env, check=True)
        return json.loads(out.read_text())


def main() -> dict:
    """Both measurements, printed; returns them for ``bench.py``'s JSON."""
    report = {"training": training_bench(), "evaluation": evaluation_bench(), "sweep": sweep_bench()}
    t, e, s = report["training"], report["evaluation"], report["sweep"]
    print(
        f"one fine-tuning epoch of vgg_mnist pruned to p = 0.9 ({t['steps']} steps of 64): "
        f"{t['textbook_seconds']:.3f} s by the textbook loop, {t['train_seconds']:.3f} s by train ({t['speedup']:.2f}x)"
    )
    print(
        f"evaluation of vgg_mnist on 750 images: {e['plain_seconds']:.3f} s as is, "
        f"{e['channels_last_seconds']:.3f} s channels-last ({e['speedup']:.2f}x)"
    )
    print(
        f"Figure 2 slice ({s['seeds']} seeds x 2 methods x {len(s['factors'])} factors, empty cache): "
        f"{s['one_process_seconds']:.1f} s in one process, {s['workers_seconds']:.1f} s "
        f"in {s['workers']} workers of one thread (start-up {s['worker_start_seconds']:.1f} s): {s['speedup']:.2f}x; "
        f"largest accuracy difference {s['largest_accuracy_difference_points']:.2f} points"
    )
    return report


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps(main()))
