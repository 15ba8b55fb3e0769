"""Heads: the part of a model that turns backbone features into logits [B, L, C].

Every recognizer and classifier is `Recognizer(backbone, head)`; a classifier is the L = 1 case.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from captcha.tta import average_readings, shifted_views

HEAD_TYPES = ("fixed", "attention", "ctc")


class PooledHeads(nn.Module):
    """L independent linear heads on globally pooled features: the course report's design."""

    def __init__(self, in_features: int, num_classes: int, length: int):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(in_features, num_classes) for _ in range(length))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim == 4:
            features = features.mean(dim=(2, 3))
        return torch.stack([head(features) for head in self.heads], dim=1)


class AttentionHeads(nn.Module):
    """Position-aware heads: each character has a learned query that attends over feature columns.

    Pooling height away but keeping width lets each head look at where its character is,
    instead of guessing it from a global average.
    """

    def __init__(self, in_features: int, num_classes: int, length: int, max_columns: int = 64):
        super().__init__()
        self.position = nn.Parameter(torch.zeros(1, in_features, max_columns))
        self.queries = nn.Parameter(torch.randn(length, in_features) * in_features**-0.5)
        self.classifier = nn.Linear(in_features, num_classes)
        nn.init.normal_(self.position, std=0.02)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        columns = features.mean(dim=2)  # B x F x W
        keys = columns + self.position[:, :, : columns.shape[2]]
        scores = torch.einsum("lf,bfw->blw", self.queries, keys) * keys.shape[1] ** -0.5
        attended = torch.einsum("blw,bfw->blf", scores.softmax(dim=-1), columns)
        return self.classifier(attended)


class CTCHead(nn.Module):
    """Per-column logits [B, T, C + 1] for CTC; class 0 is the blank.

    A small separable 1-D convolution over columns gives each column its neighbours' context
    (cheaper than a recurrent layer: 4F + F^2 parameters, and exports to ONNX with any batch size).
    """

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.context = nn.Sequential(
            nn.Conv1d(in_features, in_features, 3, padding=1, groups=in_features),
            nn.Conv1d(in_features, in_features, 1),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(in_features, num_classes + 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        columns = features.mean(dim=2)  # B x F x W
        return self.classifier((columns + self.context(columns)).transpose(1, 2))


def make_head(kind: str, in_features: int, num_classes: int, length: int) -> nn.Module:
    if kind == "fixed":
        return PooledHeads(in_features, num_classes, length)
    if kind == "attention":
        return AttentionHeads(in_features, num_classes, length)
    if kind == "ctc":
        return CTCHead(in_features, num_classes)
    raise ValueError(f"unknown head {kind!r}; choose from {', '.join(HEAD_TYPES)}")


class Recognizer(nn.Module):
    """A backbone plus a head; `forward` returns logits [B, L, C] (or [B, T, C+1] for CTC)."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.test_shifts: tuple[tuple[int, int], ...] = ()  # eval-mode test-time augmentation (captcha.tta); () = off

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or len(self.test_shifts) < 2:
            return self.head(self.backbone(x))
        views = shifted_views(x, self.test_shifts)
        return average_readings(self.head(self.backbone(views)), len(self.test_shifts))


def set_backbone_trainable(model: Recognizer, trainable: bool) -> None:
    """Freeze (or unfreeze) every backbone parameter; the head stays trainable."""
    for p in model.backbone.parameters():
        p.requires_grad_(trainable)
