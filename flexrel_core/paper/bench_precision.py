"""``make bench``'s precision section: what training the dense model in float64 costs, and what it keeps
when another CPU reruns the workbook.

The default profile's dense model (``vgg_mnist`` on the MNIST subset's 3,000 training images, seed 0) is
trained by the workbook's own stage (``pipeline.trained_model``, one thread, an empty cache) for
``epochs`` epochs in float32 and in float64 (``TrainConfig.precision``; the weights are rounded to float32
at the end either way), once under each of torch's x86 CPU kernel levels this machine can run, from its
own down (``ATEN_CPU_CAPABILITY``: AVX-512, AVX2, no vector instructions): a level stands in for another
CPU, since its kernels round sums in another order. Each run is a fresh interpreter, since torch reads
the capability once. Reported per precision: seconds of the stage under this machine's kernels (data
loading included), and for every pair of neighbouring levels the two runs' relative distance
``‖w_a − w_b‖ / ‖w_a‖`` over every parameter they return, the share of float32 weights that differ at all
and the share more than one float32 step (ulp) apart, and both runs' validation accuracies. A machine
without a narrower level (or not x86) reports the times only.

What it measured on a 2-core AMD EPYC (``results/bench_precision.json``): in float64 the AVX-512 / AVX2 pair
ends 1.4e-10 apart, the same float32 weights but for 0.008 %; the AVX2 / no-vector pair ends 0.35 apart, as
far as float32 training drifts (same validation accuracy). A claim of identical weights holds for the pair
it was measured on only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..workbook.config import PRECISIONS, TrainConfig
from ..workbook.pipeline import trained_model
from ..workbook.profiles import read_profile

# torch's capability names (``torch.backends.cpu.get_cpu_capability``) -> the next narrower one's value for
# ``ATEN_CPU_CAPABILITY``.
NARROWER = {"AVX512": "avx2", "AVX2": "default"}


def narrower_levels(here: str | None = None) -> list[str]:
    """The ``ATEN_CPU_CAPABILITY`` values below this machine's kernel level (``here``), widest first:
    ``["avx2", "default"]`` on an AVX-512 machine, ``["default"]`` on an AVX2 one, ``[]`` otherwise."""
    level = torch.backends.cpu.get_cpu_capability() if here is None else here
    levels = []
    while level in NARROWER:
        levels.append(NARROWER[level])
        level = NARROWER[level].upper()
    return levels


def default_setting() -> tuple[dict, int]:
    """The default profile's dense model (its ``TrainConfig`` fields, seed 0) and its epochs."""
    cfg = TrainConfig.from_mapping(read_profile("default")["common"])
    fields = {
        f: getattr(cfg, f) for f in ("dataset", "image_size", "resize", "model", "batch_norm", "lr", "batch_size")
    }
    return fields, cfg.epochs


def train_once(precision: str, epochs: int, setting: dict, out: Path) -> None:
    """Train the dense model of ``setting`` by the workbook's stage in a fresh cache; write its
    parameters, time and accuracy to ``out``."""
    cfg = TrainConfig(**setting, epochs=epochs, precision=precision)
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        model, info = trained_model(cfg, cache_root=cache, device="cpu")
        seconds = time.perf_counter() - start
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    record = {"weights": weights, "seconds": seconds, "val_accuracy": info["val_accuracy"]}
    torch.save(record | {"kernels": torch.backends.cpu.get_cpu_capability()}, out)


def _run(precision: str, epochs: int, setting: dict, out: Path, capability: str | None) -> dict:
    """``train_once`` in a fresh interpreter under the kernels of ``capability`` (None: this machine's own)."""
    env = dict(os.environ)
    if capability is not None:
        env["ATEN_CPU_CAPABILITY"] = capability
    module = f"{__package__}.bench_precision"  # (``__name__`` is "__main__" under ``python -m``)
    args = [sys.executable, "-m", module, precision, str(epochs), json.dumps(setting), str(out)]
    subprocess.run(args, env=env, check=True)
    return torch.load(out)


def compare_weights(a: torch.Tensor, b: torch.Tensor) -> dict:
    """How far two float32 weight vectors are apart: relative distance ``‖a − b‖ / ‖a‖`` (in float64), the
    share of weights that differ, and the share more than one float32 step (ulp) apart."""
    distance = (a.double() - b.double()).norm() / a.double().norm()
    steps = (a.view(torch.int32).long() - b.view(torch.int32).long()).abs()  # ulps apart, for same-sign floats
    return {
        "relative_distance": float(distance),
        "weights_differing_share": float((a != b).double().mean()),
        "weights_beyond_one_ulp_share": float((steps > 1).double().mean()),
    }


def precision_bench(epochs: int | None = None, setting: dict | None = None) -> dict:
    """Both precisions under this machine's kernels and each narrower level (see the module docstring);
    ``setting``/``epochs`` default to the default profile's."""
    profile_setting, profile_epochs = default_setting()
    setting = profile_setting if setting is None else setting
    epochs = profile_epochs if epochs is None else epochs
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision in PRECISIONS:
            runs = [
                _run(precision, epochs, setting, Path(tmp) / f"{precision}-{level}.pt", level)
                for level in [None, *narrower_levels()]
            ]
            pairs = [
                {"kernels": [a["kernels"], b["kernels"]], "val_accuracy": [a["val_accuracy"], b["val_accuracy"]]}
                | compare_weights(a["weights"], b["weights"])
                for a, b in zip(runs, runs[1:], strict=False)
            ]
            row = {"precision": precision, "seconds": runs[0]["seconds"], "kernels": [r["kernels"] for r in runs]}
            rows.append(row | {"val_accuracy": [r["val_accuracy"] for r in runs], "pairs": pairs})
    by = {r["precision"]: r for r in rows}
    return {
        "setting": setting | {"epochs": epochs},
        "rows": rows,
        "float64_over_float32_time": by["float64"]["seconds"] / by["float32"]["seconds"],
    }


def describe(report: dict) -> list[str]:
    """The section's lines for the terminal."""
    s = report["setting"]
    lines = [f"dense training of {s['model']} on {s['dataset']}, {s['epochs']} epochs, one thread:"]
    for r in report["rows"]:
        lines.append(f"  {r['precision']}: {r['seconds']:.1f} s under {r['kernels'][0]} kernels")
        for pair in r["pairs"]:
            lines.append(
                f"    {' vs '.join(pair['kernels'])} kernels: weights {pair['relative_distance']:.1e} apart, "
                f"{100 * pair['weights_differing_share']:.2g} % differ "
                f"({100 * pair['weights_beyond_one_ulp_share']:.2g} % by more than one float32 step), "
                f"validation accuracy {pair['val_accuracy'][0]:.4f} vs {pair['val_accuracy'][1]:.4f}"
            )
    lines.append(f"  float64 / float32 time: {report['float64_over_float32_time']:.2f}x")
    return lines


def main(argv: list[str] | None = None) -> int:
    import argparse

    from ..workbook.cache import write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/bench_precision.json")
    parser.add_argument("--epochs", type=int, default=None, help="default: the default profile's")
    args = parser.parse_args(argv)
    report = precision_bench(args.epochs)
    print("\n".join(describe(report)))
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] in PRECISIONS:  # one run, in its own interpreter (``_run``)
        train_once(sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), Path(sys.argv[4]))
    else:
        sys.exit(main())
