"""The wall time of ``make reproduce PROFILE=<profile> NPROC=n`` estimated for n GPUs from one process's
stage counts and times (``reproduce_estimate``): which stages shard over the ranks, which do not, and
what the all-reduces add.

Under ``NPROC=n``, ``paper.torchrun`` runs Figure 2's sweep on n ranks before the notebooks; Figure 1's
setup (seed 0's dense model, relevance and dense accuracies) is the first setup of that sweep, so it is
computed there too. In those two notebooks (``SHARDED_NOTEBOOKS``):

- sharded, time / n (``SHARDED_STAGES``): training and fine-tuning (DDP, each rank its block of every
  global batch), evaluation (each rank its block of the split), relevance and the loading of its samples
  (each rank its block of the inference sample);
- replicated, time as one process's: scoring and pruning (every rank computes the same masks).

Every other notebook runs in one process, as without torchrun. The all-reduces are counted with the ring
algorithm's cost, ``latency_s + 2 (n - 1) / n * bytes / bus_bytes_per_s`` per call:

- every optimiser step under DDP sums the gradients: ``weights`` x 4 bytes (float32); steps = trained
  images / ``batch_size`` (the global batch, one process's);
- every relevance computation sums the per-weight relevance: ``weights`` x 8 bytes (float64); calls =
  relevance samples / ``samples_per_call``;
- every evaluation sums two integers: latency only, left out.

DDP overlaps its all-reduce with the backward pass; counting it in full makes that term an upper bound.
``bus_bytes_per_s`` and ``latency_s`` are assumptions, not measurements (defaults: 50 GB/s and 50 µs,
about what NCCL reaches between the GPUs of one NVLink node; give an inter-node link's for several
nodes). Loading is assumed to keep up on every rank (enough CPU cores per GPU).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

SHARDED_NOTEBOOKS = ("fig1", "fig2")
SHARDED_STAGES = ("train_image", "evaluate_image", "relevance_sample", "load_image")
WORLDS = (1, 2, 4, 8)
BUS_BYTES_PER_S = 50e9
LATENCY_S = 50e-6


def all_reduce_s(nbytes: float, world: int, bus_bytes_per_s: float = BUS_BYTES_PER_S, latency_s: float = LATENCY_S):
    """Seconds of one ring all-reduce of ``nbytes`` over ``world`` ranks (0 for one rank)."""
    if world <= 1:
        return 0.0
    return latency_s + 2 * (world - 1) / world * nbytes / bus_bytes_per_s


def scaled_estimate(
    counts: Mapping[str, Mapping[str, float]],
    seconds: Mapping[str, float],
    worlds: Sequence[int] = WORLDS,
    *,
    weights: int,
    batch_size: int,
    samples_per_call: float,
    bus_bytes_per_s: float = BUS_BYTES_PER_S,
    latency_s: float = LATENCY_S,
) -> dict[int, dict[str, float]]:
    """Per rank count n: ``{"sharded_s", "replicated_s", "serial_s", "all_reduce_s", "total_s", "speedup"}``
    (module docstring; speedup over one process). With n = 1, ``total_s`` is ``reproduce_estimate.estimate``'s
    total of the same counts and times."""
    sharded = replicated = serial = 0.0
    trained = relevance = 0.0
    for nb, stages in counts.items():
        for stage, n in stages.items():
            cost = n * seconds[stage]
            if nb not in SHARDED_NOTEBOOKS:
                serial += cost
            elif stage in SHARDED_STAGES:
                sharded += cost
                trained += n if stage == "train_image" else 0.0
                relevance += n if stage == "relevance_sample" else 0.0
            else:
                replicated += cost
    steps, calls = trained / batch_size, relevance / samples_per_call
    out: dict[int, dict[str, float]] = {}
    for world in worlds:
        comm = steps * all_reduce_s(4 * weights, world, bus_bytes_per_s, latency_s)
        comm += calls * all_reduce_s(8 * weights, world, bus_bytes_per_s, latency_s)
        total = sharded / world + replicated + serial + comm
        out[int(world)] = {
            "sharded_s": sharded / world,
            "replicated_s": replicated,
            "serial_s": serial,
            "all_reduce_s": comm,
            "total_s": total,
        }
    one = sharded + replicated + serial  # one process: nothing to all-reduce
    for row in out.values():
        row["speedup"] = one / row["total_s"] if row["total_s"] else float("nan")
    return out


def format_scaling(scaling: Mapping[int, Mapping[str, float]]) -> str:
    """A plain-text table: hours per rank count, split into its parts."""
    lines = [f"{'GPUs':>5} | {'sharded h':>10} | {'replicated h':>12} | {'serial h':>9} | {'all-reduce h':>12} | "
             f"{'total h':>8} | speedup"]  # fmt: skip
    for n, row in scaling.items():
        h = {k: v / 3600 for k, v in row.items() if k.endswith("_s")}
        lines.append(
            f"{n:>5} | {h['sharded_s']:10.3f} | {h['replicated_s']:12.3f} | {h['serial_s']:9.3f} | "
            f"{h['all_reduce_s']:12.4f} | {h['total_s']:8.3f} | {row['speedup']:.2f}x"
        )
    return "\n".join(lines)
