"""`sepnet`: a compact depthwise-separable residual network for CAPTCHA text (~85K parameters).

Why not the course's `resnet18_mod`: at 95K parameters its full 3 x 3 convolutions can afford
only 16-32 channels, and its stem shrinks a 50 x 130 image four times before the first block, so
thin, warped glyphs reach the heads as 17 columns of 32 features. A depthwise 3 x 3 plus a
pointwise 1 x 1 costs about 9C + C^2 parameters instead of 9C^2, which buys three to four times
the width for the same budget; the stem halves the image once, and the last two stages halve the
height only, so the position-aware heads see 33 columns of 112 features. On a held-out style it
reads far more CAPTCHAs than `resnet18_mod` with the same head, preprocessor and recipe
(`benchmarks/architectures.py`; the figures are in docs/recipe-choices.md).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from captcha.constants import READ_SIZE
from captcha.models._heads import Recognizer, make_head
from captcha.models._registry import ShippedWeights, register_model

Stride = int | tuple[int, int]

# (width, stride of the first block, blocks) per stage, after a stride-2 stem.
SEPNET_STAGES: tuple[tuple[int, Stride, int], ...] = ((24, 1, 1), (48, 2, 2), (80, (2, 1), 2), (112, (2, 1), 3))
# `sepnet_wide`: the same stages at twice the width (and stem), about 3.5 times the parameters.
SEPNET_WIDE_STAGES = tuple((2 * width, stride, blocks) for width, stride, blocks in SEPNET_STAGES)


def _is_unit(stride: Stride) -> bool:
    return stride in (1, (1, 1))


class CPUFloat32Conv2d(nn.Conv2d):
    """A Conv2d that runs in float32 under CPU autocast and hands back the dtype it was given.

    On a CPU, the bf16 backward of the depthwise convolutions that halve the height only is several
    times slower than the float32 one, casts included (docs/benchmarks.md, "Training speed"). On
    other devices, and outside autocast (evaluation, ONNX export), it is a plain Conv2d with the
    same weights and state-dict keys.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
            return super().forward(x)
        with torch.autocast("cpu", enabled=False):
            return super().forward(x.float()).to(x.dtype)


class SeparableBlock(nn.Module):
    """Depthwise 3 x 3 -> BN -> ReLU -> pointwise 1 x 1 -> BN, plus a residual, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: Stride = 1):
        super().__init__()
        depthwise = CPUFloat32Conv2d if stride == (2, 1) else nn.Conv2d
        self.depthwise = nn.Sequential(
            depthwise(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
        )
        self.pointwise = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.shortcut: nn.Module = nn.Identity()
        if not _is_unit(stride) or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.pointwise(self.depthwise(x)) + self.shortcut(x))


class SepNetBody(nn.Module):
    """Stride-2 3 x 3 stem, then stages of separable blocks (`SEPNET_STAGES`)."""

    def __init__(self, in_channels: int = 1, stem: int = 16, stages=SEPNET_STAGES):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True))
        blocks, width = [], stem
        for out, stride, count in stages:
            for i in range(count):
                blocks.append(SeparableBlock(width, out, stride if i == 0 else 1))
                width = out
        self.stages = nn.Sequential(*blocks)
        self.out_features = width
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


@register_model(weights=(ShippedWeights("sepnet-gray-attention.pt", preprocess="gray", head="attention"),), input_size=READ_SIZE)
def sepnet(num_classes: int, length: int = 4, in_channels: int = 1, head: str = "attention") -> Recognizer:
    """Depthwise-separable residual net, ~85K parameters at 62 symbols: the default recognizer. It
    reads images at about twice the course size by default, where thin strokes survive its stem."""
    body = SepNetBody(in_channels)
    return Recognizer(body, make_head(head, body.out_features, num_classes, length))


@register_model(weights=(ShippedWeights("sepnet_wide-gray-attention.pt", preprocess="gray", head="attention",
                                       recipe="docs/pretraining.md#the-wide-models-weights"),), input_size=READ_SIZE)
def sepnet_wide(num_classes: int, length: int = 4, in_channels: int = 1, head: str = "attention") -> Recognizer:
    """`sepnet` at twice the width, ~290K parameters at 36 symbols: more capacity for hard styles
    under the 1M budget, at about three times the arithmetic an image. It reads at `sepnet`'s size."""
    body = SepNetBody(in_channels, stem=32, stages=SEPNET_WIDE_STAGES)
    return Recognizer(body, make_head(head, body.out_features, num_classes, length))
