"""Cooperative learning of a pruned model over a bandwidth-limited network (FlexRel, Fig. 3).

DESIGN.md, "Figure 3's scenario": N learner nodes each hold a shard of the training data and train
in rounds of federated averaging (FedAvg: every node starts the round from the global model, trains
``local_epochs`` on its shard, sends its model back; the server averages them weighted by shard
size). After ``warmup_rounds`` dense rounds the server prunes the global model to a factor p with
a technique (magnitude, relevance or FlexRel; relevance computed on the *inference* split, the data
held where the model is deployed); the masks then stay fixed: nodes keep pruned weights at zero
(``training.train``) and so does the average.

What travels is real: the model goes down to and up from every node as ``encode_sparse`` bytes,
and each side continues from the decoded copy (so ``half=True`` costs its rounding). Per round,

    compute_i  = 3 * FLOPs(non-zero weights, one sample) * samples_i * local_epochs / node_flops
    transfer_i = 8 * bytes_down / bandwidth_bps + latency_s + 8 * bytes_up_i / bandwidth_bps + latency_s
    elapsed    = max_i compute_i + max_i transfer_i

(3x forward FLOPs for forward + backward; a multiply-add is 2 FLOPs; biases, activations and
pooling are not counted; with ``shared_link`` all nodes' bytes share one link). A target accuracy
counts as reached at the first *pruned* round whose test accuracy meets it; the warm-up's time and
bytes are part of every total. ``select_for_targets`` then picks, for each target and technique,
the pruning factor that gets there with the least data.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Subset

from .cache import cached
from .config import TrainConfig, as_dict, dict_hash
from .data import DataSplits, labels_of, tensors
from .encoding import decode_sparse, encode_sparse
from .layers import prunable_layers
from .masks import apply_masks, load_state, prune
from .paths import REPO_ROOT, cache_dir
from .pipeline import data_for, new_model
from .progress import progress
from .scores import pruning_scores
from .training import evaluate, torch_threads, train

TECHNIQUES = ("magnitude", "flexrel", "relevance")
PARTITIONS = ("iid", "dirichlet", "sorted")


@dataclasses.dataclass(frozen=True)
class FedConfig:
    """Every constant of the Fig. 3 scenario, with its default and unit."""

    nodes: int = 5  # learner nodes, each with one shard of the training split
    partition: str = "iid"  # "iid" (stratified), "dirichlet" (class mix ~ Dir(alpha)), "sorted" (label-sorted shards)
    dirichlet_alpha: float = 0.5  # concentration of the non-IID Dirichlet split (smaller = more skewed)
    warmup_rounds: int = 3  # dense FedAvg rounds before pruning
    rounds: int = 20  # FedAvg rounds with the pruned model (masks fixed)
    local_epochs: int = 1  # epochs each node trains on its shard per round
    local_lr: float = 5e-3  # learning rate of local training
    local_batch_size: int = 32  # mini-batch size of local training
    local_optimizer: str = "adam"  # optimizer of local training (fresh each round), see training.OPTIMIZERS
    node_flops: float = 1e9  # sustained FLOP/s of a learner node (a low-power edge CPU)
    bandwidth_bps: float = 1e6  # link bandwidth between server and each node, bit/s (constrained wireless link)
    latency_s: float = 0.05  # one-way latency per transfer, s
    shared_link: bool = False  # True: all nodes' transfers share one link of bandwidth_bps
    half: bool = False  # send float16 values (lossy) instead of the exact float32 bits
    delta: float = 0.5  # FlexRel weight of relevance
    inference_samples: int = 128  # inference-split samples for relevance
    composite: str = "epsilon_plus_flat"  # zennit LRP rule set
    aggregate: str = "abs"  # how per-sample relevance is made non-negative
    normalize: str = "layer"  # min-max normalisation of scores, "layer" or "global"
    scope: str = "global"  # one global pruning threshold or the same fraction per layer
    seed: int = 0  # seeds shards, initialisation and local training

    @classmethod
    def from_mapping(cls, mapping: dict) -> FedConfig:
        """The fields found in ``mapping`` (a notebook's ``globals()`` after its parameters cell)."""
        return cls(**{f.name: mapping[f.name] for f in dataclasses.fields(cls) if f.name in mapping})

    def __post_init__(self) -> None:
        if self.partition not in PARTITIONS:
            raise ValueError(f"partition must be one of {PARTITIONS}, got {self.partition!r}")
        if self.nodes < 1 or self.rounds < 1 or self.warmup_rounds < 0 or self.local_epochs < 1:
            raise ValueError("need nodes >= 1, rounds >= 1, warmup_rounds >= 0 and local_epochs >= 1")
        if self.node_flops <= 0 or self.bandwidth_bps <= 0 or self.latency_s < 0:
            raise ValueError("node_flops and bandwidth_bps must be > 0 and latency_s >= 0")


# --------------------------------------------------------------------------- cost model
def forward_flops(model: nn.Module, input_shape: Sequence[int]) -> float:
    """FLOPs of one forward pass counting only non-zero weights: 2 * nnz * output positions per layer."""
    positions: dict[str, int] = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, n=n: positions.__setitem__(n, out[0, 0].numel()))
        for n, m in prunable_layers(model).items()
    ]
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
            model.train(was)
    finally:
        for h in hooks:
            h.remove()
    return float(sum(2 * int((m.weight != 0).sum()) * positions[n] for n, m in prunable_layers(model).items()))


