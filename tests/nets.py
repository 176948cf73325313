"""Tiny seeded models and helpers shared by the tests of the method."""

from __future__ import annotations

import torch
from torch import nn


def small_cnn() -> nn.Module:
    """Two convolutions (one padded) and a linear layer, for 1 x 6 x 6 inputs and 5 classes."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5)
    )


class ConvFc(nn.Module):
    """A padded convolution (``conv``) and a linear layer (``fc``) with named weights, for 1 x 4 x 4
    inputs and 5 classes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def torch_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks ``torch.nn.utils.prune`` left on ``model``, keyed like FlexRel's."""
    return {f"{n}.weight": m.weight_mask.bool() for n, m in model.named_modules() if hasattr(m, "weight_mask")}


def write_image_folder(root, classes: int, per_class: int, size: tuple[int, int], prefix: str = "class"):
    """An ImageFolder-format tree of random RGB PNGs (``size`` = height, width) under ``root``;
    returns ``root``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"{prefix}{c}").mkdir()
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / f"{prefix}{c}" / f"{i}.png")
    return root
