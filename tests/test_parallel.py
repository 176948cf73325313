"""Worker processes for independent pieces of a sweep: same results as one process, errors that name
the task, and a worker count that can be set and is refused when it makes no sense."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from flexrel_core import parallel
from flexrel_core.paper import fig2
from flexrel_core.training import stage_threads, torch_threads


def test_results_come_back_in_task_order_from_worker_processes():
    tasks = [9, 4, 1, 16, 25]
    assert parallel.run_tasks(math.isqrt, tasks, workers=2) == [3, 2, 1, 4, 5]
    assert parallel.run_tasks(math.isqrt, tasks, workers=1) == [3, 2, 1, 4, 5]
    assert parallel.run_tasks(math.isqrt, [], workers=2) == []


def test_a_failing_task_is_named():
    with pytest.raises(RuntimeError, match=r"isqrt failed on task -1"):
        parallel.run_tasks(math.isqrt, [4, -1, 9], workers=2)
    with pytest.raises(ValueError):  # in this process the error is the task's own
        parallel.run_tasks(math.isqrt, [4, -1], workers=1)


def test_the_worker_count(monkeypatch):
    monkeypatch.setenv(parallel.ENV, "3")
    assert parallel.cpu_workers(10) == 3
    assert parallel.cpu_workers(2) == 2  # never more workers than tasks
    assert parallel.cpu_workers(10, device="cuda") == 1  # a GPU is kept busy by one process
    monkeypatch.setenv(parallel.ENV, "0")
    with pytest.raises(ValueError, match="FLEXREL_WORKERS must be a whole number >= 1"):
        parallel.cpu_workers(10)
    monkeypatch.delenv(parallel.ENV)
    assert 1 <= parallel.cpu_workers(1_000) <= 1_000


def test_figure_2_in_worker_processes_equals_figure_2_in_one(sweep, tmp_path):
    """The session's sweep ran in as many workers as cores; rerun in this process with two torch
    threads from an empty cache, every number is the same: each stage pins itself to one thread."""
    with torch_threads(2):
        alone = fig2.compute(
            sweep.base, sweep.pcfg, pruning_factors=sweep.grid, seeds=[0, 1], delta=0.5, shift=sweep.shift,
            cache_root=tmp_path, device="cpu", workers=1,
        )  # fmt: skip
        assert torch.get_num_threads() == 2  # and gives the threads back
    if parallel.cpu_workers(6) == 1:
        pytest.skip("one core: the session's sweep ran in this process too")
    pd.testing.assert_frame_equal(alone, sweep.df)


def test_a_stage_on_a_cpu_runs_on_one_thread():
    with torch_threads(2), stage_threads("cpu"):
        assert torch.get_num_threads() == 1


def test_workers_run_one_torch_thread_each():
    assert parallel.run_tasks(_threads, [0, 1], workers=2) == [1, 1]
    with torch_threads(2):
        assert parallel.run_tasks(_threads, [0], workers=2) == [2]  # one task: this process, as it is


def _threads(_task: int) -> int:
    return torch.get_num_threads()


def test_the_standardised_data_do_not_depend_on_the_thread_count():
    """On two threads, seed 1's training mean of the MNIST subset differed from one thread's in the
    last bit, and a model trained in a worker process drifted from the same model trained here."""
    from flexrel_core.data import load_dataset, tensors

    splits = {}
    for threads in (1, 2):
        with torch_threads(threads):
            splits[threads] = tensors(load_dataset("mnist5k", seed=1).train)[0]
    assert torch.equal(splits[1], splits[2])


_INTERRUPTED = """
import math, os, signal, sys, time
from flexrel_core import parallel
assert parallel.run_tasks(math.isqrt, [1, 4], workers=2) == [1, 2]  # two idle workers from here on
start = time.perf_counter()
try:
    if sys.argv[1] == "busy":  # the interrupt comes while both workers sleep in a task
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        signal.signal(signal.SIGALRM, lambda *_: os.killpg(os.getpgid(0), signal.SIGINT))
        parallel.run_tasks(time.sleep, [60, 60], workers=2)
    else:  # idle workers, as when a kernel shuts down after a sweep
        os.killpg(os.getpgid(0), signal.SIGINT)
        time.sleep(5)
except KeyboardInterrupt:
    print(f"interrupted after {time.perf_counter() - start:.1f} s")
"""


@pytest.mark.parametrize("when", ["idle", "busy"])
def test_an_interrupt_of_the_process_group_ends_workers_without_tracebacks(when):
    """A kernel's interrupt or shutdown signals its whole process group: the workers leave quietly (no
    ``KeyboardInterrupt`` traceback each), and a sweep in progress stops at once rather than at its end."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED, when], capture_output=True, text=True, timeout=50, start_new_session=True
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr and "KeyboardInterrupt" not in run.stderr, run.stderr
    assert float(run.stdout.split()[-2]) < 10  # not the tasks' 60 s
