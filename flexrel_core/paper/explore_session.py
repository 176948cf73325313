"""The explorer's computation, without widgets: what FlexRel keeps at (δ, p) and what accuracy it leaves.

Relevance (the inference-time information) and magnitudes are computed once per inference-data
choice -- "as trained" (the deployment distribution the model was trained for) and "shifted"
(only some classes, ``load_dataset(..., shift_classes=...)``) -- so a new setting only re-scores
(``pruning_scores(..., relevance=cached)``), re-thresholds (``prune`` on one working copy whose
weights are reset from the dense state) and evaluates on the deployment test samples.
``Session.state_at`` returns every number the explorer shows; the widgets of ``explore`` only
drive it, so everything here is usable (and tested) without a kernel.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import DataSplits, draw, tensors
from ..layers import prunable_layers
from ..masks import MASK_BUFFER, check_amount, prune
from ..scores import METHODS, check_delta, method_delta, pruning_scores
from ..training import select_device, torch_threads
from ..workbook.config import TrainConfig
from ..workbook.paths import REPO_ROOT
from ..workbook.pipeline import data_for, model_id, relevance_for, trained_model

DELTA_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
MAX_PRUNING_FACTOR = 0.99


@dataclass
class InferenceData:
    """One inference-data choice: its parameter relevance (computed once) and the deployment
    test samples (``x``, ``y``) on which accuracy is measured."""

    relevance: dict[str, torch.Tensor]
    x: torch.Tensor
    y: torch.Tensor


def resolve(path: str | Path) -> Path:
    """A relative path from the parameters, taken from the repository root (the runner's cwd),
    so that a notebook opened in JupyterLab (cwd ``notebooks/``) finds the same cache and results."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


def mask_checksum(masks: Mapping[str, torch.Tensor]) -> str:
    """Ten hex digits of sha1 over the packed bits of every mask, in order: equal iff masks are equal."""
    digest = hashlib.sha1()
    for name, mask in masks.items():
        digest.update(name.encode())
        digest.update(np.packbits(mask.detach().cpu().numpy().astype(bool)).tobytes())
    return digest.hexdigest()[:10]


def check_p(p: float) -> float:
    """A pruning factor the explorer accepts: in [0, ``MAX_PRUNING_FACTOR``]."""
    p = check_amount(p)
    if p > MAX_PRUNING_FACTOR:
        raise ValueError(f"the explorer's pruning factor goes up to {MAX_PRUNING_FACTOR}, got {p}")
    return p


class Session:
    """FlexRel's s = (1 - δ) M_norm + δ R_norm at pruning factor p, on one trained model.

    ``choices`` maps an inference-data name to its ``InferenceData``. The model itself is never
    pruned: one working copy is reset from the dense weights before every setting.
    """

    def __init__(
        self,
        model: nn.Module,
        choices: Mapping[str, InferenceData],
        *,
        normalize: str = "global",
        curve_deltas: Sequence[float] = DELTA_GRID,
        device: str = "cpu",
        threads: int | None = 1,
    ) -> None:
        if not choices:
            raise ValueError("the explorer needs at least one inference-data choice")
        self.device = select_device(device)
        self.model = model.to(self.device).eval()  # scored on the device, never pruned
        self.normalize = normalize
        self.curve_deltas = tuple(check_delta(d) for d in curve_deltas)
        self.threads = threads
        self.dense = {n: m.weight.detach().clone() for n, m in prunable_layers(self.model).items()}
        self.work = copy.deepcopy(self.model).eval()
        self._work_layers = prunable_layers(self.work)
        self.choices = {
            k: InferenceData(
                {n: r.to(self.device) for n, r in v.relevance.items()}, v.x.to(self.device), v.y.to(self.device)
            )
            for k, v in choices.items()
        }
        self._curves: dict[tuple, list[float]] = {}
        self.reset()
        with torch_threads(threads):
            self.dense_accuracy = {name: self.accuracy(name) for name in self.choices}

    @classmethod
    def from_params(cls, params: Mapping, *, shifted: bool = True) -> Session:
        """A session from a notebook's parameters (its ``globals()``): trains (cached) the model the
        common keys describe, and computes (cached) its relevance on the inference data "as
        trained" and, if ``shift_classes`` is given and ``shifted``, "shifted"."""
        cfg = TrainConfig.from_mapping(params)
        get = params.get
        cache_root = resolve(get("cache_root", "cache"))
        data = data_for(cfg)
        model, _ = trained_model(cfg, data, cache_root=cache_root, device=get("device", "cpu"))
        datasets = {"as trained": (data, "as-trained")}
        shift = get("shift_classes")
        if shift and shifted:
            shift = sorted(int(c) for c in shift)
            datasets["shifted"] = (data_for(cfg, shift_classes=shift), f"shift-classes={shift}")
        opts = {k: get(k, d) for k, d in (("composite", "epsilon_plus_flat"), ("aggregate", "abs"))}
        choices = {
            name: inference_data(
                model,
                d,
                f"{model_id(cfg)}/{tag}",
                samples=get("inference_samples"),
                eval_samples=get("eval_samples") or None,
                seed=cfg.seed,
                cache_root=cache_root,
                device=get("device", "cpu"),
                batch_size=get("lrp_batch_size", 256),
                **opts,
            )
            for name, (d, tag) in datasets.items()
        }
        return cls(
            model,
            choices,
            normalize=get("normalize", "global"),
            device=get("device", "cpu"),
            threads=get("explorer_threads", 1) or None,
        )

    @torch.no_grad()
    def reset(self) -> None:
        """Working copy := dense weights, no masks (instead of a deep copy per setting)."""
        for name, module in self._work_layers.items():
            module._buffers.pop(MASK_BUFFER, None)
            module.weight.copy_(self.dense[name])

    @torch.no_grad()
    def accuracy(self, inference: str, batch_size: int = 1024) -> float:
        """Accuracy of the working copy on the test samples of one inference choice."""
        choice = self.choice(inference)
        hits = sum(
            int((self.work(choice.x[i : i + batch_size]).argmax(1) == choice.y[i : i + batch_size]).sum())
            for i in range(0, len(choice.y), batch_size)
        )
        return hits / len(choice.y)

    def choice(self, inference: str) -> InferenceData:
        """The inference-data choice named ``inference``; ``ValueError`` naming the choices otherwise."""
        if inference not in self.choices:
            raise ValueError(
                f"unknown inference data {inference!r}; expected one of {list(self.choices)}, the choices this "
                'session was built with ("shifted" needs shift_classes in the parameters)'
            )
        return self.choices[inference]

    def check_layer(self, layer: str) -> str:
        """``layer`` if it names a prunable weight of the model; ``ValueError`` naming them otherwise."""
        if layer not in self.dense:
            raise ValueError(
                f"unknown layer {layer!r}; expected one of the model's prunable weights {list(self.dense)}"
            )
        return layer

    def prune_and_evaluate(
        self, delta: float, p: float, method: str, scope: str, inference: str
    ) -> tuple[dict[str, torch.Tensor], float]:
        """Masks and pruned accuracy at one setting: score with the cached relevance, prune a
        fresh copy of the dense weights, evaluate on the inference choice's test samples."""
        scores = pruning_scores(
            self.model,
            method=method,
            delta=delta,
            normalize=self.normalize,
            relevance=self.choice(inference).relevance,
        )
        self.reset()
        masks = prune(self.work, scores, p, scope=scope)
        return masks, self.accuracy(inference)

    def curve(self, p: float, scope: str, inference: str) -> list[float]:
        """Figure 4 at one p: FlexRel accuracy at each of ``curve_deltas`` (δ = 0 is magnitude
        pruning, δ = 1 relevance pruning); kept in memory per (inference, scope, p)."""
        key = self._curve_key(p, scope, inference)
        if key not in self._curves:
            with torch_threads(self.threads):
                self._curves[key] = [
                    self.prune_and_evaluate(d, p, "flexrel", scope, inference)[1] for d in self.curve_deltas
                ]
        return self._curves[key]

    def known_curve(self, p: float, scope: str, inference: str) -> list[float] | None:
        """The curve at this p if it has been computed already, else None (nothing is computed)."""
        return self._curves.get(self._curve_key(p, scope, inference))

    def _curve_key(self, p: float, scope: str, inference: str) -> tuple:
        return (inference, scope, round(p, 6), self.normalize)

    def state_at(
        self, *, delta: float, p: float, method: str, scope: str, inference: str, layer: str, with_curve: bool = True
    ) -> tuple[dict, dict[str, torch.Tensor]]:
        """Every number the explorer shows at one setting, and the masks: ``(state, masks)``.
        ``with_curve=False`` leaves ``state["curve"]`` None when the curve at this p is not known yet
        (``curve`` computes it: one evaluation per δ of ``curve_deltas``)."""
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {list(METHODS)}")
        self.choice(inference)
        self.check_layer(layer)
        with torch_threads(self.threads):
            masks, accuracy = self.prune_and_evaluate(delta, p, method, scope, inference)
        kept = {n: int(m.sum()) for n, m in masks.items()}
        total = sum(m.numel() for m in masks.values())
        state = {
            "delta": delta,
            "effective_delta": method_delta(method, delta),
            "pruning_factor": p,
            "method": method,
            "scope": scope,
            "inference": inference,
            "layer": layer,
            "dense_accuracy": self.dense_accuracy[inference],
            "pruned_accuracy": accuracy,
            "sparsity": 1.0 - sum(kept.values()) / total,
            "layer_sparsity": {n: 1.0 - kept[n] / masks[n].numel() for n in masks},
            "kept": sum(kept.values()),
            "total": total,
            "mask_checksum": mask_checksum(masks),
            "layer_mask_checksum": mask_checksum({layer: masks[layer]}),
            "curve_deltas": list(self.curve_deltas),
            "curve": self.curve(p, scope, inference) if with_curve else self.known_curve(p, scope, inference),
        }
        return state, masks


def inference_data(
    model: nn.Module,
    data: DataSplits,
    key: str,
    *,
    samples: int | None = None,
    eval_samples: int | None = None,
    seed: int = 0,
    composite: str = "epsilon_plus_flat",
    aggregate: str = "abs",
    cache_root: str | Path = REPO_ROOT / "cache",
    device: str = "cpu",
    batch_size: int | None = 256,
) -> InferenceData:
    """Relevance of ``model`` on its seeded, stratified sample of ``data.inference`` (cached under
    ``key``; ``pipeline.relevance_for``) and the test samples -- a seeded, stratified random subset
    of ``eval_samples`` of them (``data.draw``), if given -- for one inference choice."""
    relevance = relevance_for(
        model, data, key, samples=samples, seed=seed, composite=composite, aggregate=aggregate,
        cache_root=cache_root, device=device, batch_size=batch_size,
    )  # fmt: skip
    x, y = tensors(draw(data.test, eval_samples, seed))
    return InferenceData(relevance, x, y)
