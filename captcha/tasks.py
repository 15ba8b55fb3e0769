"""What a training task hands the one trainer (`captcha.train.fit`), and what it answers.

A task says how its data is read and its labels encoded, how a batch becomes model input, how
readings are scored, logged and drawn, and what its checkpoints record. The trainer owns the
rest for every task: the device, seeding, stages of optimisers and schedules, resume, an EMA of
the weights, mixed precision, DistributedDataParallel and the run files. CAPTCHA recognition
(`captcha.recognition`) and image classification (`captcha.classify.train`) are the two tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import torch.nn as nn

from captcha.runtime import loss_fn, predict_logits


@dataclass
class RunOptions:
    """How the trainer runs a task, whatever the task learns."""

    out: str
    batch_size: int
    seed: int = 0
    device: str = "auto"
    patience: int = 0
    ema: float = 0.0
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    resume: bool = False
    augment_views: int = 1
    eval_batch_size: int | None = None
    plot_format: str = "png"
    tensorboard: str | None = None
    distill_weight: float = 0.5
    distill_temperature: float = 2.0
    validate_from: float = 0.0  # validate after epoch 1 and every epoch past this share of the run (0: every epoch)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("--batch-size must be at least 1")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ValueError("eval_batch_size must be at least 1 (or None for the device's default)")
        if self.patience < 0:
            raise ValueError("--patience must be 0 (never stop early) or more")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError("--ema must be in [0, 1)")
        if self.augment_views < 1:
            raise ValueError("--augment-views must be at least 1")
        if not 0.0 < self.distill_weight <= 1.0:
            raise ValueError("--distill-weight must be in (0, 1]")
        if self.distill_temperature <= 0:
            raise ValueError("--distill-temperature must be positive")
        if not 0.0 <= self.validate_from < 1.0:
            raise ValueError("--validate-from must be in [0, 1): the share of the epochs before validation runs every epoch")

    def validates(self, epoch: int, epochs: int) -> bool:
        """Whether epoch `epoch` of `epochs` (counted from 1) is validated: the first, and every one
        past `validate_from` of the run."""
        return epoch == 1 or epoch > int(self.validate_from * epochs)

    @classmethod
    def of(cls, settings: Any, **changes: Any) -> "RunOptions":
        """The options `settings` has attributes for (a TrainConfig has them all), with `changes`."""
        named = {f.name: getattr(settings, f.name) for f in fields(cls) if hasattr(settings, f.name)}
        return cls(**{**named, **changes})


@dataclass
class Stage:
    """One phase of training with its own optimiser and schedule; a recipe may chain several
    (a frozen backbone first, then everything)."""

    name: str
    epochs: int
    optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer]
    scheduler: Callable[[torch.optim.Optimizer, int], Any]  # (optimizer, steps per epoch) -> scheduler, or None
    freeze_backbone: bool = False


@dataclass
class LabeledImages:
    """One split on the training device: uint8 images, their encoded targets and their truth."""

    images: torch.Tensor  # N x K x H x W, uint8
    targets: torch.Tensor  # N x L class indices, padded with -1
    labels: list[str]  # what each image shows, as reports write it

    def __len__(self) -> int:
        return len(self.labels)


class ExtraImages(Protocol):
    """A pool of extra images drawn into every training batch (pseudo-labeled images)."""

    def update(self, epoch: int, model: nn.Module, log: Callable[[str], None]) -> None: ...

    def batch_pool(self) -> tuple[torch.Tensor, torch.Tensor] | None: ...

    def state(self) -> Any: ...

    def restore(self, state: Any) -> None: ...


class Scores(Protocol):
    """A split's scores for one epoch or the final report."""

    loss: float
    samples: int

    @property
    def score(self) -> float: ...  # what picks the best epoch: higher is better

    def as_dict(self) -> dict[str, Any]: ...


@dataclass
class PreparedRun:
    """What a task's `prepare` gives the trainer."""

    model: nn.Module  # on the device, initialised
    meta: dict[str, Any]  # checkpoint meta; the trainer fills in the metrics
    train: LabeledImages  # the images training reads
    scored: dict[str, LabeledImages]  # the splits validation and the final report read
    watch: str  # the split of `scored` whose score picks the best epoch
    start_line: str  # logged once the run folder is ready
    teacher: nn.Module | None = None  # a model to distil from, on the same batches
    extra: ExtraImages | None = None
    epoch_train: Callable[[int], LabeledImages | None] | None = None  # epoch -> its own training images (None: as before)


class Task(Protocol):
    """Everything the trainer asks of a task."""

    name: str  # "recognition" or "classification": the checkpoint's task
    options: RunOptions
    head: str  # the loss's head type: fixed, attention or ctc
    label_smoothing: float
    mean: float  # normalisation of uint8 pixels: (x / 255 - mean) / std
    std: float
    report_splits: tuple[str, ...]  # the splits the final report scores, when they have images
    headline: str  # the name of the best-epoch score, for TensorBoard
    score_name: str  # the best-epoch score in words, for the log

    def settings(self) -> dict[str, Any]: ...  # saved in last.pt, to resume with

    def resumed(self, saved: dict[str, Any]) -> tuple["Task", list[str]]: ...  # the task as saved, and what was asked that it ignores

    def prepare(self, device: torch.device, fresh: bool, log: Callable[[str], None]) -> PreparedRun: ...

    def stages(self) -> list[Stage]: ...

    def inputs(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...  # uint8 -> normalised, augmented

    def train_scores(self, loss_sum: float, logits: torch.Tensor, split: LabeledImages, index: torch.Tensor) -> Scores: ...

    def eval_scores(self, loss: float, logits: torch.Tensor, split: LabeledImages) -> Scores: ...

    def epoch_lines(self, epoch: int, epochs: int, stage: Stage, train: Scores, val: Scores | None, elapsed: float, seconds: float) -> list[str]: ...

    def write_history(self, path: Path, history: list[dict]) -> None: ...

    def pictures(self, run_dir: Path, history: list[dict], split: str, images: LabeledImages, scores: Scores, board: Any) -> None: ...

    def final_lines(self, best_epoch: int, best_score: float, scores: dict[str, Scores], seconds: float, run_dir: Path) -> list[str]: ...


def score_split(task: Task, model: nn.Module, split: LabeledImages, batch_size: int | None = None) -> Scores:
    """`task`'s scores of `model` reading one split as it is (eval mode, no augmentation)."""
    logits = predict_logits(model, split.images, batch_size, task.mean, task.std)
    loss = loss_fn(logits, split.targets, task.head).item() if logits.numel() else float("nan")
    return task.eval_scores(loss, logits, split)
