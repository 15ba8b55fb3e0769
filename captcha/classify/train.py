"""Image classification as a training task: a recipe's stages run by the one trainer
(`captcha.train.fit`), with the run files, resume, EMA, mixed precision and DDP of every run.

Images stay uint8 until a batch is built; the meta's normalisation is x / 255 and the model's
own `ChannelNormalize` layer applies the per-channel (ImageNet) mean/std, so export and serving
read the same numbers with no extra code.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from captcha import checkpoint as ckpt
from captcha import distributed as dist
from captcha.classify.data import ClassData, Split, find_mnist, load_data, preprocessor_for
from captcha.classify.recipes import Recipe, Stage as RecipeStage, describe, recipe_from_dict
from captcha.metrics import classification_metrics, topk_accuracy
from captcha.models import create_model
from captcha.models.classifiers import META_MEAN, META_STD, load_pretrained
from captcha.runtime import normalize_batch
from captcha.tasks import LabeledImages, PreparedRun, RunOptions, Stage
from captcha.train import RunResult, fit


@dataclass
class ClassScores:
    loss: float
    top1: float
    top3: float
    samples: int
    logits: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32), repr=False)

    @property
    def score(self) -> float:
        return self.top1

    def as_dict(self) -> dict:
        return {"samples": self.samples, "loss": self.loss, "top1": self.top1, "top3": self.top3}

    def line(self) -> str:
        return f"loss {self.loss:.4f} top1 {self.top1 * 100:6.2f}% top3 {self.top3 * 100:6.2f}%"


def _default_channels(root: str | Path, model: str) -> int:
    """Gray MNIST stays 1 channel for the small models; everything else is RGB."""
    return 1 if model in ("mlp", "cnn") and Path(root).is_dir() and find_mnist(root) is not None else 3


def _load_size(recipe: Recipe) -> tuple[int, int]:
    """Training images are kept larger (256/224) when the augmentation crops them."""
    h, w = recipe.input_size
    if recipe.augment == "none":
        return (h, w)
    return (int(round(h * 256 / 224)), int(round(w * 256 / 224)))


def _augmenter(recipe: Recipe, channels: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Per-sample torchvision v2 transform on uint8 C x H x W, or None."""
    from torchvision.transforms import v2

    size = tuple(recipe.input_size)
    if recipe.augment == "tricks":
        return v2.Compose([v2.RandomCrop(size), v2.RandomHorizontalFlip()])
    if recipe.augment == "finetune":
        steps = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
        if channels == 3:
            steps += [v2.ColorJitter(0.4, 0.4, 0.4, 0.1), v2.RandomRotation(10), v2.RandomGrayscale(0.2)]
        else:
            steps += [v2.ColorJitter(0.4, 0.4), v2.RandomRotation(10)]
        return v2.Compose(steps)
    return None


def model_args_for(recipe: Recipe, num_classes: int, channels: int) -> dict[str, Any]:
    """The factory arguments a recipe implies (stored in meta, so loading rebuilds the model)."""
    args: dict[str, Any] = {"num_classes": num_classes, "length": 1, "in_channels": channels}
    if recipe.model in ("mlp", "cnn"):
        if recipe.activation:
            args["activation"] = recipe.activation
        if recipe.model == "mlp":
            args["input_size"] = list(recipe.input_size)
    elif recipe.top:
        args["top"] = recipe.top
    return args


