"""Score a trained classifier on a data folder: top-1/top-3, precision/recall/F1 per class and
overall, and the confusion matrix, for `captcha classify evaluate` and the SVM comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch.nn as nn

from captcha import checkpoint as ckpt
from captcha.classify.data import ClassData, Split, eval_split, load_data
from captcha.classify.recipes import recipe_from_dict
from captcha.data import DataError
from captcha.metrics import classification_metrics
from captcha.models.classifiers import META_MEAN, META_STD
from captcha.runtime import predict_logits, resolve_device


def predict(model: nn.Module, split: Split, batch_size: int = 256) -> np.ndarray:
    """Logits [N, K] of a split, no augmentation (the serving path: x / 255 into the model)."""
    if len(split) == 0:
        return np.zeros((0, 0), np.float32)
    return predict_logits(model, split.images, batch_size, mean=META_MEAN, std=META_STD)[:, 0, :].numpy()


def require_classification_run(run: str | Path, meta: dict[str, Any]) -> None:
    if meta.get("task") != "classification":
        raise ValueError(f"{run}: not a classification run (task {meta.get('task')!r}); `captcha evaluate` reads CAPTCHA runs")


def load_run_data(meta: dict[str, Any], data_dir: str | Path, cache_dir: str | Path | None | bool = None) -> ClassData:
    """A data folder read the way the run was trained (size, channels, split, seed); classes must match."""
    recipe = recipe_from_dict(meta["config"]["recipe"])
    data = load_data(data_dir, tuple(meta["input_size"]), meta["channels"], recipe.split, recipe.seed, cache_dir)
    if data.class_names != list(meta["class_names"]):
        missing = sorted(set(meta["class_names"]) - set(data.class_names))
        extra = sorted(set(data.class_names) - set(meta["class_names"]))
        raise DataError([(str(data_dir), f"classes differ from the run's: missing {missing}, unexpected {extra}")], "class mismatch", hint=None)
    return data


def evaluate_run(run: str | Path, data_dir: str | Path, split: str | None = None, device: str = "auto",
                 cache_dir: str | Path | None | bool = None) -> dict[str, Any]:
    """Top-1/top-3 and precision/recall/F1 (macro and per class) of a run on one split.

    The split defaults to `test` (or `val` when there is no test set); a confusion-matrix PNG
    is written next to the checkpoint.
    """
    from captcha.plots import confusion_matrix_image

    model, meta = ckpt.load_model(run, resolve_device(device))
    require_classification_run(run, meta)
    data = load_run_data(meta, data_dir, cache_dir)
    split = split or eval_split(data)
    if split not in data.splits or not len(data.splits[split]):
        raise ValueError(f"{data_dir}: the {split!r} split is empty")
    logits = predict(model, data.splits[split])
    metrics = classification_metrics(logits, data.splits[split].targets.numpy(), data.class_names)
    metrics["split"] = split
    run_dir = ckpt.resolve_checkpoint(run).parent
    image = confusion_matrix_image(np.asarray(metrics["confusion_matrix"]), data.class_names, run_dir / f"confusion_{split}.png")
    metrics["confusion_matrix_png"] = str(image)
    return metrics
