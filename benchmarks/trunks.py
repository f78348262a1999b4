"""The paper's CNN trunks and heads in plain PyTorch (no Avalanche): VGG-9 and ResNet-18.

:mod:`benchmarks.cnn` builds the multi-head models from these; timing scripts that run where
Avalanche is not installed (``benchmarks.importance_speed`` on a GPU machine) use them directly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models import resnet18

DEFAULT_DROPOUT = 0.5
VGG9_CHANNELS = (64, 64, 128, 128, 256, 256)  # conv widths; a max-pool after every second conv
VGG9_HIDDEN = 512  # width of the two fc layers of the trunk
RESNET_HEAD_HIDDEN = 2048  # supplementary Sec. 6: "Each new fc layer has 2048 neural units"


def xavier_init_(module: nn.Module) -> nn.Module:
    """Xavier-uniform weights and zero biases for every conv and linear layer of ``module``.

    BatchNorm layers get weight 1 and bias 0. Returns ``module`` (initialised in place).
    """
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    return module


class VGG9Features(nn.Module):
    """The VGG-9 trunk: 6 conv (with BN) and 2 fc layers, ``(B, 3, H, W)`` -> ``(B, 512)``.

    Args:
        input_shape: ``(C, H, W)`` of the images; ``H`` and ``W`` at least 8 (three 2x2 pools).
        dropout: dropout probability after each fc layer.
        channels: widths of the six conv layers.
        hidden: width of the two fc layers (the output width ``D``).
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        dropout: float = DEFAULT_DROPOUT,
        channels: tuple[int, ...] = VGG9_CHANNELS,
        hidden: int = VGG9_HIDDEN,
    ):
        super().__init__()
        c, h, w = _check_shape(input_shape)
        if h < 8 or w < 8:
            raise ValueError(f"VGG-9 pools three times by 2: images must be at least 8x8, got {h}x{w}")
        if len(channels) != 6:
            raise ValueError(f"VGG-9 has 6 conv layers, got {len(channels)} widths")
        self.input_shape = (c, h, w)
        layers: list[nn.Module] = []
        in_channels = c
        for i, out_channels in enumerate(channels):
            layers += [
                nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
            in_channels = out_channels
        self.conv = nn.Sequential(*layers)
        flat = channels[-1] * (h // 8) * (w // 8)
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.out_features = hidden
        xavier_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, D)``."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"VGG-9 built for inputs {self.input_shape}, got {tuple(x.shape[1:])}")
        return self.fc(self.conv(x))


def resnet18_features() -> nn.Module:
    """torchvision's ResNet-18 (no pretrained weights) with ``fc`` removed: ``(B, 3, H, W) -> (B, 512)``."""
    net = resnet18(weights=None)
    net.out_features = net.fc.in_features
    net.fc = nn.Identity()
    return net


def _linear_head(in_features: int, n_classes: int) -> nn.Sequential:
    return xavier_init_(nn.Sequential(nn.Linear(in_features, n_classes)))


def _hidden_head(in_features: int, hidden: int, dropout: float, n_classes: int) -> nn.Sequential:
    return xavier_init_(
        nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )
    )


def _check_shape(input_shape: Any) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W), got {input_shape!r}")
    return shape  # type: ignore[return-value]