def compute_time_s(flops_per_sample: float, samples: int, epochs: int, node_flops: float) -> float:
    """Local training time: forward + backward = 3 x forward FLOPs, per sample and epoch."""
    return 3.0 * flops_per_sample * samples * epochs / node_flops


def transfer_time_s(nbytes: float, bandwidth_bps: float, latency_s: float) -> float:
    """Time to send ``nbytes`` over one link: 8 * bytes / bandwidth + latency."""
    return 8.0 * nbytes / bandwidth_bps + latency_s


def round_time_s(compute_s: Sequence[float], down: Sequence[int], up: Sequence[int], cfg: FedConfig) -> dict:
    """One round's elapsed time = slowest node's compute + transfer (down and up)."""
    if cfg.shared_link:
        transfer = transfer_time_s(sum(down), cfg.bandwidth_bps, cfg.latency_s)
        transfer += transfer_time_s(sum(up), cfg.bandwidth_bps, cfg.latency_s)
    else:
        transfer = max(
            transfer_time_s(d, cfg.bandwidth_bps, cfg.latency_s) + transfer_time_s(u, cfg.bandwidth_bps, cfg.latency_s)
            for d, u in zip(down, up, strict=True)
        )
    compute = max(compute_s)
    return {"compute_s": compute, "transfer_s": transfer, "round_s": compute + transfer}


