"""Models: each builds, runs and gets finite relevance; VGG16 with random weights on an image folder."""

from __future__ import annotations

import pytest
import torch
from nets import write_image_folder

from flexrel_core import parameter_relevance, prunable_layers
from flexrel_core.data import load_dataset, tensors
from flexrel_core.models import build_model


@pytest.fixture
def image_folder(tmp_path):
    return write_image_folder(tmp_path, classes=3, per_class=10, size=(40, 48))  # the minimum per class


def test_imagefolder_and_vgg16_with_random_weights(image_folder):
    d = load_dataset("imagefolder", image_folder, image_size=32)
    assert d.input_shape == (3, 32, 32) and d.num_classes == 3
    model = build_model("vgg16", num_classes=3, in_channels=3)
    x, _ = tensors(d.inference)
    rel = parameter_relevance(model, x)
    assert set(rel) == set(prunable_layers(model)) and len(rel) == 16


@pytest.mark.parametrize(
    "name,kwargs,shape",
    [
        ("digits_cnn", {}, (2, 1, 8, 8)),
        ("vgg_mnist", dict(image_size=28), (2, 1, 28, 28)),
        ("vgg_small", dict(in_channels=3, image_size=32), (2, 3, 32, 32)),
        ("vgg_small", dict(in_channels=1, image_size=28, batch_norm=True), (2, 1, 28, 28)),
    ],
)
def test_models_build_and_score(name, kwargs, shape):
    model = build_model(name, **kwargs)
    assert model(torch.randn(shape)).shape == (2, 10)
    rel = parameter_relevance(model, torch.randn(shape))
    assert all(torch.isfinite(r).all() and (r >= 0).all() for r in rel.values())


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        build_model("resnet")


def test_vgg_mnist_is_over_parameterised_like_vgg16():
    from flexrel_core import prunable_count

    model = build_model("vgg_mnist", image_size=28)
    n = prunable_count(model)
    fc = sum(m.weight.numel() for name, m in prunable_layers(model).items() if name.startswith("classifier"))
    assert n >= 300_000 and fc / n > 0.9


def test_vgg16_slim_has_vgg16s_topology_and_share_of_classifier_weights():
    from flexrel_core import prunable_count

    model = build_model("vgg16_slim", image_size=32, batch_norm=True)
    blocks, convs = [], 0
    for m in model.features:
        if isinstance(m, torch.nn.Conv2d):
            convs += 1
        elif isinstance(m, torch.nn.MaxPool2d):
            blocks.append(convs)
            convs = 0
    assert blocks == [2, 2, 3, 3, 3]  # VGG16's five blocks, 13 convolutions
    linears = [m for m in model.classifier if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 640), (640, 640), (640, 10)]
    n = prunable_count(model)
    fc = sum(m.weight.numel() for m in linears)
    assert n == 493_972 and fc == 436_480 and 0.8 <= fc / n < 0.9  # VGG16: 89 %
    x = torch.randn(3, 1, 32, 32)
    model.eval()
    rel = parameter_relevance(model, x)  # BatchNorm merged into each convolution
    assert len(rel) == 16 and all(torch.isfinite(r).all() for r in rel.values())
    with pytest.raises(ValueError, match="28 px inputs leave nothing after 5"):
        build_model("vgg16_slim", image_size=28)


def test_resnet_slim_is_a_small_resnet_with_downsample_branches():
    """Three torchvision BasicBlocks (8, 16, 32 channels; the last two strided, with a 1x1-conv downsample
    branch), global pooling and one fully connected layer; scored on 32 px and 8 px digits by the fast engine."""
    from torchvision.models.resnet import BasicBlock

    from flexrel_core import prunable_count
    from flexrel_core.relevance import engine_for

    model = build_model("resnet_slim", batch_norm=True).eval()
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert [b.conv2.out_channels for b in blocks] == [8, 16, 32]
    assert [b.downsample is not None for b in blocks] == [False, True, True]
    layers = prunable_layers(model)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in layers.values()) == 9 and model.fc.in_features == 32
    assert prunable_count(model) == 19_464 and model.fc.weight.numel() == 320
    assert engine_for(model) == "fast"
    for size in (32, 8):
        x = torch.randn(3, 1, size, size)
        assert model(x).shape == (3, 10)
        rel = parameter_relevance(model, x)
        assert rel.keys() == layers.keys() and all(torch.isfinite(r).all() and (r > 0).any() for r in rel.values())
    plain = build_model("resnet_slim")  # without BatchNorm: the identity in its place
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert plain(torch.randn(2, 1, 32, 32)).shape == (2, 10)
