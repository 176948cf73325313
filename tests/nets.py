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


class Reused(nn.Module):
    """One ``self.act`` and one ``self.pool`` called after every layer, as many CNNs are written, for
    1 x 8 x 8 inputs and 3 classes; ``pool`` keeps the size (stride 1) or halves it."""

    def __init__(self, pool: nn.Module, act: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.act = nn.ReLU() if act is None else act
        self.pool = pool
        with torch.no_grad():
            features = pool(pool(torch.zeros(1, 6, 8, 8))).numel()
        self.fc1 = nn.Linear(features, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.act(self.conv2(x)))
        return self.fc2(self.act(self.fc1(torch.flatten(x, 1))))

    def unrolled(self) -> nn.Module:
        """The same network (same weights) with one module per call."""
        import copy

        a, p = self.act, self.pool
        return nn.Sequential(
            self.conv1, copy.deepcopy(a), copy.deepcopy(p), self.conv2, copy.deepcopy(a), copy.deepcopy(p),
            nn.Flatten(), self.fc1, copy.deepcopy(a), self.fc2,
        )  # fmt: skip


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
