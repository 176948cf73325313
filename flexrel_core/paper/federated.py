"""Cooperative learning of a pruned model over a bandwidth-limited network: the simulator behind Figure 3.

N learner nodes each hold a shard of the training data and train
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
bytes are part of every total. ``fig3.select_for_targets`` then picks, for each target and
technique, the pruning factor that gets there with the least data.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from ..data import DataSplits, labels_of, tensors
from ..encoding import decode_sparse, encode_sparse
from ..layers import prunable_layers
from ..masks import apply_masks, prune
from ..scores import METHODS, pruning_scores
from ..training import evaluate, torch_threads, train
from ..workbook.cache import cached
from ..workbook.config import PARTITIONS, FedConfig, TrainConfig, as_dict, dict_hash
from ..workbook.paths import REPO_ROOT, cache_dir
from ..workbook.pipeline import data_for, new_model


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
        train(
            local,
            shard,
            epochs=cfg.local_epochs,
            lr=cfg.local_lr,
            batch_size=cfg.local_batch_size,
            optimizer=cfg.local_optimizer,
            seed=cfg.seed * 1_000_003 + index * 1_009 + i,
            device=device,
            show_progress=False,  # one outer bar shows the simulation's progress
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
    if technique not in METHODS:
        raise ValueError(f"technique must be 'dense' or one of {METHODS}, got {technique!r}")
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
