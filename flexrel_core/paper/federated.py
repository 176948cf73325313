"""Cooperative learning of a pruned model over a bandwidth-limited network: the simulator behind Figure 3.

N learner nodes each hold a shard of the training split. The scenario starts from the dense model
trained to convergence (the cached model of the Figure 2 pipeline, ``pipeline.prepare``: the paper
prunes a trained VGG16, and every figure then prunes the same model) or, in Figure 3's scenario
``learning``, from a model trained briefly on a small share of the split (``TrainConfig.train_samples``),
which learning by the nodes then carries to the targets; the server prunes it once to
a factor p with a technique (magnitude, relevance or FlexRel; relevance computed on the inference
split, the data held where the model is deployed) and learning goes on by federated averaging
(FedAvg: every node starts a round from the global model, trains ``local_steps`` mini-batches, or
``local_epochs`` passes, on its shard, sends its model back; the server averages them weighted by
shard size) with the masks fixed: nodes keep pruned weights at zero (``training.train``) and so does
the average. The unpruned model ("dense") runs the same rounds as the reference.

What travels is counted at its real size: the model goes down to and up from every node as
``encode_sparse`` bytes (``encoded_size``: the exact length, with an unchanged mask coded once per
run), and with ``half=True`` each side continues from the decoded float16 copy, so the rounding
costs what it costs. Per round,

    compute_i  = 3 * FLOPs(non-zero weights, one sample) * samples_i / node_flops
    transfer_i = 8 * bytes_down / bandwidth_bps + latency_s + 8 * bytes_up_i / bandwidth_bps + latency_s
    elapsed    = max_i compute_i + max_i transfer_i

(3x forward FLOPs for forward + backward; a multiply-add is 2 FLOPs; biases, activations and
pooling are not counted; with ``shared_link`` all nodes' bytes share one link). Round 0 is the
model just pruned at the server (nothing sent yet); an accuracy target counts as reached at the
first round of learning (round >= 1) whose validation accuracy meets it (Figure 3 chooses factors on
validation and reports test accuracy there).

Rounds are kept cheap so that a scenario may need many: the server folds each node's returned
model into a running average as it arrives (``RunningAverage``: one extra state per round, not one
per node), the global model is evaluated on the validation split every round and, when asked
(``FedConfig.test_every_round=False``), on the test split only where a target is first reached;
``FedConfig.stop_when_reached`` ends a run once validation has met every target.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from ..data import labels_of
from ..encoding import MaskCodeCache, decode_sparse, encode_sparse, encoded_size
from ..layers import prunable_layers
from ..masks import MASK_BUFFER, apply_masks, prune
from ..scores import METHODS, method_delta, pruning_scores
from ..training import evaluate, torch_threads, train
from ..workbook.cache import cached
from ..workbook.config import PARTITIONS, FedConfig, PruneConfig, as_dict, dict_hash
from ..workbook.paths import REPO_ROOT, cache_dir
from ..workbook.pipeline import Setup

TECHNIQUES = (*METHODS, "dense")


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


def compute_time_s(flops_per_sample: float, samples: int, node_flops: float) -> float:
    """Local training time: forward + backward = 3 x forward FLOPs per sample processed."""
    return 3.0 * flops_per_sample * samples / node_flops


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
def local_samples(shard_size: int, cfg: FedConfig) -> int:
    """Samples a node processes in one round (for its compute time)."""
    full = shard_size * cfg.local_epochs
    return full if cfg.local_steps is None else min(full, cfg.local_steps * cfg.local_batch_size)


class RunningAverage:
    """FedAvg accumulated node by node: ``add(state, weight)`` folds one node's returned state into a
    running weighted sum, so a round holds one extra state instead of one per node; ``apply(model)``
    writes sum_i w_i * state_i / sum_i w_i into ``model`` (the server's step). Float tensors are
    averaged (each term scaled by w_i / total before adding, in node order, as a plain weighted mean
    over the nodes' states computes it); other buffers come from the first node, masks are kept and
    re-applied. ``total`` is the sum of the weights to come (FedAvg: the shard sizes, known before the
    round)."""

    def __init__(self, total: float) -> None:
        if total <= 0:
            raise ValueError(f"the weights must sum to > 0, got {total}")
        self.total = float(total)
        self.sum: dict[str, torch.Tensor] = {}
        self.first: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, state: dict, weight: float) -> None:
        with torch.no_grad():
            for name, t in state.items():
                if not t.is_floating_point():
                    self.first.setdefault(name, t.clone())
                elif name in self.sum:
                    self.sum[name] += t * (weight / self.total)
                else:
                    self.sum[name] = t * (weight / self.total)
        self.count += 1

    def apply(self, model: nn.Module) -> None:
        if not self.count:
            raise ValueError("no state was added")
        with torch.no_grad():
            for name, t in model.state_dict().items():
                if name in self.sum:
                    t.copy_(self.sum[name])
                elif name in self.first and not name.endswith(MASK_BUFFER):
                    t.copy_(self.first[name])
            apply_masks(model)


def average(model: nn.Module, states: list[dict], weights: Sequence[float]) -> None:
    """The server's step of a round, in place: the nodes' states averaged with ``weights`` (FedAvg:
    shard sizes), non-float buffers taken from the first node, masks kept and re-applied
    (``RunningAverage`` over a list)."""
    avg = RunningAverage(float(sum(weights)))
    for state, w in zip(states, weights, strict=True):
        avg.add(state, w)
    avg.apply(model)


def send(model: nn.Module, cfg: FedConfig, sizes: MaskCodeCache) -> tuple[nn.Module, int]:
    """What the receiver gets of ``model`` and the bytes it travelled in: the decoded ``encode_sparse``
    blob with ``half=True`` (float16 rounding is real), else an exact copy -- the lossless round trip
    is bit-identical -- counted as ``encoded_size`` (``len(encode_sparse(model))`` without re-coding
    an unchanged mask: ``sizes`` caches the mask codes)."""
    if cfg.half:
        blob = encode_sparse(model, half=True)
        return decode_sparse(blob, copy.deepcopy(model)), len(blob)
    return copy.deepcopy(model), encoded_size(model, cache=sizes)


def fedavg_round(
    model: nn.Module,
    shards: list[Subset],
    test,
    cfg: FedConfig,
    index: int,
    seed: int,
    device: str = "cpu",
    sizes: MaskCodeCache | None = None,
    val=None,
    evaluate_test: bool = True,
) -> tuple[dict, list[dict]]:
    """Run round ``index`` on ``model`` in place: returns (round record, per-node traffic records).
    The nodes' returned models are folded into a ``RunningAverage`` one by one (a node's copy is
    dropped once added). The record holds the global model's ``val_accuracy`` when ``val`` is given,
    and its test ``accuracy`` when ``evaluate_test`` (else NaN)."""
    sizes = sizes if sizes is not None else MaskCodeCache()
    flops = forward_flops(model, tuple(test[0][0].shape))
    avg = RunningAverage(float(sum(len(s) for s in shards)))
    downs, ups, computes, traffic = [], [], [], []
    for i, shard in enumerate(shards):
        local, down = send(model, cfg, sizes)
        train(
            local,
            shard,
            epochs=cfg.local_epochs,
            max_steps=cfg.local_steps,
            lr=cfg.local_lr,
            batch_size=cfg.local_batch_size,
            optimizer=cfg.local_optimizer,
            seed=seed * 1_000_003 + index * 1_009 + i,
            device=device,
            show_progress=False,  # one outer bar shows the simulation's progress
        )
        received, up = send(local, cfg, sizes)
        avg.add(received.state_dict(), len(shard))
        del local, received
        downs.append(down)
        ups.append(up)
        computes.append(compute_time_s(flops, local_samples(len(shard), cfg), cfg.node_flops))
        traffic.append(
            {"round": index, "node": i, "samples": len(shard), "bytes_received": down}
            | {"bytes_sent": up, "compute_s": computes[-1]}
        )
    avg.apply(model)
    rec = {"round": index, "flops_per_sample": flops, "bytes_down": sum(downs), "bytes_up": sum(ups)}
    rec |= round_time_s(computes, downs, ups, cfg)
    if val is not None:
        rec["val_accuracy"] = evaluate(model, val, device=device)
    rec["accuracy"] = evaluate(model, test, device=device) if evaluate_test else float("nan")
    return rec, traffic


def first_reached(val_accuracy: float, targets: Sequence[float], reached: set[float]) -> list[float]:
    """The targets of ``targets`` not in ``reached`` that ``val_accuracy`` meets (a round where they are
    first reached on validation: where Figure 3 may choose a factor, so where test accuracy is needed)."""
    return [t for t in targets if t not in reached and val_accuracy >= t - 1e-9]


# --------------------------------------------------------------------------- one run
def shards_of(setup: Setup, cfg: FedConfig) -> list[Subset]:
    """The nodes' shards of the training split (seeded by the setup's seed)."""
    train_split = setup.data.train
    parts = partition_indices(labels_of(train_split), cfg.nodes, cfg.partition, cfg.dirichlet_alpha, setup.cfg.seed)
    return [Subset(train_split, p.tolist()) for p in parts]


def prune_for(setup: Setup, model: nn.Module, technique: str, amount: float, pcfg: PruneConfig, delta: float) -> None:
    """Prune ``model`` in place to ``amount`` with ``technique`` (relevance: the setup's, computed on
    the inference split); ``"dense"`` leaves it whole."""
    if technique not in TECHNIQUES:
        raise ValueError(f"technique must be one of {TECHNIQUES}, got {technique!r}")
    if technique == "dense":
        return
    d = method_delta(technique, delta)
    scores = pruning_scores(
        model, method="flexrel", delta=d, normalize=pcfg.normalize, relevance=setup.relevance if d > 0 else None
    )
    prune(model, scores, amount, scope=pcfg.scope)


def simulate(
    setup: Setup,
    pcfg: PruneConfig,
    cfg: FedConfig,
    technique: str,
    amount: float,
    *,
    delta: float,
    targets: Sequence[float] = (),
    cache_root: str | Path = REPO_ROOT / "cache",
    threads: int | None = 1,
    device: str = "cpu",
) -> dict:
    """One cooperative-learning run (cached): the trained model of ``setup`` pruned to ``amount`` by
    ``technique`` (``"dense"``: not pruned), then ``cfg.rounds`` FedAvg rounds with fixed masks.

    Returns ``{"rounds": [...], "traffic": [...], "state": final global state}``; round records
    carry ``val_accuracy`` (every round) and test ``accuracy``, cumulative ``elapsed_s`` and ``mb``
    (10^6 bytes, both directions, all nodes) and ``eligible`` (a round of learning, where a target may
    be reached). Test accuracy is measured every round, or with ``cfg.test_every_round=False`` only at
    round 0 and at the rounds where the validation accuracy first meets one of ``targets`` (NaN
    elsewhere): the only rounds where Figure 3 can choose a factor. With ``cfg.stop_when_reached``
    the run ends at the round where validation has met every target. ``threads`` and ``device``
    only say where it runs and are not part of the cache key."""
    amount = 0.0 if technique == "dense" else float(amount)
    d = method_delta(technique, delta) if technique != "dense" else 0.0
    targets = sorted(float(t) for t in targets)
    key = {
        "stage": "fed_run", "model": setup.model_id, "eval": setup.eval_id, "technique": technique,
        "amount": amount, "delta": d, "normalize": pcfg.normalize, "scope": pcfg.scope, "fed": as_dict(cfg),
        "relevance": setup.relevance_id if d > 0 else None,
    }  # fmt: skip
    if not cfg.test_every_round or cfg.stop_when_reached:  # then what a run records depends on the targets
        key["targets"] = targets

    def compute() -> dict:
        model = setup.fresh_model(device)
        prune_for(setup, model, technique, amount, pcfg, delta)
        rounds = [{"round": 0, "flops_per_sample": forward_flops(model, setup.data.input_shape), "bytes_down": 0}]
        rounds[0] |= {"bytes_up": 0, "compute_s": 0.0, "transfer_s": 0.0, "round_s": 0.0}
        rounds[0]["val_accuracy"] = evaluate(model, setup.data.val, device=device)
        rounds[0]["accuracy"] = evaluate(model, setup.data.test, device=device)
        shards, traffic, sizes, reached = shards_of(setup, cfg), [], MaskCodeCache(), set()
        for r in range(1, cfg.rounds + 1):
            rec, tr = fedavg_round(
                model, shards, setup.data.test, cfg, r, setup.cfg.seed, device, sizes, val=setup.data.val,
                evaluate_test=cfg.test_every_round,
            )  # fmt: skip
            new = first_reached(rec["val_accuracy"], targets, reached)
            if new and not cfg.test_every_round:
                rec["accuracy"] = evaluate(model, setup.data.test, device=device)
            reached.update(new)
            rounds.append(rec)
            traffic += tr
            if cfg.stop_when_reached and targets and len(reached) == len(targets):
                break
        elapsed = np.cumsum([r["round_s"] for r in rounds])
        mb = np.cumsum([(r["bytes_down"] + r["bytes_up"]) / 1e6 for r in rounds])
        for r, e, m in zip(rounds, elapsed, mb, strict=True):
            r.update(technique=technique, amount=amount, seed=setup.cfg.seed, elapsed_s=float(e), mb=float(m))
            r["eligible"] = r["round"] >= 1
        for t in traffic:
            t.update(technique=technique, amount=amount, seed=setup.cfg.seed)
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return {"rounds": rounds, "traffic": traffic, "state": state}

    with torch_threads(threads):
        return cached(cache_dir("federated", dict_hash(key), cache_root) / "run.pt", compute, config=key)
