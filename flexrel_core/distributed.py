"""The workbook's heavy stages on several processes (``torch.distributed``, launched by torchrun).

FlexRel's parameter relevance is a sum over inference samples, and an accuracy is a count of correct
predictions over a split: both shard exactly. Each rank computes its part (``shard``: one contiguous
block of the indices per rank, every index in exactly one block) and one all-reduce sums the parts
(``all_reduce_sum``). Fine-tuning runs under ``DistributedDataParallel``: every rank takes its block of
the same global mini-batch (``batch_part``), so the batches, their order and the averaged gradients are
one process's, up to the order in which floating-point sums are taken.

Nothing here does anything unless a process group of more than one process is initialised
(``active``): one process computes exactly what it computed without this module. ``launch`` starts
the group from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...), with a timeout
on every collective (``FLEXREL_DIST_TIMEOUT_S``, default 1800 s), and turns an error on any rank into
that rank's traceback on stderr and a non-zero exit, which torchrun answers by stopping every other
rank: a failed rank ends the run, it never leaves the others waiting.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Subset

TIMEOUT_ENV = "FLEXREL_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0


def active() -> bool:
    """Whether a process group of more than one process is initialised (the stages then shard)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s block of ``n`` indices: ``rank * n // world`` to
    ``(rank + 1) * n // world``; the blocks of ranks 0..world-1 cover 0..n-1, each index exactly once."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
    return rank * n // world, (rank + 1) * n // world


def shard(dataset: Dataset, rank: int, world: int) -> Dataset:
    """Rank ``rank``'s contiguous block of ``dataset`` (``shard_bounds``), as a ``Subset``."""
    start, stop = shard_bounds(len(dataset), rank, world)
    return Subset(dataset, range(start, stop))


def batch_part(batch: Sequence[int], rank: int, world: int) -> tuple[list[int], float]:
    """Rank ``rank``'s block of one global mini-batch and the factor its summed loss is scaled by.

    The factor is ``world / len(batch)``: DDP averages the ranks' gradients (divides their sum by
    ``world``), so the averaged gradient is that of the whole batch's mean loss, whatever the block
    sizes. A rank whose block is empty (a last batch smaller than ``world``) gets the batch's first
    index with factor 0: it still takes part in the gradient all-reduce and adds nothing to it."""
    start, stop = shard_bounds(len(batch), rank, world)
    if start == stop:
        return [int(batch[0])], 0.0
    return [int(i) for i in batch[start:stop]], world / len(batch)


def _reduce_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The sum over ranks of every tensor of ``tensors`` (same keys and shapes on every rank), each
    back in its own dtype and device. Floating-point tensors are summed in float64, integers in
    int64, each kind in one all-reduce of one flat buffer. Without a process group: ``tensors``."""
    if not active():
        return dict(tensors)
    dev = _reduce_device()
    out: dict[str, torch.Tensor] = {}
    for wire, keys in (
        (torch.float64, [k for k, t in tensors.items() if t.is_floating_point()]),
        (torch.int64, [k for k, t in tensors.items() if not t.is_floating_point()]),
    ):
        if not keys:
            continue
        flat = torch.cat([tensors[k].detach().reshape(-1).to(dev, wire) for k in keys])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for k in keys:
            t = tensors[k]
            out[k] = flat[offset : offset + t.numel()].reshape(t.shape).to(t.device, t.dtype)
            offset += t.numel()
    return {k: out[k] for k in tensors}


def barrier() -> None:
    """Wait until every rank gets here (nothing without a process group)."""
    if active():
        dist.barrier()


def from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object; ``value`` itself without a process group)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def rank0_writes() -> Iterator[bool]:
    """Yields whether this process writes (rank 0, or the only process); after the block every rank
    waits at a barrier, so none reads a file before rank 0 has moved it into place. An error inside
    the block skips the barrier: the rank fails (``launch``) and torchrun stops the others."""
    yield rank() == 0
    barrier()


def digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``tensors``."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_same(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise ``RuntimeError`` naming the ranks whose ``tensors`` differ from rank 0's (``digest``)."""
    if not active():
        return
    digests: list[Any] = [None] * world()
    dist.all_gather_object(digests, digest(tensors))
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise RuntimeError(f"{what} differ between ranks: rank(s) {differ} hold other values than rank 0")


def wrap_ddp(model: nn.Module) -> nn.Module:
    """``model`` under ``DistributedDataParallel`` on its device; DDP gives every rank rank 0's parameters
    and buffers once, at the start. Buffers are not synchronised at each forward: the FlexRel masks, the
    only buffers that matter while fine-tuning, are checked equal on every rank first (``check_same``)
    and never change (BatchNorm statistics stay per rank)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    dev = next(model.parameters()).device
    ids = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else None
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:  # torch >= 2.14
        return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def _timeout() -> datetime.timedelta:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    return datetime.timedelta(seconds=seconds)


def launch(work: Callable[[], Any]) -> int:
    """Run ``work()`` on every rank of torchrun's process group; returns the exit status (0: done).

    Without torchrun's environment (no ``WORLD_SIZE``, or 1) ``work`` runs in this process as it
    would anywhere. Otherwise the group is initialised (NCCL on CUDA, each rank on the GPU of its
    ``LOCAL_RANK``; gloo on CPUs) with the ``TIMEOUT_ENV`` timeout. An error on a rank is printed
    to stderr with its rank and traceback, and the rank exits at once with status 1 (``os._exit``:
    no collective is waited for on the way out); torchrun then stops the other ranks."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        work()
        return 0
    try:
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=_timeout())
        work()
        barrier()
        dist.destroy_process_group()
    except BaseException as err:  # noqa: BLE001 -- every error ends every rank (module docstring)
        where = f"rank {os.environ.get('RANK', '?')} of {os.environ.get('WORLD_SIZE', '?')}"
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        sys.stderr.write(f"{where} failed:\n{text}")
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(1)
    return 0
