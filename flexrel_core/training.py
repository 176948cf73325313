"""Training, fine-tuning with fixed masks, and evaluation, with explicit seeds and devices.

Fine-tuning a pruned model (``docs/method.md``, "Schedules") keeps its masks fixed: gradients of pruned weights
are zeroed before every optimiser step and the masks are re-applied after it, so pruned weights
stay exactly zero whatever the optimiser does with its state (momentum, Adam moments, weight decay).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from . import distributed
from .data import Batches
from .masks import MASK_BUFFER, apply_masks, mask_gradients
from .progress import progress
from .rank_batches import RankBatches

# Adam and AdamW update every parameter in one fused kernel (CPU and CUDA): the same algorithm, fewer passes.
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda params, lr, weight_decay: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True),
    "adamw": lambda params, lr, weight_decay: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True),
    "sgd": lambda params, lr, weight_decay: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay),
}


def select_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when present, else CPU; anything else as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (``None``: unchanged), then restore the count.

    Tiny models (digits, the explorer's evaluations, Fig. 3's nodes) run as fast on one thread on an
    idle machine and stay fast on a busy one, where two spinning OpenMP threads can be 10x slower.
    """
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def stage_threads(device: str | torch.device) -> Iterator[None]:
    """One torch thread while a cached stage is computed on a CPU (none changed on a GPU).

    Summation order, and so every trained weight, depends on the number of threads; pinned to one,
    a stage gives the same numbers on any number of cores, in any worker process or notebook that
    computes it first. A sweep gets its parallelism from worker processes instead (``parallel``)."""
    if select_device(device).type == "cpu":
        with torch_threads(1):
            yield
    else:
        yield


@contextmanager
def _out_of_memory_hint(what: str, batch_size: int, device: torch.device) -> Iterator[None]:
    """Turn an out-of-memory error into one that says so and names the fix (a smaller batch size)."""
    try:
        yield
    except torch.OutOfMemoryError as err:
        raise torch.OutOfMemoryError(
            f"out of memory on {device} during {what} with batch_size={batch_size}: use a smaller batch_size ({err})"
        ) from err


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for data shuffling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def train(
    model: nn.Module,
    dataset: Dataset,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    optimizer: str = "adam",
    seed: int = 0,
    device: str | torch.device = "auto",
    desc: str = "train",
    show_progress: bool = True,
    max_steps: int | None = None,
    after_epoch: Callable[[int, nn.Module], None] | None = None,
    dtype: torch.dtype | None = None,
) -> list[float]:
    """Train ``model`` in place with cross-entropy; returns the mean loss of each epoch.

    ``max_steps`` stops after that many optimiser steps (e.g. a fixed number of local steps per
    round of federated learning); ``epochs`` is then an upper bound. Pruned layers (FlexRel masks
    on the model) keep their pruned weights exactly zero throughout. ``after_epoch(e, model)`` is
    called after each epoch e = 1, 2, ...: the model then holds exactly what a run of e epochs
    returns (same seed, same batches, same optimiser steps), so one run of E epochs gives every
    shorter budget too (with ``dtype``, in that precision: rounded to the model's own, it is what a
    run of e epochs returns).

    ``dtype`` (e.g. ``torch.float64``): train in that precision -- the model's floating-point
    parameters and buffers and every batch are converted to it -- and return the model in its own
    precision again, its weights rounded once at the end. Training amplifies rounding differences:
    in float32, the last bits in which two CPUs' kernels sum differently grow within a few epochs
    into a different model (as different as another seed would give); in float64 they start ~10⁹
    times smaller and stay far below float32's resolution (``make bench`` measures both).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {sorted(OPTIMIZERS)}")
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 or None, got {max_steps}")
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype such as torch.float64, got {dtype}")
    dev = select_device(device)
    generator = seed_everything(seed)
    layout = _layout(model, dev)
    own = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    model.to(dev, dtype=dtype, memory_format=layout).train()
    opt = OPTIMIZERS[optimizer](model.parameters(), lr=lr, weight_decay=weight_decay)
    sharded = distributed.active()
    if sharded:  # DDP on every rank's block of the same global batches (``distributed``, ``rank_batches``)
        distributed.check_same(_masks(model), "the masks fine-tuning holds fixed")  # DDP gives rank 0's weights to all
        net = distributed.wrap_ddp(model)
        batches = RankBatches(
            dataset, batch_size, generator=generator, rank=distributed.rank(), world=distributed.world()
        )
    else:
        net, batches = model, Batches(dataset, batch_size, shuffle=True, generator=generator)
    losses, steps = [], 0
    for epoch in progress(range(1, epochs + 1), desc=desc, leave=False, disable=not show_progress):
        total, count = 0.0, 0
        for batch in batches:
            if max_steps is not None and steps >= max_steps:
                break
            steps += 1
            x, y, scale = batch if sharded else (*batch, None)
            x, y = x.to(dev, dtype=dtype, memory_format=layout), y.to(dev)
            opt.zero_grad(set_to_none=True)
            with _out_of_memory_hint("training", batch_size, dev):
                if scale is None:
                    loss = nn.functional.cross_entropy(net(x), y)
                    loss.backward()
                else:  # the whole batch's mean loss, once DDP has averaged the ranks' gradients
                    loss = nn.functional.cross_entropy(net(x), y, reduction="sum")
                    (loss * scale).backward()
            mask_gradients(model)
            opt.step()
            apply_masks(model)
            if scale is None:
                total, count = total + loss.item() * len(y), count + len(y)
            elif scale:
                total, count = total + loss.item(), count + len(y)
        if sharded:
            sums = distributed.all_reduce_sum({"total": torch.tensor(total), "count": torch.tensor(count)})
            total, count = float(sums["total"]), int(sums["count"])
        if count:
            losses.append(total / count)
        if after_epoch is not None:
            after_epoch(epoch, model)
    del net  # a DDP wrapper's gradient hooks go with it
    model.to(dtype=own if dtype is not None else None, memory_format=torch.contiguous_format).eval()
    return losses


def _masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every FlexRel mask of ``model``, by name."""
    return {n: b for n, b in model.named_buffers() if n.rsplit(".", 1)[-1] == MASK_BUFFER}