def _lr_lambda(stage: RecipeStage, steps_per_epoch: int) -> Callable[[int], float]:
    """Linear warm-up over `warmup_epochs`, then cosine decay to 0 (or constant)."""
    total = max(stage.epochs * steps_per_epoch, 1)
    warm = stage.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if stage.schedule == "cosine":
            progress = (step - warm) / max(total - warm, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    return factor


def _optimizer(stage: RecipeStage, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """torch's default (per-parameter) update, not the fused kernels recognition uses: they round
    differently, and the reports' figures were made with this one."""
    if stage.optimizer == "adam":
        return torch.optim.Adam(params, lr=stage.lr, weight_decay=stage.weight_decay)
    if stage.optimizer == "sgd":
        return torch.optim.SGD(params, lr=stage.lr, momentum=stage.momentum, weight_decay=stage.weight_decay)
    raise ValueError(f"unknown optimizer {stage.optimizer!r}; choose from adam, sgd")


def _trainer_stage(stage: RecipeStage) -> Stage:
    return Stage(stage.name, stage.epochs, lambda params: _optimizer(stage, params),
                 lambda optimizer, steps: torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(stage, steps)), stage.freeze_backbone)


def _labeled(split: Split, class_names: list[str]) -> LabeledImages:
    """A split as the trainer reads it: one target per image (one head), its class name as label."""
    return LabeledImages(split.images, split.targets.view(-1, 1), [class_names[int(t)] for t in split.targets])


def _settings_of(recipe: dict[str, Any]) -> dict[str, Any]:
    """A recipe's settings by flag name: the run's own, and one list per stage setting."""
    stages = recipe["stages"]
    run = {k: list(v) if isinstance(v, tuple) else v for k, v in recipe.items() if k not in ("name", "stages")}
    return {"recipe": recipe["name"], **run, **{k: [stage[k] for stage in stages] for k in stages[0] if k != "name"}}


class ClassificationTask:
    """The trainer's questions answered for a classification recipe (see `captcha.tasks.Task`)."""

    name = "classification"
    head = "fixed"
    mean, std = META_MEAN, META_STD
    report_splits = ("train", "val", "test")
    headline = "top1"
    score_name = "top-1 accuracy"

    def __init__(self, data_dir: str | Path, out: str | Path, recipe: Recipe, weights: str | Path | None = None, device: str = "auto",
                 cache_dir: str | Path | None | bool = None, resume: bool = False, ema: float = 0.0):
        self.data_dir, self.recipe, self.weights, self.cache_dir = Path(data_dir), recipe, weights, cache_dir
        self.label_smoothing = recipe.label_smoothing
        # bf16 on a GPU only: the reports' figures were made in float32 on the CPU (docs/reproducing-the-reports.md)
        on_gpu = device != "cpu" and torch.cuda.is_available()
        self.options = RunOptions(out=str(out), batch_size=recipe.batch_size, seed=recipe.seed, device=device, resume=resume, ema=ema,
                                  channels_last=False, eval_batch_size=256, amp=on_gpu)
        self.augment: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.class_names: list[str] = []
        self.watch = "val"
        self.described: dict[str, Any] = {}  # what the data turned out to be, once read

    def settings(self) -> dict:
        """The meta's `config`: the recipe and the data as read; the run options resume needs."""
        return {"recipe": self.recipe.to_dict(), "data": str(self.data_dir.resolve()), **self.described,
                "weights": str(self.weights) if self.weights else None, "ema": self.options.ema}

    def resumed(self, saved: dict) -> tuple[ClassificationTask, list[str]]:
        recipe = recipe_from_dict(saved["recipe"])
        asked = {**_settings_of(self.recipe.to_dict()), "data": str(self.data_dir.resolve())}
        before = {**_settings_of(saved["recipe"]), "data": saved["data"]}
        ignored = [f"{k}={v!r} (the run's: {before[k]!r})" for k, v in asked.items() if k in before and v != before[k]]
        task = ClassificationTask(saved["data"], self.options.out, recipe, saved.get("weights"), self.options.device, self.cache_dir,
                                  resume=True, ema=saved.get("ema", 0.0))
        return task, ignored

    def prepare(self, device: torch.device, fresh: bool, log: Callable[[str], None]) -> PreparedRun:
        recipe = self.recipe
        np.random.seed(recipe.seed)
        channels = recipe.channels or _default_channels(self.data_dir, recipe.model)
        data, scored = self._data(channels)
        self.class_names = data.class_names
        model_args = model_args_for(recipe, len(data.class_names), channels)
        model = create_model(recipe.model, **model_args)
        if self.weights is not None and fresh:
            skipped = load_pretrained(model, recipe.model, self.weights)
            if dist.is_main():
                log(f"Loaded ImageNet weights from {self.weights}" + (f" (left out: {', '.join(skipped)})" if skipped else ""))
        model.to(device)
        self.described = {"source": data.source, "sizes": data.sizes()}
        meta = ckpt.make_meta(
            task="classification", model_name=recipe.model, model_args=model_args, input_size=tuple(recipe.input_size),
            channels=channels, preprocess=preprocessor_for(channels), mean=META_MEAN, std=META_STD,
            class_names=data.class_names, length=1, config=self.settings(),
        )
        norm = model.backbone.normalize
        meta["input_normalization"] = {"mean": norm.mean.flatten().tolist(), "std": norm.std.flatten().tolist(), "applied_in": "model"}
        meta["parameters"] = sum(p.numel() for p in model.parameters())
        self.augment = _augmenter(recipe, channels)
        self.watch = "val" if len(data.splits["val"]) else "train"
        sizes = ", ".join(f"{k} {v}" for k, v in data.sizes().items())
        start = f"Data: {self.data_dir} ({data.source}, {len(data.class_names)} classes; {sizes})\n{describe(recipe)}"
        splits = {name: _labeled(split, data.class_names) for name, split in scored.splits.items()}
        return PreparedRun(model, meta, _labeled(data.splits["train"], data.class_names), splits, self.watch, start)

    def _data(self, channels: int) -> tuple[ClassData, ClassData]:
        """The data to train on, and the data to score: every split at the size the model reads
        (the training images may be kept larger for random crops), as `classify evaluate` reads them."""
        recipe, size = self.recipe, tuple(self.recipe.input_size)
        data = load_data(self.data_dir, size, channels, recipe.split, recipe.seed, self.cache_dir, train_size=_load_size(recipe))
        if _load_size(recipe) == size:
            return data, data
        train_at_size = load_data(self.data_dir, size, channels, recipe.split, recipe.seed, self.cache_dir).splits["train"]
        return data, replace(data, splits={**data.splits, "train": train_at_size})

    def stages(self) -> list[Stage]:
        return [_trainer_stage(stage) for stage in self.recipe.stages]

    def inputs(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.augment is not None:
            batch = torch.stack([self.augment(image) for image in batch])
        return normalize_batch(batch, META_MEAN, META_STD)

    def _scores(self, loss: float, logits: torch.Tensor, targets: torch.Tensor) -> ClassScores:
        read, truth = logits.reshape(len(targets), -1).numpy(), targets.reshape(-1).numpy()
        return ClassScores(loss, topk_accuracy(read, truth, 1), topk_accuracy(read, truth, 3), len(truth), read)

    def train_scores(self, loss_sum: float, logits: torch.Tensor, split: LabeledImages, index: torch.Tensor) -> ClassScores:
        """The epoch's scores, summed over every process when training is distributed."""
        local = self._scores(0.0, logits, split.targets[index])
        n = local.samples
        sums = dist.all_reduce_sum([loss_sum, float(n), float(round(local.top1 * n)), float(round(local.top3 * n))])
        seen = max(sums[1], 1)
        return ClassScores(sums[0] / seen, sums[2] / seen, sums[3] / seen, int(sums[1]), local.logits)

    def eval_scores(self, loss: float, logits: torch.Tensor, split: LabeledImages) -> ClassScores:
        return self._scores(loss, logits, split.targets)

    def epoch_lines(self, epoch: int, epochs: int, stage: Stage, train: ClassScores, val: ClassScores | None, elapsed: float,
                    seconds: float) -> list[str]:
        watched = f"  |  {self.watch} {val.line()}" if val is not None else ""
        return [f"[{stage.name}] epoch {epoch}/{epochs}  train {train.line()}{watched}  ({seconds:.1f}s)"]

    def write_history(self, path: Path, history: list[dict]) -> None:
        """metrics.csv: one row per epoch and phase (and stage, in a run of several)."""
        staged = any("stage" in r for r in history)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch"] + ["stage"] * staged + ["phase", "samples", "loss", "top1", "top3", "elapsed_s", "lr"])
            for r in history:
                writer.writerow([r["epoch"]] + [r.get("stage", "")] * staged + [r["phase"], r["samples"], f"{r['loss']:.6f}",
                                 f"{r['top1']:.6f}", f"{r['top3']:.6f}", r["elapsed"], f"{r['lr']:.6g}"])

    def pictures(self, run_dir: Path, history: list[dict], split: str, images: LabeledImages, scores: ClassScores, board) -> None:
        """Learning curves and the class confusion matrix of `split`."""
        from captcha.plots import confusion_matrix_image, learning_curves

        fmt = self.options.plot_format
        learning_curves(history, run_dir / f"learning_curves.{fmt}", metric="top1", metric_label="top-1 accuracy")
        matrix = np.asarray(classification_metrics(scores.logits, images.targets.view(-1).numpy(), self.class_names)["confusion_matrix"])
        confusion_matrix_image(matrix, self.class_names, run_dir / f"confusion_matrix.{fmt}", title=f"{split} split: {int(matrix.sum())} images")

    def final_lines(self, best_epoch: int, best_score: float, scores: dict[str, ClassScores], seconds: float, run_dir: Path) -> list[str]:
        shown = "  ".join(f"{k} top1 {v.top1 * 100:.2f}% top3 {v.top3 * 100:.2f}%" for k, v in scores.items())
        return [f"Best checkpoint (epoch {best_epoch}): {shown}", f"Run saved in {run_dir} ({seconds:.1f}s)"]


def train_classifier(
    data_dir: str | Path,
    out: str | Path,
    recipe: Recipe,
    weights: str | Path | None = None,
    device: str = "auto",
    cache_dir: str | Path | None | bool = None,
    log: Callable[[str], None] = print,
    resume: bool = False,
    ema: float = 0.0,
) -> RunResult:
    """Train `recipe` on `data_dir` with the one trainer, keeping the best (by val top-1) and last
    checkpoints in `out`; returns the trainer's `RunResult`."""
    return fit(ClassificationTask(data_dir, out, recipe, weights, device, cache_dir, resume, ema), log=log)
