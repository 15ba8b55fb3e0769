"""Plain CNN recognizers of the course: `baseline` and `simplecnn`.

Known only by size and description; these land near the reported counts (4.85M, 12.7M) at 19
symbols, 3 channels, 4 heads. Adaptive pooling fixes the dense layer's input, so the count does
not depend on the image size.
"""

from __future__ import annotations

import torch.nn as nn

from captcha.models._heads import Recognizer, make_head
from captcha.models._registry import register_model


def _conv_stack(in_channels: int, widths: tuple[int, ...]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        in_channels = width
    return layers


class DenseBody(nn.Module):
    """Convolutions, adaptive pooling to 6 x 16, then one large dense layer."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], dense: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(
            *_conv_stack(in_channels, widths),
            nn.AdaptiveAvgPool2d((6, 16)),
            nn.Flatten(),
            nn.Linear(widths[-1] * 6 * 16, dense),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.out_features = dense

    def forward(self, x):
        return self.body(x)


@register_model(heads=("fixed",))  # ends in a dense layer: no feature columns for attention or CTC
def baseline(num_classes: int, length: int = 4, in_channels: int = 3, head: str = "fixed") -> Recognizer:
    """The course baseline: three conv layers, a 768-unit dense layer (~4.8M parameters)."""
    body = DenseBody(in_channels, (32, 64, 64), 768, dropout=0.3)
    return Recognizer(body, make_head(head, body.out_features, num_classes, length))


@register_model(heads=("fixed",))
def simplecnn(num_classes: int, length: int = 4, in_channels: int = 3, head: str = "fixed") -> Recognizer:
    """A few conv layers and a large 1024-unit dense layer (~12.7M parameters)."""
    body = DenseBody(in_channels, (32, 64, 128), 1024, dropout=0.0)
    return Recognizer(body, make_head(head, body.out_features, num_classes, length))
