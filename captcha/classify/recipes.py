"""Named training recipes of the course reports; every value can be overridden.

A recipe is one or more stages (phases of training: e.g. frozen backbone, then fine-tuning),
each with its own optimiser, learning rate, epochs and freezing, plus the settings shared by
the whole run (model, top, input size, batch, augmentation, label smoothing, seed, split).

- `default`: one stage, Adam 1e-3, batch 64, 10 epochs (R2's setting with lr 0.05).
- `two-phase` (R3 recipe A): ResNet50 + Keras top; Adam 1e-3 with the backbone frozen, then
  Adam 1e-4 with everything trainable; 224x224.
- `tricks` (R3 recipe B): ResNet50 with fc replaced; resize 256 / crop 224 + flip; batch 64;
  SGD momentum 0.9, lr = 0.1 x batch / 256, linear warm-up then cosine decay; label smoothing
  0.1; seed 0; 8:2 split.
- `finetune` (R4): ResNet18; RandomResizedCrop, flip, ColorJitter(0.4, 0.4, 0.4, 0.1),
  RandomRotation(10), RandomGrayscale(0.2); SGD 1e-3 momentum 0.9; batch 32; 50 epochs.
- `probe` (R5): ResNet50, backbone frozen, new fc trained with Adam 1e-4.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from captcha.models.classifiers import ACTIVATIONS, CLASSIFIERS, TOPS
from captcha.options import choices_of, flag_of, option

AUGMENTATIONS = ("none", "tricks", "finetune")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("none", "cosine")
FREEZE = ("backbone", "none")  # `--freeze` in words: train only the head in every stage, or everything


@dataclass
class Stage:
    """One phase of training with its own optimiser. Its fields are `captcha classify train` flags
    that override every stage of a recipe (`epochs` and `lr` take one value per stage too)."""

    name: str = option(cli=False)
    epochs: int = option(help="epochs (one, or one per stage)", nargs="+", flag="--epochs")  # flag=: no default, yet a flag
    optimizer: str = option("adam", "update rule", choices=OPTIMIZERS)
    lr: float = option(1e-3, "learning rate (one, or one per stage)", nargs="+")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(0.0, "weight decay (an L2 penalty)")
    freeze_backbone: bool = option(False, "backbone: train only the head in every stage", flag="--freeze", type=str, choices=FREEZE)
    schedule: str = option("none", "learning-rate schedule after the warm-up", choices=SCHEDULES)
    warmup_epochs: int = option(0, "epochs of linear learning-rate warm-up at the start of each stage")


@dataclass
class Recipe:
    """A named recipe's settings for the whole run; its fields are `captcha classify train`
    flags that override the recipe's own values."""

    name: str = option(cli=False)
    stages: list[Stage] = option(cli=False)
    model: str = option("mlp", "classifier (default: the recipe's; mlp for default)", choices=CLASSIFIERS)
    top: str | None = option(None, "ResNet head: fc (replaced fc) or keras (Dense 1024 ReLU, Dense K)", choices=TOPS)
    activation: str | None = option(None, "hidden activation of mlp / cnn", choices=ACTIVATIONS)
    input_size: tuple[int, int] = option((28, 28), "model input size", metavar=("H", "W"))
    channels: int | None = option(None, "default: 1 for MNIST with mlp/cnn, else 3", choices=(1, 3))
    batch_size: int = option(64, "images per step")
    augment: str = option("none", "random augmentation of the training images", choices=AUGMENTATIONS)
    label_smoothing: float = option(0.0, "share of each target spread evenly over all classes")
    seed: int = option(0, "seed of the split, the initialisation and the order")
    split: tuple[float, float] = option((0.8, 0.2), "fractions of the unsplit pool (default 0.8 0.2; MNIST 48000/6000: 0.8 0.1)",
                                        metavar=("TRAIN", "VAL"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _default() -> Recipe:
    return Recipe("default", [Stage("train", 10, "adam", 1e-3)])


def _two_phase() -> Recipe:
    stages = [Stage("frozen", 10, "adam", 1e-3, freeze_backbone=True), Stage("finetune", 10, "adam", 1e-4)]
    return Recipe("two-phase", stages, model="resnet50", top="keras", input_size=(224, 224), batch_size=32)


def _tricks() -> Recipe:
    batch = 64
    stage = Stage("train", 30, "sgd", 0.1 * batch / 256, momentum=0.9, weight_decay=1e-4, schedule="cosine", warmup_epochs=5)
    return Recipe("tricks", [stage], model="resnet50", top="fc", input_size=(224, 224), batch_size=batch, augment="tricks", label_smoothing=0.1, seed=0)


def _finetune() -> Recipe:
    stage = Stage("train", 50, "sgd", 1e-3, momentum=0.9)
    return Recipe("finetune", [stage], model="resnet18_cls", top="fc", input_size=(224, 224), batch_size=32, augment="finetune")


def _probe() -> Recipe:
    stage = Stage("probe", 10, "adam", 1e-4, freeze_backbone=True)
    return Recipe("probe", [stage], model="resnet50", top="fc", input_size=(224, 224), batch_size=32)


RECIPES = {"default": _default, "two-phase": _two_phase, "tricks": _tricks, "finetune": _finetune, "probe": _probe}


def _per_stage(values: list | None, count: int, what: str) -> list | None:
    """One value for every stage, or one per stage."""
    if values is None:
        return None
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise ValueError(f"--{what} takes 1 value or {count} (one per stage), got {len(values)}")
    return list(values)


def build_recipe(name: str = "default", **overrides: Any) -> Recipe:
    """The named recipe with `overrides` applied (None means "keep the recipe's value").

    Keys are `Stage` fields, applied to every stage (`epochs` and `lr` a list: one value, or one
    per stage; `freeze` "backbone" freezes every stage, "none" none), and `Recipe` fields.
    `batch_size` given without `lr` rescales the `tricks` lr (0.1 x B/256).
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    recipe = RECIPES[name]()
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "freeze" in overrides:
        freeze = overrides.pop("freeze")
        if freeze not in FREEZE:
            raise ValueError(f"--freeze takes 'backbone' or 'none', not {freeze!r}")
        overrides["freeze_backbone"] = freeze == "backbone"
    stage_fields = {f.name: f for f in dataclasses.fields(Stage) if f.name != "name"}
    recipe_fields = {f.name: f for f in dataclasses.fields(Recipe) if f.name not in ("name", "stages")}
    unknown = sorted(set(overrides) - set(stage_fields) - set(recipe_fields))
    if unknown:
        raise ValueError(f"unknown recipe setting {unknown[0]!r}")
    _override_stages(recipe, {k: v for k, v in overrides.items() if k in stage_fields}, stage_fields, tricks_batch=overrides.get("batch_size") if name == "tricks" else None)
    for key, value in overrides.items():
        if key in recipe_fields:
            setattr(recipe, key, tuple(value) if key in ("input_size", "split") else value)
    if recipe.augment not in AUGMENTATIONS:
        raise ValueError(f"--augment takes one of {', '.join(AUGMENTATIONS)}, not {recipe.augment!r}")
    _check_values(recipe)
    return recipe


def _override_stages(recipe: Recipe, overrides: dict[str, Any], stage_fields: dict[str, dataclasses.Field], tricks_batch: int | None) -> None:
    """Set every stage's overridden values; a recipe's own warm-up shrinks to fit fewer epochs
    (a short trial run), and the `tricks` lr follows a new batch size (0.1 x B/256)."""
    hints = typing.get_type_hints(Stage)
    for key, value in overrides.items():
        allowed = choices_of(stage_fields[key]) if key != "freeze_backbone" else None
        if allowed and value not in allowed:
            raise ValueError(f"{flag_of(stage_fields[key])} takes one of {', '.join(allowed)}, not {value!r}")
    count = len(recipe.stages)
    per_stage = {k: _per_stage(v, count, k) for k, v in overrides.items() if stage_fields[k].metadata.get("nargs") == "+"}
    for i, stage in enumerate(recipe.stages):
        for key, value in overrides.items():
            setattr(stage, key, hints[key](per_stage[key][i]) if key in per_stage else value)
        if "epochs" in overrides and "warmup_epochs" not in overrides:
            stage.warmup_epochs = min(stage.warmup_epochs, stage.epochs // 2)
        if "lr" not in overrides and tricks_batch is not None:
            stage.lr = 0.1 * tricks_batch / 256


def _check_values(recipe: Recipe) -> None:
    """Refuse settings no run can use, naming the flag, before any data is read."""
    if recipe.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {recipe.batch_size}")
    if len(recipe.input_size) != 2 or min(recipe.input_size) < 1:
        raise ValueError(f"--input-size takes a height and a width of at least 1 pixel, got {recipe.input_size}")
    for stage in recipe.stages:
        if stage.epochs < 1:
            raise ValueError(f"--epochs must be at least 1 (stage {stage.name}: {stage.epochs})")
        if not stage.lr > 0:
            raise ValueError(f"--lr must be above 0 (stage {stage.name}: {stage.lr})")
        if stage.warmup_epochs >= stage.epochs and stage.warmup_epochs:
            raise ValueError(f"--warmup-epochs {stage.warmup_epochs} leaves no epoch of stage {stage.name} ({stage.epochs} epochs) "
                             f"after the warm-up: pass fewer than {stage.epochs}")


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """Inverse of `Recipe.to_dict` (for runs that read their recipe back from meta)."""
    data = dict(data)
    stages = [Stage(**s) for s in data.pop("stages")]
    data["input_size"], data["split"] = tuple(data["input_size"]), tuple(data["split"])
    return Recipe(stages=stages, **data)


def describe(recipe: Recipe) -> str:
    """One line per stage, for the start of a training log."""
    lines = [f"recipe {recipe.name}: model {recipe.model}" + (f" ({recipe.top} top)" if recipe.top and recipe.model.startswith("resnet") else "")
             + f", input {recipe.input_size[0]}x{recipe.input_size[1]}, batch {recipe.batch_size}, augment {recipe.augment}"
             + (f", label smoothing {recipe.label_smoothing}" if recipe.label_smoothing else "")]
    for s in recipe.stages:
        extra = f", {s.schedule} schedule" + (f" after {s.warmup_epochs} warm-up epochs" if s.warmup_epochs else "") if s.schedule != "none" else ""
        lines.append(f"  stage {s.name}: {s.epochs} epochs, {s.optimizer} lr {s.lr:g}"
                     + (f" momentum {s.momentum}" if s.optimizer == "sgd" else "")
                     + (", backbone frozen" if s.freeze_backbone else "") + extra)
    return "\n".join(lines)
