"""ResNet18-style recognizers: the torchvision body, and the compact width-cut variant."""

from __future__ import annotations

import torch.nn as nn
from torchvision.models import resnet18 as tv_resnet18
from torchvision.models.resnet import BasicBlock

from captcha.models._heads import Recognizer, make_head
from captcha.models._registry import ShippedWeights, register_model


class ResNetBody(nn.Module):
    """ResNet18's layout (stem, four stages of two BasicBlocks) with chosen widths and strides.

    `widths` = [stem, stage1, stage2, stage3, stage4]; torchvision's ResNet18 is
    [64, 64, 128, 256, 512] with stage strides (1, 2, 2, 2).
    """

    def __init__(self, widths=(16, 16, 16, 32, 32), in_channels=3, strides=(1, 2, 2, 2), blocks=(2, 2, 2, 2)):
        super().__init__()
        stem = widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        stages, inplanes = [], stem
        for planes, stride, count in zip(widths[1:], strides, blocks):
            layers = []
            for i in range(count):
                s = stride if i == 0 else 1
                downsample = None
                if s not in (1, (1, 1)) or inplanes != planes:
                    downsample = nn.Sequential(
                        nn.Conv2d(inplanes, planes, kernel_size=1, stride=s, bias=False), nn.BatchNorm2d(planes)
                    )
                layers.append(BasicBlock(inplanes, planes, s, downsample))
                inplanes = planes
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.out_features = inplanes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.stages(self.stem(x))


class TorchvisionResNetBody(nn.Module):
    """torchvision's ResNet18 without avgpool/fc, with the stem adapted to `in_channels`."""

    def __init__(self, in_channels=3):
        super().__init__()
        net = tv_resnet18(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
        self.out_features = 512

    def forward(self, x):
        return self.body(x)


@register_model
def resnet18(num_classes: int, length: int = 4, in_channels: int = 3, head: str = "fixed") -> Recognizer:
    """torchvision ResNet18 body (11.2M parameters), one head per character."""
    body = TorchvisionResNetBody(in_channels)
    return Recognizer(body, make_head(head, body.out_features, num_classes, length))


@register_model(weights=(ShippedWeights("resnet18_mod-gray-attention.pt", preprocess="gray", head="attention"),))
def resnet18_mod(
    num_classes: int, length: int = 4, in_channels: int = 3, head: str = "fixed", widths: tuple[int, ...] = (16, 16, 16, 32, 32)
) -> Recognizer:
    """ResNet18 with stage widths cut to [16, 16, 16, 32, 32] (~95K parameters at 19 symbols)."""
    # Position-aware heads need columns: the last two stages halve the height only.
    strides = (1, 2, 2, 2) if head == "fixed" else (1, 2, (2, 1), (2, 1))
    body = ResNetBody(tuple(widths), in_channels, strides=strides)
    return Recognizer(body, make_head(head, body.out_features, num_classes, length))