def _layout(model: nn.Module, device: torch.device) -> torch.memory_format:
    """The memory layout a convolutional model computes in on a CPU: channels-last, where oneDNN's
    convolutions and pooling run faster (``make bench-sweep`` measures it); contiguous otherwise."""
    if device.type == "cpu" and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return torch.channels_last
    return torch.contiguous_format


@torch.no_grad()
def predict(
    model: nn.Module, dataset: Dataset, *, batch_size: int = 512, device: str | torch.device = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and true labels of every sample of ``dataset``."""
    dev = select_device(device)
    was_training = model.training
    model.to(dev).eval()
    net = _inference_copy(model, dev)
    preds, labels = [], []
    for x, y in Batches(dataset, batch_size):
        with _out_of_memory_hint("evaluation", batch_size, dev):
            preds.append(net(x.to(dev)).argmax(1).cpu())
        labels.append(y)
    model.train(was_training)
    return torch.cat(preds), torch.cat(labels)


def _inference_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """The network evaluation runs: on a CPU, a convolutional model's copy with its weights in
    channels-last layout (oneDNN's convolutions and pooling run ~2x faster on it; same predictions,
    ``tests/test_training.py``); ``model`` itself otherwise. The caller's model is never converted."""
    layout = _layout(model, device)
    if layout == torch.contiguous_format:
        return model
    try:
        net = copy.deepcopy(model)
    except (TypeError, RuntimeError):  # a user's model holding something that cannot be copied
        return model
    return net.to(memory_format=layout)


def evaluate(
    model: nn.Module, dataset: Dataset, *, batch_size: int = 512, device: str | torch.device = "auto"
) -> float:
    """Top-1 accuracy of ``model`` on ``dataset``, in [0, 1] (under a process group: from the counts
    of ``correct_count``, as a float32 quotient like one process's mean of the 0/1 hits)."""
    if len(dataset) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    if distributed.active():
        correct, total = correct_count(model, dataset, batch_size=batch_size, device=device)
        return float(torch.tensor(float(correct), dtype=torch.float32) / total)
    preds, labels = predict(model, dataset, batch_size=batch_size, device=device)
    return float((preds == labels).float().mean())


def correct_count(
    model: nn.Module, dataset: Dataset, *, batch_size: int = 512, device: str | torch.device = "auto"
) -> tuple[int, int]:
    """(correct top-1 predictions, samples) of ``model`` on ``dataset``. Under a process group each rank
    predicts its block of the samples (``distributed.shard``) and one all-reduce sums the two counts."""
    part = distributed.shard(dataset, distributed.rank(), distributed.world()) if distributed.active() else dataset
    correct = 0
    if len(part):
        preds, labels = predict(model, part, batch_size=batch_size, device=device)
        correct = int((preds == labels).sum())
    sums = distributed.all_reduce_sum({"correct": torch.tensor(correct), "total": torch.tensor(len(part))})
    return int(sums["correct"]), int(sums["total"])
