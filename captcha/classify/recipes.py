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
from dataclasses import dataclass
from typing import Any

AUGMENTATIONS = ("none", "tricks", "finetune")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("none", "cosine")


@dataclass
class Stage:
    """One phase of training with its own optimiser."""

    name: str
    epochs: int
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    freeze_backbone: bool = False
    schedule: str = "none"
    warmup_epochs: int = 0


@dataclass
class Recipe:
    name: str
    stages: list[Stage]
    model: str = "mlp"
    top: str | None = None  # "fc" or "keras" for the ResNets
    activation: str | None = None  # hidden activation for mlp / cnn
    input_size: tuple[int, int] = (28, 28)
    channels: int | None = None  # None: 1 for MNIST, 3 otherwise
    batch_size: int = 64
    augment: str = "none"
    label_smoothing: float = 0.0
    seed: int = 0
    split: tuple[float, float] = (0.8, 0.2)

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

    Stage overrides: `epochs` and `lr` (a list: one value, or one per stage), `optimizer`,
    `momentum`, `weight_decay`, `schedule`, `warmup_epochs`, `freeze` ("backbone" freezes every
    stage, "none" none). `batch_size` given without `lr` rescales the `tricks` lr (0.1 x B/256).
    Every other key is a `Recipe` field.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    recipe = RECIPES[name]()
    overrides = {k: v for k, v in overrides.items() if v is not None}
    n = len(recipe.stages)
    epochs = _per_stage(overrides.pop("epochs", None), n, "epochs")
    lrs = _per_stage(overrides.pop("lr", None), n, "lr")
    freeze = overrides.pop("freeze", None)
    if freeze not in (None, "backbone", "none"):
        raise ValueError(f"--freeze takes 'backbone' or 'none', not {freeze!r}")
    stage_keys = {"optimizer": OPTIMIZERS, "momentum": None, "weight_decay": None, "schedule": SCHEDULES, "warmup_epochs": None}
    for i, stage in enumerate(recipe.stages):
        if epochs:
            stage.epochs = int(epochs[i])
            if "warmup_epochs" not in overrides:  # a recipe's own warm-up shrinks to fit fewer epochs (a short trial run)
                stage.warmup_epochs = min(stage.warmup_epochs, stage.epochs // 2)
        if lrs:
            stage.lr = float(lrs[i])
        elif name == "tricks" and "batch_size" in overrides:
            stage.lr = 0.1 * overrides["batch_size"] / 256
        if freeze is not None:
            stage.freeze_backbone = freeze == "backbone"
        for key, allowed in stage_keys.items():
            if key in overrides:
                if allowed and overrides[key] not in allowed:
                    raise ValueError(f"--{key.replace('_', '-')} takes one of {', '.join(allowed)}, not {overrides[key]!r}")
                setattr(stage, key, overrides[key])
    fields = {f.name for f in dataclasses.fields(Recipe)} - {"name", "stages"}
    for key, value in overrides.items():
        if key in stage_keys:
            continue
        if key not in fields:
            raise ValueError(f"unknown recipe setting {key!r}")
        if key in ("input_size", "split"):
            value = tuple(value)
        setattr(recipe, key, value)
    if recipe.augment not in AUGMENTATIONS:
        raise ValueError(f"--augment takes one of {', '.join(AUGMENTATIONS)}, not {recipe.augment!r}")
    _check_values(recipe)
    return recipe


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
