"""Independent pieces of a sweep (seeds, settings) run side by side in worker processes.

On a CPU, the workbook's small models use several cores poorly from one process: two OpenMP threads
fine-tune the 28 px default model only ~1.4x faster than one, so a sweep run one piece at a time
leaves much of the machine idle. ``run_tasks`` runs independent pieces in worker processes of one
torch thread each instead, as many as there are cores (``make bench`` measures the two side by side).

Each worker is a fresh interpreter (``spawn``: forking a process whose OpenMP runtime has started
can hang), kept for the life of the calling process so that later sweeps do not pay its start-up
again. Tasks and results travel pickled; whatever a task computes on the way is written to the
shared cache atomically (``workbook.cache``), so the caller and later notebooks read it back. A task
gives the same numbers whichever worker runs it: every stage seeds itself from its configuration.

Workers ignore SIGINT from their start (they are spawned while the caller ignores it, and inherit that):
an interrupt (Ctrl-C, a kernel's interrupt or shutdown, which signal the whole process group) is the
calling process's to handle, and idle or starting workers would otherwise each print a
``KeyboardInterrupt`` traceback on the way out. An interrupted sweep terminates its workers (their
running tasks are abandoned; what they had cached stays valid, being written atomically); at exit the
pools are shut down cleanly.

``FLEXREL_WORKERS`` overrides the number of workers (``1``: everything in the calling process).
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from . import distributed
from .progress import progress

ENV = "FLEXREL_WORKERS"
_POOLS: dict[tuple[int, int], cf.ProcessPoolExecutor] = {}


def cpu_workers(tasks: int, device: str | torch.device = "cpu") -> int:
    """How many worker processes a sweep of ``tasks`` independent pieces gets: ``FLEXREL_WORKERS``
    if set, else one per CPU core; never more than ``tasks``; 1 (the calling process) on a GPU,
    which one process keeps busy, and in every rank of a process group (``distributed``), whose
    stages shard over the ranks instead."""
    if distributed.active():
        return 1
    if str(device).startswith("cuda") or (str(device) == "auto" and torch.cuda.is_available()):
        return 1
    wanted = os.environ.get(ENV, "").strip()
    if wanted:
        if not wanted.isdigit() or int(wanted) < 1:
            raise ValueError(f"{ENV} must be a whole number >= 1 (1: no worker processes), got {wanted!r}")
        n = int(wanted)
    else:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(n, tasks))


def _start_worker(threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller handles interrupts (module docstring)
    torch.set_num_threads(threads)


def _pool(workers: int, threads: int) -> cf.ProcessPoolExecutor:
    key = (workers, threads)
    if key not in _POOLS:
        pool = cf.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker, initargs=(threads,)
        )
        # ProcessPoolExecutor spawns a worker per submitted task until it has ``workers``: spawn them all here,
        # once, while SIGINT is ignored, so that later sweeps never spawn (and never ignore an interrupt).
        with _sigint_ignored():
            for future in [pool.submit(os.getpid) for _ in range(workers)]:
                future.result()
        _POOLS[key] = pool
    return _POOLS[key]


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored in this process for the block, so that the workers it spawns inherit that (Python
    installs its KeyboardInterrupt handler only where SIGINT is not ignored); outside the main thread,
    where signals cannot be set, the workers' initializer ignores it once they run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _terminate(key: tuple[int, int]) -> None:
    """Stop the pool ``key`` at once: its workers are terminated, its pending tasks dropped."""
    pool = _POOLS.pop(key, None)
    if pool is None:
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):  # no public API before 3.14
        process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


@atexit.register
def shutdown() -> None:
    """Stop every worker process this process started (at exit, or to free their memory)."""
    for pool in _POOLS.values():
        pool.shutdown(wait=True, cancel_futures=True)
    _POOLS.clear()


def run_tasks(
    fn: Callable[[Any], Any],
    tasks: Sequence[Any],
    *,
    workers: int | None = None,
    device: str | torch.device = "cpu",
    threads: int = 1,
    desc: str | None = None,
    units: Callable[[Any], int] | None = None,
) -> list[Any]:
    """``[fn(task) for task in tasks]``, computed by ``workers`` processes of ``threads`` torch
    threads each (``None``: ``cpu_workers``); with one worker, in this process as it is.

    ``fn`` must be a module-level function and each task picklable. ``desc`` shows a progress bar,
    advanced by ``units(task)`` (default 1) as each task finishes. A task's error is raised here,
    naming the task; the tasks not yet started are cancelled."""
    tasks = list(tasks)
    n = cpu_workers(len(tasks), device) if workers is None else max(1, min(int(workers), len(tasks) or 1))
    size = units or (lambda _task: 1)
    bar = progress(total=sum(size(t) for t in tasks), desc=desc, disable=desc is None)
    try:
        if n == 1:
            results = []
            for task in tasks:
                results.append(fn(task))
                bar.update(size(task))
            return results
        pool = _pool(n, threads)
        futures = {pool.submit(fn, task): i for i, task in enumerate(tasks)}
        results: list[Any] = [None] * len(tasks)
        try:
            for future in cf.as_completed(futures):
                i = futures[future]
                try:
                    results[i] = future.result()
                except cf.process.BrokenProcessPool:
                    _POOLS.pop((n, threads), None)
                    raise
                except Exception as err:
                    raise RuntimeError(f"{getattr(fn, '__name__', fn)} failed on task {tasks[i]!r}: {err}") from err
                bar.update(size(tasks[i]))
        except KeyboardInterrupt:
            _terminate((n, threads))
            raise
        finally:
            for future in futures:
                future.cancel()
        return results
    finally:
        bar.close()
