"""Training and fine-tuning: seeded, accurate on digits, and pruned weights stay exactly zero
whatever the optimiser does with its state."""

from __future__ import annotations

import copy

import pytest
import torch
from nets import small_cnn
from torch import nn

from flexrel_core import prunable_layers, prune, pruning_scores
from flexrel_core.data import load_dataset
from flexrel_core.masks import apply_masks, mask_gradients
from flexrel_core.models import build_model
from flexrel_core.training import evaluate, select_device, train


def test_training_reaches_high_accuracy_on_digits_and_is_seeded():
    d = load_dataset("digits")
    accs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("digits_cnn")
        train(model, d.train, epochs=12, lr=2e-3, seed=0, device="cpu")
        accs.append(evaluate(model, d.test, device="cpu"))
    assert accs[0] == accs[1]
    assert accs[0] > 0.9
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_masked_weights_stay_zero_through_fine_tuning(optimizer):
    model = small_cnn()
    data = torch.utils.data.TensorDataset(torch.randn(64, 1, 6, 6), torch.randint(0, 5, (64,)))
    train(model, data, epochs=1, optimizer=optimizer, weight_decay=0.1, lr=0.05, device="cpu")
    masks = prune(model, pruning_scores(model, method="magnitude"), 0.7)
    kept_before = {n: m.weight.detach().clone() for n, m in prunable_layers(model).items()}
    train(model, data, epochs=3, optimizer=optimizer, weight_decay=0.1, lr=0.05, device="cpu")
    for n, m in prunable_layers(model).items():
        assert (m.weight[~masks[n]] == 0).all()
        assert not torch.equal(m.weight[masks[n]], kept_before[n][masks[n]])  # the kept ones did train


def test_user_loop_with_stale_adam_state_keeps_zeros_via_mask_helpers():
    model = small_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=0.1, weight_decay=0.1)
    x, y = torch.randn(16, 1, 6, 6), torch.randint(0, 5, (16,))
    for _ in range(3):  # dense steps build up Adam moments for every weight
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    masks = prune(model, pruning_scores(model, method="magnitude"), 0.5)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        mask_gradients(model)
        opt.step()
        apply_masks(model)
    assert all((m.weight[~masks[n]] == 0).all() for n, m in prunable_layers(model).items())


def test_max_steps_stops_training_after_that_many_optimiser_steps():
    model = small_cnn()
    data = torch.utils.data.TensorDataset(torch.randn(64, 1, 6, 6), torch.randint(0, 5, (64,)))
    steps = []
    model.register_forward_pre_hook(lambda *args: steps.append(1))  # one forward per step
    train(model, data, epochs=5, batch_size=8, max_steps=3, device="cpu")
    assert len(steps) == 3
    with pytest.raises(ValueError, match="max_steps"):
        train(model, data, epochs=1, max_steps=0, device="cpu")


def test_out_of_memory_names_the_fix(monkeypatch):
    model = small_cnn()
    data = torch.utils.data.TensorDataset(torch.randn(8, 1, 6, 6), torch.randint(0, 5, (8,)))

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(model, "forward", exhausted)
    with pytest.raises(torch.OutOfMemoryError, match="during training with batch_size=4: use a smaller batch_size"):
        train(model, data, epochs=1, batch_size=4, device="cpu")
    with pytest.raises(torch.OutOfMemoryError, match="during evaluation with batch_size=512"):
        evaluate(model, data, device="cpu")


def test_evaluation_on_a_channels_last_copy_predicts_as_the_model_and_leaves_it_alone():
    from torch.utils.data import TensorDataset

    from flexrel_core.models import build_model
    from flexrel_core.training import _inference_copy, predict

    model = build_model("vgg_mnist", image_size=28).eval()
    x = torch.randn(64, 1, 28, 28)
    copy = _inference_copy(model, torch.device("cpu"))
    assert copy is not model and copy.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(copy(x), model(x), rtol=1e-5, atol=1e-5)
    preds, _ = predict(model, TensorDataset(x, torch.zeros(64, dtype=torch.long)), device="cpu")
    assert torch.equal(preds, model(x).argmax(1))
    assert all(p.is_contiguous() for p in model.parameters())  # the caller's model is not converted
    dense = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    assert _inference_copy(dense, torch.device("cpu")) is dense  # nothing to gain without convolutions


def test_a_convolutional_model_trains_in_channels_last_and_comes_back_contiguous_and_as_trained():
    """On a CPU a model with convolutions trains in channels-last layout (faster oneDNN kernels): the
    same algorithm, so it learns like a contiguous copy of itself and is handed back contiguous."""
    from torch.utils.data import TensorDataset

    data = TensorDataset(torch.randn(96, 1, 28, 28), torch.randint(0, 10, (96,)))
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(build_model("vgg_mnist", image_size=28))
    train(models[0], data, epochs=2, lr=1e-3, seed=3, device="cpu")
    assert all(p.is_contiguous() for p in models[0].parameters())
    # the same steps by hand, contiguous: the weights agree to float32 rounding
    generator = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    model = models[1].train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        sampler = torch.utils.data.RandomSampler(data, generator=generator)
        for rows in torch.utils.data.BatchSampler(sampler, 64, drop_last=False):
            x, y = data.tensors[0][rows], data.tensors[1][rows]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for a, b in zip(models[0].parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_training_in_float64_is_a_float64_run_rounded_once_to_the_models_precision():
    """``dtype``: the same optimiser steps as training a float64 copy on float64 inputs, then rounding
    every parameter and buffer (BatchNorm's statistics included) to float32 once; masks stay boolean."""
    torch.manual_seed(0)
    model = nn.Sequential(small_cnn(), nn.BatchNorm1d(5))
    prune(model, pruning_scores(model, method="magnitude"), 0.5)
    x, y = torch.randn(48, 1, 6, 6), torch.randint(0, 5, (48,))
    by_hand = copy.deepcopy(model).double()
    train(by_hand, torch.utils.data.TensorDataset(x.double(), y), epochs=2, lr=0.01, seed=3, device="cpu")
    train(model, torch.utils.data.TensorDataset(x, y), epochs=2, lr=0.01, seed=3, device="cpu", dtype=torch.float64)
    mine, theirs = model.state_dict(), by_hand.state_dict()
    assert mine.keys() == theirs.keys()
    for name, value in mine.items():
        expected = theirs[name].float() if theirs[name].dtype == torch.float64 else theirs[name]
        assert value.dtype == expected.dtype and torch.equal(value, expected), name
    assert any(v.dtype == torch.bool for v in mine.values())  # the masks
    assert not model.training


def test_training_refuses_a_dtype_that_is_not_floating_point():
    with pytest.raises(ValueError, match="floating-point dtype such as torch.float64"):
        train(small_cnn(), [], epochs=1, device="cpu", dtype=torch.int64)
