"""Test-time augmentation: read each image at a few one-pixel shifts and average the readings.

A compact CNN that halves its input with strided convolutions reads an image shifted by one
pixel a little differently; where it hesitates between two symbols, the shifted readings
disagree, and their average is right more often than any one of them. Five views (the image,
and the image moved one pixel left, right, up and down) read more whole CAPTCHAs of a held-out
style than one view, for five times the inference work (docs/recipe-choices.md has the figures).

The views are built inside the model's forward pass (in eval mode only), so evaluation,
prediction, ONNX export and the gRPC server all read the same way; training never does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Number of views -> the (dx, dy) pixel shifts read; (0, 0) is the image itself.
TTA_VIEWS: dict[int, tuple[tuple[int, int], ...]] = {
    1: ((0, 0),),
    5: ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)),
    9: tuple((dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)),
}
_FLOOR = 1e-12  # averaged probabilities are floored before the log, so no class reads -inf


def read_views(model, count: int) -> None:
    """Make `model` (a Recognizer) read `count` views in eval mode; 1 = the image alone.

    An unsupported count raises, as everywhere else a count is read (`views_for`).
    """
    views = views_for(count)
    model.test_shifts = views if len(views) > 1 else ()


def views_read(model) -> int:
    """How many views `model` reads per image in eval mode (1 for a model without views)."""
    return max(1, len(getattr(model, "test_shifts", ())))


def views_for(count: int) -> tuple[tuple[int, int], ...]:
    try:
        return TTA_VIEWS[count]
    except KeyError:
        raise ValueError(f"--tta must be one of {', '.join(map(str, TTA_VIEWS))} views, not {count!r}") from None


def shifted_views(x: torch.Tensor, shifts: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """B x C x H x W -> (V*B) x C x H x W: view v is `x` moved by shifts[v], edges repeated."""
    h, w = x.shape[2:]
    pad = max(max(abs(dx), abs(dy)) for dx, dy in shifts)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate") if pad else x
    return torch.cat([padded[:, :, pad - dy : pad - dy + h, pad - dx : pad - dx + w] for dx, dy in shifts])


def average_readings(logits: torch.Tensor, views: int) -> torch.Tensor:
    """(V*B) x ... logits of V views -> B x ... log of the mean probability over the views.

    The result is a valid logit for every consumer: its softmax is the averaged distribution,
    and cross-entropy or CTC loss on it is the loss of that distribution."""
    probs = logits.float().softmax(-1)
    mean = probs.reshape(views, -1, *probs.shape[1:]).mean(0)
    return mean.clamp_min(_FLOOR).log()
