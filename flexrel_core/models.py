"""The networks the workbook prunes: VGG-style CNNs from 8x8 digits up to torchvision's VGG16.

All share torchvision's VGG layout (``features`` then ``classifier``), so parameter names read
alike (``features.0.weight``) and zennit's ``SequentialMergeBatchNorm`` finds Conv->BatchNorm pairs.
"""

from __future__ import annotations

import torch
from torch import nn

MODELS = ("digits_cnn", "vgg_mnist", "vgg_small", "vgg16")


class VGGStyle(nn.Module):
    """Conv3x3 blocks (``cfg``: channel counts, ``"M"`` = 2x2 max-pool) then a two-layer classifier."""

    def __init__(
        self,
        cfg: list[int | str],
        in_channels: int,
        image_size: int,
        num_classes: int,
        hidden: int,
        batch_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                size //= 2
            else:
                layers.append(nn.Conv2d(channels, int(v), 3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(int(v)))
                layers.append(nn.ReLU())
                channels = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * size * size, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_model(
    name: str = "digits_cnn",
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int = 8,
    batch_norm: bool = False,
    pretrained: bool = False,
) -> nn.Module:
    """Build a model by name.

    - ``digits_cnn``: small VGG-style CNN for 8x8 inputs (~25k weights; quick runs).
    - ``vgg_mnist``: VGG-style CNN for 28 px inputs, over-parameterised like VGG16: three 3x3 convs
      (16, then 32-32 channels after a pool; ~14k weights) and a 256-unit classifier (~0.4M
      weights), so ~97 % of its 0.42M prunable weights sit in fully connected layers (VGG16:
      ~89 %). The default model.
    - ``vgg_small``: VGG-style CNN for 28-32 px inputs (MNIST, Fashion-MNIST, CIFAR-10).
    - ``vgg16``: torchvision's VGG16 (with BN if ``batch_norm``) for ImageNet-size inputs; the
      ImageNet weights are downloaded only if ``pretrained`` (never in tests).
    """
    if name == "digits_cnn":
        return VGGStyle([16, 16, "M", 32, 32, "M"], in_channels, image_size, num_classes, 64, batch_norm)
    if name == "vgg_mnist":
        return VGGStyle([16, "M", 32, 32, "M"], in_channels, image_size, num_classes, 256, batch_norm)
    if name == "vgg_small":
        cfg: list[int | str] = [32, 32, "M", 64, 64, "M", 128, 128, "M"]
        return VGGStyle(cfg, in_channels, image_size, num_classes, 256, batch_norm, dropout=0.3)
    if name == "vgg16":
        from torchvision import models

        if in_channels != 3:
            raise ValueError(f"vgg16 takes RGB images (in_channels=3), got in_channels={in_channels}")
        factory = models.vgg16_bn if batch_norm else models.vgg16
        if pretrained:
            weights = (models.VGG16_BN_Weights if batch_norm else models.VGG16_Weights).IMAGENET1K_V1
            model = factory(weights=weights)
            if num_classes != 1000:
                model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)
            return model
        return factory(weights=None, num_classes=num_classes)
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
