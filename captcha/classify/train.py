"""Train and evaluate classifiers: one loop for every recipe, the CAPTCHA artifact contract.

A run directory holds `best.pt` / `last.pt` (checkpoints with meta, loadable by
`captcha.checkpoint.load_model`), `history.json` (one row per epoch and phase: stage, epoch,
phase, loss, top1, top3), `curves.png` (loss and top-1 per phase) and `metrics.json`.

Images stay uint8 until a batch is built; the meta's normalisation is x / 255 and the model's
own `ChannelNormalize` layer applies the per-channel (ImageNet) mean/std, so export and serving
read the same numbers with no extra code.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from captcha import checkpoint as ckpt
from captcha.classify.data import ClassData, Split, eval_split, find_mnist, load_data, preprocessor_for
from captcha.metrics import classification_metrics, topk_accuracy
from captcha.classify.models import load_pretrained, set_backbone_trainable
from captcha.classify.recipes import Recipe, Stage, describe, recipe_from_dict
from captcha.data import DataError
from captcha.models import create_model
from captcha.train import normalize_batch, predict_logits, resolve_device

# The meta's normalisation: pixels / 255; per-channel mean/std live in the model.
META_MEAN, META_STD = 0.0, 1.0


@dataclass
class RunResult:
    run_dir: Path
    history: list[dict[str, Any]]
    metrics: dict[str, dict[str, float]]  # split -> {"loss", "top1", "top3"} of the best checkpoint
    seconds: float


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


def _lr_lambda(stage: Stage, steps_per_epoch: int) -> Callable[[int], float]:
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


def _optimizer(stage: Stage, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if stage.optimizer == "adam":
        return torch.optim.Adam(params, lr=stage.lr, weight_decay=stage.weight_decay)
    if stage.optimizer == "sgd":
        return torch.optim.SGD(params, lr=stage.lr, momentum=stage.momentum, weight_decay=stage.weight_decay)
    raise ValueError(f"unknown optimizer {stage.optimizer!r}; choose from adam, sgd")


def _train_epoch(model, split: Split, recipe: Recipe, stage: Stage, optimizer, scheduler, augment, device, generator, desc: str) -> dict[str, float]:
    model.train()
    if stage.freeze_backbone:
        model.backbone.eval()  # frozen means frozen: BatchNorm statistics stay as loaded
    order = torch.randperm(len(split), generator=generator)
    bar = tqdm(total=math.ceil(len(split) / recipe.batch_size), desc=desc, unit="step", leave=False, disable=None)  # None: terminal only
    total_loss, logits_all, targets_all = 0.0, [], []
    for start in range(0, len(split), recipe.batch_size):
        idx = order[start : start + recipe.batch_size]
        images = split.images[idx]
        if augment is not None:
            images = torch.stack([augment(im) for im in images])
        x = normalize_batch(images.to(device), META_MEAN, META_STD)
        y = split.targets[idx].to(device)
        logits = model(x)[:, 0, :]
        loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(idx)
        logits_all.append(logits.detach().float().cpu())
        targets_all.append(y.cpu())
        bar.update()
        if not bar.disable:
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    bar.close()
    logits_np, targets_np = torch.cat(logits_all).numpy(), torch.cat(targets_all).numpy()
    n = max(len(targets_np), 1)
    return {"loss": total_loss / n, "top1": topk_accuracy(logits_np, targets_np, 1), "top3": topk_accuracy(logits_np, targets_np, 3)}


def predict(model: nn.Module, split: Split, batch_size: int = 256) -> np.ndarray:
    """Logits [N, K] of a split, no augmentation (the serving path: x / 255 into the model)."""
    if len(split) == 0:
        return np.zeros((0, 0), np.float32)
    return predict_logits(model, split.images, batch_size, mean=META_MEAN, std=META_STD)[:, 0, :].numpy()


def split_scores(model: nn.Module, split: Split) -> dict[str, float]:
    """Loss (plain cross-entropy), top-1 and top-3 of one split."""
    if len(split) == 0:
        return {"loss": float("nan"), "top1": float("nan"), "top3": float("nan")}
    logits = predict(model, split)
    loss = F.cross_entropy(torch.from_numpy(logits), split.targets).item()
    targets = split.targets.numpy()
    return {"loss": loss, "top1": topk_accuracy(logits, targets, 1), "top3": topk_accuracy(logits, targets, 3)}


def _fmt(scores: dict[str, float]) -> str:
    return f"loss {scores['loss']:.4f} top1 {scores['top1'] * 100:6.2f}% top3 {scores['top3'] * 100:6.2f}%"


def train_classifier(
    data_dir: str | Path,
    out: str | Path,
    recipe: Recipe,
    weights: str | Path | None = None,
    device: str = "auto",
    cache_dir: str | Path | None | bool = None,
    log: Callable[[str], None] = print,
) -> RunResult:
    """Train `recipe` on `data_dir`, saving the best (by val top-1) and last checkpoints in `out`."""
    started = time.perf_counter()
    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed)
    dev = resolve_device(device)
    channels = recipe.channels or _default_channels(data_dir, recipe.model)
    data = load_data(data_dir, tuple(recipe.input_size), channels, recipe.split, recipe.seed, cache_dir, train_size=_load_size(recipe))
    # Scores read every split at the size the model reads (the training images above may be kept
    # larger for random crops): the same images `classify evaluate` reads.
    scored = data
    if _load_size(recipe) != tuple(recipe.input_size):  # only the training images are read again; val and test are shared
        train_at_size = load_data(data_dir, tuple(recipe.input_size), channels, recipe.split, recipe.seed, cache_dir).splits["train"]
        scored = replace(data, splits={**data.splits, "train": train_at_size})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_args = model_args_for(recipe, len(data.class_names), channels)
    model = create_model(recipe.model, **model_args)
    if weights is not None:
        skipped = load_pretrained(model, recipe.model, weights)
        log(f"Loaded ImageNet weights from {weights}" + (f" (left out: {', '.join(skipped)})" if skipped else ""))
    model.to(dev)
    norm = model.backbone.normalize
    meta = ckpt.make_meta(
        task="classification", model_name=recipe.model, model_args=model_args, input_size=tuple(recipe.input_size),
        channels=channels, preprocess=preprocessor_for(channels), mean=META_MEAN, std=META_STD,
        class_names=data.class_names, length=1,
        config={"recipe": recipe.to_dict(), "data": str(Path(data_dir).resolve()), "source": data.source, "sizes": data.sizes(), "weights": str(weights) if weights else None},
    )
    meta["input_normalization"] = {"mean": norm.mean.flatten().tolist(), "std": norm.std.flatten().tolist(), "applied_in": "model"}
    meta["parameters"] = sum(p.numel() for p in model.parameters())
    sizes = ", ".join(f"{k} {v}" for k, v in data.sizes().items())
    log(f"Data: {data_dir} ({data.source}, {len(data.class_names)} classes; {sizes})")
    log(describe(recipe))
    augment = _augmenter(recipe, channels)
    generator = torch.Generator().manual_seed(recipe.seed)
    watch = "val" if len(data.splits["val"]) else "train"
    history: list[dict[str, Any]] = []
    best, epoch_no, total_epochs = -1.0, 0, sum(s.epochs for s in recipe.stages)
    for stage in recipe.stages:
        set_backbone_trainable(model, not stage.freeze_backbone)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = _optimizer(stage, params)
        steps = math.ceil(len(data.splits["train"]) / recipe.batch_size)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(stage, steps))
        for epoch in range(1, stage.epochs + 1):
            epoch_no += 1
            t0 = time.perf_counter()
            train = _train_epoch(model, data.splits["train"], recipe, stage, optimizer, scheduler, augment, dev, generator, f"{stage.name} {epoch}/{stage.epochs}")
            val = split_scores(model, scored.splits[watch])
            for phase, scores in (("train", train), ("val", val)):
                history.append({"stage": stage.name, "epoch": epoch_no, "phase": phase, **scores})
            log(f"[{stage.name}] epoch {epoch_no}/{total_epochs}  train {_fmt(train)}  |  {watch} {_fmt(val)}  ({time.perf_counter() - t0:.1f}s)")
            if val["top1"] > best:
                best = val["top1"]
                meta["metrics"] = {"best_epoch": epoch_no, "stage": stage.name, watch: val}
                ckpt.save_checkpoint(out / ckpt.BEST, model, meta)
    set_backbone_trainable(model, True)
    ckpt.save_checkpoint(out / ckpt.LAST, model, meta, history=history)
    (out / "history.json").write_text(json.dumps(history, indent=1))
    from captcha.plots import learning_curves

    learning_curves(history, out / "curves.png", metric="top1", metric_label="top-1 accuracy")
    best_model, _ = ckpt.load_model(out / ckpt.BEST, dev)
    final = {name: split_scores(best_model, split) for name, split in scored.splits.items() if len(split)}
    seconds = time.perf_counter() - started
    (out / "metrics.json").write_text(json.dumps({"best": meta["metrics"], "splits": final, "seconds": seconds}, indent=1))
    log(f"Best checkpoint (epoch {meta['metrics']['best_epoch']}): " + "  ".join(f"{k} top1 {v['top1'] * 100:.2f}% top3 {v['top3'] * 100:.2f}%" for k, v in final.items()))
    log(f"Run saved in {out} ({seconds:.1f}s)")
    return RunResult(out, history, final, seconds)


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


def evaluate_run(run: str | Path, data_dir: str | Path, split: str | None = None, device: str = "auto", cache_dir: str | Path | None | bool = None) -> dict[str, Any]:
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
