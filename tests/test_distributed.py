"""Sharded stages (``flexrel_core.distributed``): the helpers, one rank's batches, and 2 gloo ranks under
torchrun against one process on a synthetic image folder (relevance, counts, fine-tuned weights, cache)."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from nets import write_image_folder
from torch.utils.data import TensorDataset

from flexrel_core import distributed
from flexrel_core.data import Batches, load_dataset
from flexrel_core.rank_batches import RankBatches
from flexrel_core.training import torch_threads
from flexrel_core.workbook.paths import REPO_ROOT

JOB = Path(__file__).with_name("distributed_job.py")


@pytest.mark.parametrize("n", [0, 1, 5, 7, 64])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_cover_every_index_once(n, world):
    blocks = [range(*distributed.shard_bounds(n, r, world)) for r in range(world)]
    assert [i for b in blocks for i in b] == list(range(n))
    assert max(len(b) for b in blocks) - min(len(b) for b in blocks) <= 1


def test_batch_parts_rebuild_the_batch_and_its_mean():
    batch = [9, 3, 4, 1, 7]
    for world in (1, 2, 3, 8):
        parts = [distributed.batch_part(batch, r, world) for r in range(world)]
        real = [rows for rows, scale in parts if scale]
        assert [i for rows in real for i in rows] == batch
        # DDP divides the sum of the ranks' gradients by world: the scales make that the batch mean
        assert sum(len(rows) * scale for rows, scale in parts) / world == pytest.approx(1.0)
    assert distributed.batch_part([5], 0, 2) == ([5], 0.0) and distributed.batch_part([5], 1, 2) == ([5], 2.0)


def test_without_a_process_group_nothing_changes():
    t = {"a": torch.arange(3.0), "n": torch.tensor(4)}
    assert not distributed.active() and distributed.rank() == 0 and distributed.world() == 1
    assert distributed.all_reduce_sum(t) == t and distributed.from_rank0("x") == "x"
    with distributed.rank0_writes() as writer:
        assert writer


def _images(root: Path) -> Path:
    root.mkdir()
    return write_image_folder(root, classes=4, per_class=12, size=(32, 32))


@pytest.mark.parametrize("kind", ["tensors", "files"])
def test_rank_batches_are_one_process_batches(kind, tmp_path):
    if kind == "tensors":
        ds = TensorDataset(torch.arange(23.0).reshape(23, 1), torch.arange(23))
    else:
        ds = load_dataset("imagefolder", _images(tmp_path / "images"), image_size=32, seed=0).train
    batches = Batches(ds, 8, shuffle=True, generator=torch.Generator().manual_seed(3))
    one = [y for _ in range(2) for _, y in batches]  # two epochs
    gens = [torch.Generator().manual_seed(3) for _ in range(2)]
    ranks = [RankBatches(ds, 8, generator=gens[r], rank=r, world=2) for r in range(2)]
    two = [[y for _ in range(2) for _, y, _ in part] for part in ranks]
    assert len(one) == len(two[0]) == len(two[1])
    for y, y0, y1 in zip(one, *two, strict=True):
        assert torch.equal(y, torch.cat([y0, y1]))


def _profile(root: Path, name: str, images: Path) -> None:
    folder = root / "profiles" / name
    folder.mkdir(parents=True)
    (folder / "common.yaml").write_text(
        f"dataset: imagefolder\ndata_root: {images}\nimage_size: 32\nmodel: digits_cnn\nepochs: 1\n"
        f"batch_size: 8\nseeds: [0]\ndevice: cpu\ncache_root: {root / name / 'cache'}\ninference_samples: null\n"
        "lrp_batch_size: 4\nfine_tune_epochs: 1\nfine_tune_lr: 1.0e-3\n"
    )
    (folder / "fig2.yaml").write_text(
        "methods: [magnitude, flexrel]\npruning_factors: [0.0, 0.5]\nshift_classes: null\n"
    )


def _run(args: list[str], out: Path, **env) -> subprocess.CompletedProcess:
    out.mkdir(parents=True, exist_ok=True)
    environ = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "OMP_NUM_THREADS": "1",
        "FLEXREL_PROGRESS": "off",
        "FLEXREL_WORKERS": "1",
        **env,
    }
    return subprocess.run(args, env=environ, capture_output=True, text=True, timeout=240)


def _torchrun(nproc: int) -> list[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--nnodes=1",
            "--master-addr=127.0.0.1", f"--master-port={port}"]  # fmt: skip


def _job():
    """The job module itself (``JOB``), to run one process's computation in this process."""
    spec = importlib.util.spec_from_file_location("distributed_job", JOB)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cache(root: Path) -> dict[str, object]:
    return {str(p.relative_to(root)): torch.load(p, weights_only=True) for p in sorted(root.rglob("*.pt"))}


