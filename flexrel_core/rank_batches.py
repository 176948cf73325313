"""One rank's share of every shuffled mini-batch of one process's training run.

``data.Batches(ds, B, shuffle=True, generator=g)`` in one process draws each epoch's order from
``g`` (a ``RandomSampler``; through a ``DataLoader`` for data read from files, whose iterator first
draws one int64 from ``g`` as its workers' base seed) and cuts it into batches of ``B``.
``RankBatches`` draws the same order from the same generator, cuts the same global batches and
yields only this rank's block of each (``distributed.batch_part``) with the factor its summed loss
is scaled by, so that n ranks under DDP take the optimiser steps one process takes.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import BatchSampler, Dataset, RandomSampler

from .data import _stacked, in_memory, loader
from .distributed import batch_part


class RankBatches:
    """``(x, y, scale)`` of rank ``rank`` of ``world`` for every global batch of ``batch_size`` of an
    epoch (reshuffled each time from ``generator``, exactly as ``data.Batches`` with ``shuffle``)."""

    def __init__(self, ds: Dataset, batch_size: int, *, generator: torch.Generator, rank: int, world: int) -> None:
        self.ds, self.batch_size, self.generator = ds, batch_size, generator
        self.rank, self.world = rank, world
        self.stacked = _stacked(ds) if in_memory(ds) else None

    def __len__(self) -> int:
        return -(-len(self.ds) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
        base_seed = None
        if self.stacked is None:  # as a DataLoader's iterator does before it reads its sampler
            base_seed = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator).item())
        order = list(RandomSampler(self.ds, generator=self.generator))
        parts = [batch_part(b, self.rank, self.world) for b in BatchSampler(order, self.batch_size, drop_last=False)]
        if self.stacked is not None:
            (x, y), index = self.stacked
            for rows, scale in parts:
                picked = index[torch.as_tensor(rows)]
                yield x[picked], y[picked], scale
            return
        # the loader draws its workers' seed from a generator of its own: the global RNG stays as one process leaves it
        own = torch.Generator().manual_seed(base_seed)
        batches = loader(self.ds, None, batch_sampler=[rows for rows, _ in parts], generator=own)
        for (x, y), (_, scale) in zip(batches, parts, strict=True):
            yield x, y, scale
