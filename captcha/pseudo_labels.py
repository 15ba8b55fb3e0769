"""Pseudo-labeling (`captcha train --unlabeled DIR`): the model's confident readings of unlabeled
images of the same style join every training batch, relabeled a few times as training goes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from captcha import distributed as dist
from captcha.alphabet import Alphabet
from captcha.decoding import decode
from captcha.runtime import encode_labels, predict_logits

PSEUDO_START = 1 / 3  # pseudo-labels join after this fraction of the epochs: the model must read well first
PSEUDO_REFRESHES = 6  # how many times the pool is relabeled over the remaining epochs


@torch.no_grad()
def pseudo_label_indices(model: nn.Module, images: torch.Tensor, alphabet: str, head: str, width: int, threshold: float,
                         label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Which unlabeled images the model reads with every character at `threshold` or above (their
    indices), and those readings as targets (padded to `width`). The confidences are rescaled for
    the `label_smoothing` the model trains with (`captcha.decoding.unsmooth`): a smoothed head's
    surest reading sits well below 1, so a raw threshold near 1 would pass no image at all."""
    logits = predict_logits(model, images)
    if logits.numel() == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, width, dtype=torch.long)
    keep, texts = [], []
    for i, p in enumerate(decode(logits.numpy(), alphabet, head, label_smoothing)):
        if p.text and len(p.text) <= width and min(p.char_confidences) >= threshold:
            keep.append(i)
            texts.append(p.text)
    return torch.tensor(keep, dtype=torch.long), encode_labels(texts, Alphabet(alphabet), width)


def pseudo_label(model: nn.Module, images: torch.Tensor, alphabet: str, head: str, width: int, threshold: float,
                 label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The images `pseudo_label_indices` keeps, and their targets."""
    index, targets = pseudo_label_indices(model, images, alphabet, head, width, threshold, label_smoothing)
    return images[index.to(images.device)], targets


@dataclass
class PseudoLabelPool:
    """The unlabeled images and the pseudo-labeled part of them that joins every batch.

    The pool is labeled first at a third of the epochs, then `PSEUDO_REFRESHES` times more; its
    `state` (indices into the images, and their targets) goes into last.pt, so a resumed run
    trains on the pool it had, not a new one."""

    images: torch.Tensor  # uint8 N x K x H x W, on the training device
    alphabet: str
    head: str
    width: int
    threshold: float
    label_smoothing: float
    epochs: int
    labeled: tuple[torch.Tensor, torch.Tensor] | None = None  # (indices into `images`, targets)

    def __post_init__(self) -> None:
        self.first = max(2, int(self.epochs * PSEUDO_START) + 1)
        self.every = max(1, (self.epochs - self.first + 1) // PSEUDO_REFRESHES)

    def update(self, epoch: int, model: nn.Module, log: Callable[[str], None]) -> None:
        """Relabel the pool when `epoch` is one of the labeling epochs."""
        if epoch < self.first or (self.labeled is not None and (epoch - self.first) % self.every):
            return
        self.labeled = pseudo_label_indices(model, self.images, self.alphabet, self.head, self.width, self.threshold, self.label_smoothing)
        if dist.is_main():
            log(f"Pseudo-labels for epoch {epoch}: {len(self.labeled[0])} of {len(self.images)} unlabeled images read with "
                f"every character at {self.threshold:.2f} or above")

    def batch_pool(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(images, targets) training draws from, or None before the first labeling."""
        if self.labeled is None:
            return None
        index, targets = self.labeled
        return self.images[index.to(self.images.device)], targets

    def state(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.labeled

    def restore(self, state: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        if state is not None:
            self.labeled = state