# --------------------------------------------------------------------------- data shards
def partition_indices(labels: np.ndarray, nodes: int, partition: str = "iid", alpha: float = 0.5, seed: int = 0):
    """Split sample indices among ``nodes``: IID (stratified round robin over a shuffle), per-class
    Dirichlet(alpha) proportions, or contiguous shards of the label-sorted samples."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    if partition == "iid":
        order = np.concatenate([rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)])
        return [np.sort(order[i::nodes]) for i in range(nodes)]
    if partition == "sorted":
        order = np.argsort(labels, kind="stable")
        return [np.sort(part) for part in np.array_split(order, nodes)]
    if partition == "dirichlet":
        for _ in range(100):
            shards: list[list[int]] = [[] for _ in range(nodes)]
            for c in np.unique(labels):
                members = rng.permutation(np.flatnonzero(labels == c))
                cuts = (np.cumsum(rng.dirichlet([alpha] * nodes))[:-1] * len(members)).astype(int)
                for i, part in enumerate(np.split(members, cuts)):
                    shards[i].extend(part.tolist())
            if min(len(s) for s in shards) > 0:
                return [np.sort(np.array(s)) for s in shards]
        raise ValueError(f"Dirichlet(alpha={alpha}) left a node without samples 100 times; raise alpha")
    raise ValueError(f"partition must be one of {PARTITIONS}, got {partition!r}")


@contextlib.contextmanager
def _quiet_bars() -> Iterator[None]:
    """Silence the per-call bars of ``training.train`` (one outer bar shows the simulation's progress)."""
    old = os.environ.get("FLEXREL_PROGRESS")
    os.environ["FLEXREL_PROGRESS"] = "off"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FLEXREL_PROGRESS", None)
        else:
            os.environ["FLEXREL_PROGRESS"] = old


# --------------------------------------------------------------------------- one FedAvg round
def fedavg_round(
    model: nn.Module, shards: list[Subset], data: DataSplits, cfg: FedConfig, index: int, device: str = "cpu"
) -> tuple:
    """Run round ``index`` on ``model`` in place: returns (round record, per-node traffic records)."""
    blob_down = encode_sparse(model, half=cfg.half)
    flops = forward_flops(model, data.input_shape)
    states, weights, ups, computes, traffic = [], [], [], [], []
    for i, shard in enumerate(shards):
        local = decode_sparse(blob_down, copy.deepcopy(model))
        with _quiet_bars():
            train(
                local,
                shard,
                epochs=cfg.local_epochs,
                lr=cfg.local_lr,
                batch_size=cfg.local_batch_size,
                optimizer=cfg.local_optimizer,
                seed=cfg.seed * 1_000_003 + index * 1_009 + i,
                device=device,
            )
        blob_up = encode_sparse(local, half=cfg.half)
        states.append(decode_sparse(blob_up, copy.deepcopy(model)).state_dict())
        weights.append(len(shard))
        ups.append(len(blob_up))
        computes.append(compute_time_s(flops, len(shard), cfg.local_epochs, cfg.node_flops))
        traffic.append(
            {"round": index, "node": i, "samples": len(shard), "bytes_received": len(blob_down)}
            | {"bytes_sent": len(blob_up), "compute_s": computes[-1]}
        )
    with torch.no_grad():
        total = float(sum(weights))
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(sum(s[name] * (w / total) for s, w in zip(states, weights, strict=True)))
            elif not name.endswith("flexrel_mask"):
                t.copy_(states[0][name])
        apply_masks(model)
    down = [len(blob_down)] * len(shards)
    rec = {"round": index, "flops_per_sample": flops, "bytes_down": sum(down), "bytes_up": sum(ups)}
    rec |= round_time_s(computes, down, ups, cfg)
    rec["accuracy"] = evaluate(model, data.test, device=device)
    return rec, traffic


# --------------------------------------------------------------------------- simulation
def _shards(data: DataSplits, cfg: FedConfig) -> list[Subset]:
    parts = partition_indices(labels_of(data.train), cfg.nodes, cfg.partition, cfg.dirichlet_alpha, cfg.seed)
    return [Subset(data.train, p.tolist()) for p in parts]


def _warmup(train_cfg: TrainConfig, cfg: FedConfig, data: DataSplits, cache_root: str | Path, device: str) -> dict:
    """The dense warm-up rounds, shared by every technique and factor (cached)."""
    post = ("rounds", "delta", "inference_samples", "composite", "aggregate", "normalize", "scope")
    wcfg = dataclasses.replace(cfg, **{f: FedConfig.__dataclass_fields__[f].default for f in post})
    key = {"stage": "fed_warmup", "train": as_dict(train_cfg), "fed": as_dict(wcfg)}

    def compute() -> dict:
        torch.manual_seed(cfg.seed)
        model = new_model(train_cfg, data)
        shards = _shards(data, cfg)
        rounds, traffic = [], []
        for r in range(1, cfg.warmup_rounds + 1):
            rec, tr = fedavg_round(model, shards, data, cfg, r, device)
            rounds.append(rec | {"phase": "dense"})
            traffic += tr
        return {
            "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "rounds": rounds,
            "traffic": traffic,
        }

    return cached(cache_dir("federated", dict_hash(key), cache_root) / "warmup.pt", compute, config=key)


def prune_global(model: nn.Module, data: DataSplits, cfg: FedConfig, technique: str, amount: float) -> None:
    """Prune the global model in place to ``amount`` with ``technique``; relevance from the inference split."""
    if technique == "dense":
        return
    if technique not in TECHNIQUES:
        raise ValueError(f"technique must be 'dense' or one of {TECHNIQUES}, got {technique!r}")
    x = None
    if technique != "magnitude":
        x = tensors(data.inference, cfg.inference_samples)[0].to(next(model.parameters()).device)
    scores = pruning_scores(
        model,
        x,
        method=technique,
        delta=cfg.delta,
        normalize=cfg.normalize,
        composite=cfg.composite,
        aggregate=cfg.aggregate,
    )
    prune(model, scores, amount, scope=cfg.scope)


def simulate(
    train_cfg: TrainConfig,
    cfg: FedConfig,
    technique: str,
    amount: float,
    *,
    data: DataSplits | None = None,
    cache_root: str | Path = REPO_ROOT / "cache",
    threads: int | None = 1,
    device: str = "cpu",
) -> dict:
    """One cooperative-learning run (cached): warm-up, pruning to ``amount`` by ``technique``
    (``"dense"``: no pruning), then ``cfg.rounds`` pruned rounds. Returns ``{"rounds": [...],
    "traffic": [...], "state": final global state}``; round records carry cumulative
    ``elapsed_s`` and ``mb`` (10^6 bytes, both directions, all nodes) and ``eligible`` (a round
    after the warm-up, where a target may be reached). ``threads`` and ``device`` only say where it
    runs and are not part of the cache key (as for ``pipeline.trained_model``)."""
    data = data if data is not None else data_for(train_cfg)
    amount = 0.0 if technique == "dense" else float(amount)
    key = {"stage": "fed_run", "train": as_dict(train_cfg), "fed": as_dict(cfg), "technique": technique}
    key["amount"] = amount

    def compute() -> dict:
        warm = _warmup(train_cfg, cfg, data, cache_root, device)
        model = new_model(train_cfg, data)
        model.load_state_dict(warm["state"])
        rounds = [dict(r) for r in warm["rounds"]]
        traffic = [dict(t) for t in warm["traffic"]]
        prune_global(model, data, cfg, technique, amount)
        zero = {"flops_per_sample": forward_flops(model, data.input_shape), "bytes_down": 0, "bytes_up": 0}
        zero |= {"compute_s": 0.0, "transfer_s": 0.0, "round_s": 0.0}
        rounds.append({"round": cfg.warmup_rounds, "phase": "pruning"} | zero)
        rounds[-1]["accuracy"] = evaluate(model, data.test, device=device)
        shards = _shards(data, cfg)
        for r in range(cfg.warmup_rounds + 1, cfg.warmup_rounds + cfg.rounds + 1):
            rec, tr = fedavg_round(model, shards, data, cfg, r, device)
            rounds.append(rec | {"phase": "dense" if technique == "dense" else "pruned"})
            traffic += tr
        elapsed = np.cumsum([r["round_s"] for r in rounds])
        mb = np.cumsum([(r["bytes_down"] + r["bytes_up"]) / 1e6 for r in rounds])
        for r, e, m in zip(rounds, elapsed, mb, strict=True):
            r.update(
                technique=technique,
                amount=amount,
                elapsed_s=float(e),
                mb=float(m),
                eligible=r["round"] > cfg.warmup_rounds,
            )
        for t in traffic:
            t.update(technique=technique, amount=amount)
        return {
            "rounds": rounds,
            "traffic": traffic,
            "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        }

    folder = cache_dir("federated", dict_hash(key), cache_root)
    with torch_threads(threads):
        return cached(folder / "run.pt", compute, config=key)


@dataclasses.dataclass
class SweepResult:
    """Every run of a sweep: per-round and per-node tables, and each run's final global state."""

    rounds: pd.DataFrame
    traffic: pd.DataFrame
    states: dict[tuple[str, float], dict]


def sweep(
    train_cfg: TrainConfig,
    cfg: FedConfig,
    techniques: Sequence[str] = TECHNIQUES,
    amounts: Sequence[float] = (0.5, 0.7, 0.9),
    *,
    dense_baseline: bool = True,
    data: DataSplits | None = None,
    cache_root: str | Path = REPO_ROOT / "cache",
    threads: int | None = 1,
    device: str = "cpu",
) -> SweepResult:
    """``simulate`` every technique at every pruning factor (plus one unpruned run if ``dense_baseline``)."""
    data = data if data is not None else data_for(train_cfg)
    runs = [(t, float(a)) for t in techniques for a in amounts] + ([("dense", 0.0)] if dense_baseline else [])
    rounds, traffic, states = [], [], {}
    for technique, amount in progress(runs, desc="fig3 runs"):
        res = simulate(
            train_cfg, cfg, technique, amount, data=data, cache_root=cache_root, threads=threads, device=device
        )
        rounds += res["rounds"]
        traffic += res["traffic"]
        states[(technique, amount)] = res["state"]
    first = ["technique", "amount", "round", "phase", "eligible", "accuracy", "elapsed_s", "mb"]
    df = pd.DataFrame(rounds)
    return SweepResult(df[first + [c for c in df.columns if c not in first]], pd.DataFrame(traffic), states)


# --------------------------------------------------------------------------- targets
def select_for_targets(rounds: pd.DataFrame, targets: Sequence[float]) -> pd.DataFrame:
    """For each target and technique, the pruning factor reaching it with the least data.

    ``rounds`` needs columns technique, amount, round, accuracy, elapsed_s, mb (and ``eligible``,
    else every row counts). Per factor the first eligible round with accuracy >= target counts;
    among factors the least ``mb`` wins, ties going to less time, then the larger factor. A
    technique that never reaches the target gets ``reached=False`` and NaN numbers."""
    df = rounds if "eligible" in rounds else rounds.assign(eligible=True)
    warm = df[~df["eligible"]].groupby(["technique", "amount"])["mb"].max()  # data sent before pruning
    df = df[df["eligible"]].sort_values(["technique", "amount", "round"])
    out = []
    for target in targets:
        for technique, group in df.groupby("technique", sort=False):
            hits = group[group["accuracy"] >= target - 1e-9].groupby("amount").head(1)
            row = {"target": float(target), "technique": technique, "reached": not hits.empty}
            if hits.empty:
                row |= dict.fromkeys(("amount", "round", "elapsed_s", "mb", "accuracy", "mb_after_warmup"), np.nan)
            else:
                best = hits.assign(neg=-hits["amount"]).sort_values(["mb", "elapsed_s", "neg"]).iloc[0]
                row |= {k: float(best[k]) for k in ("amount", "round", "elapsed_s", "mb", "accuracy")}
                row["mb_after_warmup"] = row["mb"] - float(warm.get((technique, best["amount"]), 0.0))
            out.append(row)
    return pd.DataFrame(out)


def bandwidth_savings(selection: pd.DataFrame, base: str = "magnitude", other: str = "flexrel") -> pd.DataFrame:
    """Per target: data to reach it with ``base`` and ``other``, the saving 1 - other / base, and the
    same saving on the data sent after the (common) dense warm-up only."""
    sel = selection.set_index(["target", "technique"])
    rows = []
    for target in sorted(selection["target"].unique()):
        b = sel.loc[(target, base)] if (target, base) in sel.index else None
        o = sel.loc[(target, other)] if (target, other) in sel.index else None
        mb_b = float(b["mb"]) if b is not None else np.nan
        mb_o = float(o["mb"]) if o is not None else np.nan
        after_b = float(b.get("mb_after_warmup", np.nan)) if b is not None else np.nan
        after_o = float(o.get("mb_after_warmup", np.nan)) if o is not None else np.nan
        rows.append(
            {"target": target, f"mb_{base}": mb_b, f"mb_{other}": mb_o}
            | {f"p_{base}": float(b["amount"]) if b is not None else np.nan}
            | {f"p_{other}": float(o["amount"]) if o is not None else np.nan}
            | {"saving": 1.0 - mb_o / mb_b if np.isfinite(mb_o) and np.isfinite(mb_b) else np.nan}
            | {"saving_after_warmup": 1.0 - after_o / after_b if after_b > 0 and np.isfinite(after_o) else np.nan}
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- half precision
def half_precision_effect(
    result: SweepResult, train_cfg: TrainConfig, data: DataSplits | None = None, device: str = "cpu"
) -> pd.DataFrame:
    """Test accuracy and bytes of each run's final model sent in float32 vs float16 (``half=True``)."""
    data = data if data is not None else data_for(train_cfg)
    rows = []
    for (technique, amount), state in result.states.items():
        model = new_model(train_cfg, data)
        load_state(model, state)
        blob32, blob16 = encode_sparse(model), encode_sparse(model, half=True)
        acc32 = evaluate(model, data.test, device=device)
        acc16 = evaluate(decode_sparse(blob16, copy.deepcopy(model)), data.test, device=device)
        rows.append(
            {"technique": technique, "amount": amount, "accuracy_fp32": acc32, "accuracy_fp16": acc16}
            | {"bytes_fp32": len(blob32), "bytes_fp16": len(blob16), "accuracy_change": acc16 - acc32}
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- figure and report
COLORS = {"magnitude": "C0", "flexrel": "C1", "relevance": "C2"}
LABELS = {"magnitude": "magnitude", "flexrel": "FlexRel", "relevance": "relevance only", "dense": "dense (no pruning)"}


def plot_fig3(selection: pd.DataFrame | str | Path, panels: Sequence[str] = TECHNIQUES):
    """Fig. 3: elapsed learning time against accuracy target, one panel per technique ((a)
    magnitude, (b) FlexRel, (c) relevance only), each point annotated with the megabytes sent and
    the pruning factor used; the unpruned run, when present, as a grey reference line. Reads the
    table ``select_for_targets`` wrote (a DataFrame or the path of its CSV)."""
    import matplotlib.pyplot as plt

    df = pd.read_csv(selection) if isinstance(selection, (str, Path)) else selection
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), sharey=True, squeeze=False)
    dense = df[(df["technique"] == "dense") & df["reached"]]
    for ax, technique, letter in zip(axes[0], panels, "abcdefgh", strict=False):
        if not dense.empty:
            ax.plot(dense["target"], dense["elapsed_s"], ls="--", color="0.6", lw=1, label=LABELS["dense"])
        part = df[(df["technique"] == technique) & df["reached"]]
        ax.plot(
            part["target"],
            part["elapsed_s"],
            "o-",
            color=COLORS.get(technique, "C3"),
            label=LABELS[technique],
        )
        for _, r in part.iterrows():
            ax.annotate(f"{r['mb']:.2f} MB\np={r['amount']:.2f}", (r["target"], r["elapsed_s"]), fontsize=6.5,
                        textcoords="offset points", xytext=(0, 6), ha="center")  # fmt: skip
        missed = df[(df["technique"] == technique) & ~df["reached"]]["target"]
        if len(missed):
            ax.text(0.02, 0.97, "not reached: " + ", ".join(f"{t:.2f}" for t in missed), transform=ax.transAxes,
                    fontsize=7, va="top", color="C3")  # fmt: skip
        ax.set_title(f"({letter}) {LABELS[technique]}")
        ax.set_xlabel("accuracy target")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("elapsed learning time (s)")
    fig.tight_layout()
    return fig


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def fig3_report(
    selection: pd.DataFrame,
    savings: pd.DataFrame,
    half: pd.DataFrame | None,
    cfg: FedConfig,
    amounts: Sequence[float],
    claim: float = 0.35,
) -> str:
    """The fig3 section of REPORT.md: data and time per target and technique, FlexRel's saving over
    magnitude at each target, and a plain verdict on the paper's "over 35 % bandwidth" claim."""
    sel = selection.set_index(["target", "technique"])
    techs = [t for t in ("magnitude", "flexrel", "relevance", "dense") if t in set(selection["technique"])]

    def cell(target: float, t: str) -> str:
        r = sel.loc[(target, t)]
        return "not reached" if not r["reached"] else f"{r['mb']:.2f} MB, {r['elapsed_s']:.1f} s (p={r['amount']:.2f})"

    lines = [
        "## Figure 3 — learning time and transmitted data to reach an accuracy target",
        "",
        f"Scenario: {cfg.nodes} nodes with {cfg.partition} shards of the training split, federated averaging; "
        f"{cfg.warmup_rounds} dense warm-up rounds, pruning of the global model (relevance on "
        f"{cfg.inference_samples} inference samples, FlexRel δ = {cfg.delta}), then {cfg.rounds} rounds with fixed "
        f"masks. Node speed {cfg.node_flops / 1e9:g} GFLOP/s, links {cfg.bandwidth_bps / 1e6:g} Mbit/s, latency "
        f"{1e3 * cfg.latency_s:g} ms. Data = real `encode_sparse` bytes, down and up, all nodes, warm-up included. "
        f"Pruning factors tried: {', '.join(f'{a:g}' for a in amounts)}; a target counts at the first pruned round "
        "reaching it, with the factor that needs the least data.",
        "",
        "| target | " + " | ".join(LABELS[t] for t in techs) + " | FlexRel saving vs magnitude | after warm-up |",
        "|---" * (len(techs) + 3) + "|",
    ]
    for _, s in savings.iterrows():
        saving = _pct(s["saving"]) if np.isfinite(s["saving"]) else "—"
        after = s.get("saving_after_warmup", np.nan)
        after = _pct(after) if np.isfinite(after) else "—"
        cells = " | ".join(cell(s["target"], t) for t in techs)
        lines.append(f"| {s['target']:.3f} | {cells} | {saving} | {after} |")
    both = savings[np.isfinite(savings["saving"])]
    lines += ["", "**Paper's claim** (“saving over 35 % bandwidth for typical accuracy targets”): "]
    if both.empty:
        verdict = "cannot be checked here: no target was reached by both magnitude and FlexRel."
    else:
        above = int((both["saving"] > claim).sum())
        med = float(both["saving"].median())
        verdict = (
            f"FlexRel saves more than {_pct(claim)} at {above} of the {len(both)} targets both techniques reach "
            f"(savings from {_pct(both['saving'].min())} to {_pct(both['saving'].max())}, median {_pct(med)}). "
        )
        after = both["saving_after_warmup"].dropna() if "saving_after_warmup" in both else pd.Series(dtype=float)
        if len(after):
            verdict += (
                f"Counting only the data sent after the dense warm-up (the same for every technique), the saving "
                f"ranges from {_pct(after.min())} to {_pct(after.max())} (median {_pct(float(after.median()))}, "
                f"over {_pct(claim)} at {int((after > claim).sum())} of {len(after)} targets). "
            )
        if above == len(both):
            verdict += "**The claim holds here.**"
        elif above == 0:
            verdict += "**The claim does not hold here.**"
        else:
            verdict += f"**The claim holds here only at some targets** (median saving {_pct(med)})."
    lines[-1] += verdict
    only = []
    for _, s in savings.iterrows():
        m_ok, f_ok = np.isfinite(s["mb_magnitude"]), np.isfinite(s["mb_flexrel"])
        if m_ok != f_ok:
            who, other = ("FlexRel", "magnitude") if f_ok else ("magnitude", "FlexRel")
            only.append(f"{s['target']:.3f} is reached by {who} only ({other} never gets there at any factor tried)")
        elif not m_ok:
            only.append(f"{s['target']:.3f} is reached by neither")
    if only:
        lines += ["", "Targets without a comparison: " + "; ".join(only) + "."]
    if half is not None and not half.empty:
        ratio = float((half["bytes_fp16"] / half["bytes_fp32"]).mean())
        lines += [
            "",
            f"**Half precision** (float16 values, `encode_sparse(half=True)`) on the final model of every run: "
            f"{_pct(ratio)} of the float32 bytes on average; test accuracy changes by "
            f"{half['accuracy_change'].min():+.4f} to {half['accuracy_change'].max():+.4f} "
            f"(mean {half['accuracy_change'].mean():+.4f}).",
        ]
    return "\n".join(lines) + "\n"