@pytest.mark.slow
def test_two_ranks_compute_what_one_process_computes(tmp_path, monkeypatch):
    images = _images(tmp_path / "images")
    for name in ("one", "two"):
        _profile(tmp_path, name, images)
    monkeypatch.setenv("FLEXREL_WORKERS", "1")  # one process, no worker processes: the baseline, run here
    monkeypatch.setenv("FLEXREL_PROGRESS", "off")
    (tmp_path / "one").mkdir()
    with torch_threads(1):  # as each rank runs
        _job().work(tmp_path, "one", tmp_path / "one")
    double = _run([*_torchrun(2), str(JOB), str(tmp_path), "two", str(tmp_path / "two")], tmp_path / "two")
    assert double.returncode == 0, double.stderr
    a, b = (torch.load(tmp_path / n / "result.pt", weights_only=True) for n in ("one", "two"))
    assert a["counts"] == b["counts"]  # exactly: integer counts summed over the ranks' blocks
    assert a["classes"] > 1  # the probe's counts are no single class's share of a split
    rel = max(float((a["relevance"][k] - b["relevance"][k]).abs().max()) for k in a["relevance"])
    scale = max(float(v.abs().max()) for v in a["relevance"].values())
    assert rel <= 1e-5 * scale
    weights = max(float((a["state"][k].float() - b["state"][k].float()).abs().max()) for k in a["state"])
    assert weights <= 1e-5  # same batches and steps; only the order of float sums differs
    assert a["losses"] == pytest.approx(b["losses"], rel=1e-5)
    for k in a["state"]:  # the masks are held fixed on both: pruned weights exactly zero in both
        if k.endswith("flexrel_mask"):
            assert torch.equal(a["state"][k], b["state"][k])
    one, two = _cache(tmp_path / "one" / "cache"), _cache(tmp_path / "two" / "cache")
    assert one.keys() == two.keys()  # the same cache keys: the notebooks find what torchrun computed
    flips = 0.0
    for key, value in one.items():
        if key.endswith("accuracy.pt"):  # the dense model's, trained under DDP in float64
            assert value == two[key], key
        if key.endswith("point.pt"):
            for schedule, got in value.items():
                assert got == pytest.approx(two[key][schedule], abs=1 / 6), (key, schedule)  # at most one image flips
                flips = max(flips, *(abs(got[k] - two[key][schedule][k]) for k in got))
    print(f"\nmax |relevance difference| {rel:.3g} (largest value {scale:.3g}); max |weight difference| {weights:.3g}")
    print(f"counts {a['counts']} ({a['classes']} classes predicted); max |point accuracy difference| {flips:.3g}")


def test_a_failing_rank_stops_every_rank_with_its_error(tmp_path):
    run = _run([*_torchrun(2), str(JOB), str(tmp_path), "none", str(tmp_path)], tmp_path, FLEXREL_TEST_FAIL_RANK="1")
    ended = time.time()
    assert run.returncode != 0
    assert "rank 1 broke on purpose" in run.stderr and "rank 1 of 2 failed" in run.stderr
    raised = float(run.stderr.split("raised at ")[1].split()[0])
    assert ended - raised < 15  # rank 0, waiting at a barrier, is stopped too: no hang
