"""The reference CNN: the classic small image classifier, in fastconv or torch.nn layers.

    conv1: Conv(in -> widths[0], 3x3, pad 1) + ReLU + MaxPool 2
    conv2: Conv(widths[0] -> widths[1], 3x3, pad 1) + ReLU + MaxPool 2
    classifier: flatten + Linear(widths[1] * (S // 4)^2 -> num_classes)

``layers="fastconv"`` runs each conv block as one fused ``fastconv.nn.Conv2dReLUMaxPool2d``;
``layers="torch"`` runs ``nn.Conv2d`` then ``F.relu`` then ``F.max_pool2d``. Both have the
same parameters under the same names (``conv1.weight``, ``conv1.bias``, ``conv2.*``,
``classifier.*``) created in the same order, so one seed gives both the same initial
weights and a state_dict of one loads into the other.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from .. import nn as fnn

LAYERS = ("fastconv", "torch")


class ReferenceCNN(nn.Module):
    """x [N, in_channels, image_size, image_size] -> logits [N, num_classes]."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32,
                 layers: str = "fastconv", widths: Sequence[int] = (32, 64)) -> None:
        super().__init__()
        if layers not in LAYERS:
            raise ValueError(f"layers must be one of {', '.join(LAYERS)}, got {layers!r}")
        widths = tuple(int(w) for w in widths)
        if len(widths) != 2 or min(widths) < 1:
            raise ValueError(f"widths must be two positive channel counts, got {widths}")
        if image_size < 4:
            raise ValueError(f"image_size must be at least 4 (two 2x2 pools), got {image_size}")
        for name, v in (("in_channels", in_channels), ("num_classes", num_classes)):
            if v < 1:
                raise ValueError(f"{name} must be positive, got {v}")
        self.layers = layers
        conv = fnn.Conv2dReLUMaxPool2d if layers == "fastconv" else nn.Conv2d
        self.conv1 = conv(in_channels, widths[0], 3, padding=1)
        self.conv2 = conv(widths[0], widths[1], 3, padding=1)
        side = image_size // 2 // 2
        self.classifier = nn.Linear(widths[1] * side * side, num_classes)

    def features(self, x: Tensor) -> Tensor:
        if self.layers == "fastconv":
            return self.conv2(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        return F.max_pool2d(F.relu(self.conv2(x)), 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))

    def extra_repr(self) -> str:
        return f"layers={self.layers!r}"
