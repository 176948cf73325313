"""The networks the workbook prunes: VGG-style CNNs from 8x8 digits up to torchvision's VGG16, and a small
ResNet built from torchvision's residual blocks.

The VGG-style ones share torchvision's VGG layout (``features`` then ``classifier``), so parameter names
read alike (``features.0.weight``) and zennit's ``SequentialMergeBatchNorm`` finds Conv->BatchNorm pairs;
``resnet_slim`` has torchvision's ResNet layout (``stem``, ``layer1``..., ``fc``).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, conv1x1

MODELS = ("digits_cnn", "vgg_mnist", "vgg_small", "vgg16_slim", "vgg16", "resnet_slim")

# VGG16's 13 convolutions in five blocks (torchvision's configuration "D") at 1/16 of its widths.
VGG16_SLIM = [4, 4, "M", 8, 8, "M", 16, 16, 16, "M", 32, 32, 32, "M", 32, 32, 32, "M"]


class VGGStyle(nn.Module):
    """Conv3x3 blocks (``cfg``: channel counts, ``"M"`` = 2x2 max-pool) then a classifier of
    ``fc_layers`` fully connected layers (``hidden`` units each but the last; ReLU and dropout between)."""

    def __init__(
        self,
        cfg: list[int | str],
        in_channels: int,
        image_size: int,
        num_classes: int,
        hidden: int,
        batch_norm: bool = False,
        dropout: float = 0.0,
        fc_layers: int = 2,
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
        if size < 1:
            raise ValueError(
                f"{image_size} px inputs leave nothing after {cfg.count('M')} 2x2 pools; use larger inputs"
            )
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Flatten()]
        width = channels * size * size
        for _ in range(fc_layers - 1):
            head += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        self.classifier = nn.Sequential(*head, nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ResNetSlim(nn.Module):
    """A ResNet for small grey images (He et al. 2016): a 3x3 stem convolution, BatchNorm, ReLU and a 2x2
    max pool (torchvision's stem, scaled down), then ``widths`` stages of one torchvision ``BasicBlock``
    each (two 3x3 convolutions and a skip connection), every stage after the first halving the map and
    widening it through a 1x1-convolution downsample branch, global average pooling and one fully
    connected layer. ``batch_norm=False`` replaces every BatchNorm by the identity."""

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...], batch_norm: bool = True) -> None:
        super().__init__()
        norm = nn.BatchNorm2d if batch_norm else nn.Identity
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=not batch_norm),
            norm(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        blocks, channels = [], widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or width != channels:
                down = nn.Sequential(conv1x1(channels, width, stride), norm(width))
            blocks.append(BasicBlock(channels, width, stride, down, norm_layer=norm))
            channels = width
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


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
    - ``vgg16_slim``: VGG16's topology scaled in width to 32 px grey images: its 13 3x3 convolutions
      in five blocks (4-4, 8-8, 16-16-16, 32-32-32, 32-32-32 channels: 1/16 of VGG16's; 57,492
      weights at one input channel), five 2x2 pools (32 px -> 1 px) and three fully connected layers
      (32 -> 640 -> 640 -> 10: 436,480 weights), so 88.4 % of its 493,972 prunable weights sit in the
      classifier (VGG16: 89 %). Train it with ``batch_norm=True`` (13 convolutions from scratch);
      embedded 8 px digits or 28 px MNIST reach 32 px with ``load_dataset(..., resize=32)``.
    - ``vgg16``: torchvision's VGG16 (with BN if ``batch_norm``) for ImageNet-size inputs; the
      ImageNet weights are downloaded only if ``pretrained`` (never in tests).
    - ``resnet_slim``: a ResNet for 32 px grey images (``ResNetSlim``): stem (3x3 convolution to 8
      channels, 2x2 max pool), three torchvision ``BasicBlock`` stages of 8, 16 and 32 channels, the last
      two with a strided 1x1-convolution downsample branch, global average pooling and a 32 -> 10 fully
      connected layer: 19,464 prunable weights at one input channel, 1.6 % of them in the classifier; three
      skip connections. Train it with ``batch_norm=True``; any input of at least 8 px fits (global pooling).
    """
    if name == "digits_cnn":
        return VGGStyle([16, 16, "M", 32, 32, "M"], in_channels, image_size, num_classes, 64, batch_norm)
    if name == "vgg_mnist":
        return VGGStyle([16, "M", 32, 32, "M"], in_channels, image_size, num_classes, 256, batch_norm)
    if name == "vgg_small":
        cfg: list[int | str] = [32, 32, "M", 64, 64, "M", 128, 128, "M"]
        return VGGStyle(cfg, in_channels, image_size, num_classes, 256, batch_norm, dropout=0.3)
    if name == "vgg16_slim":
        return VGGStyle(VGG16_SLIM, in_channels, image_size, num_classes, 640, batch_norm, dropout=0.3, fc_layers=3)
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
    if name == "resnet_slim":
        return ResNetSlim(in_channels, num_classes, (8, 16, 32), batch_norm)
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
