"""The model registry: `@register_model` on small factory functions, `create_model(name, ...)`.

A factory takes `num_classes`, `length` (heads) and `in_channels`, plus its own keyword
arguments. `create_model` drops arguments left as None so CLI defaults never override a
model's own defaults. A recognizer registered with `heads=` supports only those heads (models
that end in a dense layer have no feature columns for attention or CTC). A model's shipped
weights are declared with it (`weights=`), as timm declares a model's pretrained configs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from captcha.constants import INPUT_SIZE


@dataclass(frozen=True)
class ShippedWeights:
    """A weights file in `captcha/weights/` and the preprocessor and head it was trained with.

    Its checkpoint meta holds the rest (alphabet, metrics); `recipe` says where the commands that
    regenerate it are written down."""

    file: str
    preprocess: str
    head: str
    recipe: str = "README.md#synthetic-pre-training"


@dataclass(frozen=True)
class ModelEntry:
    factory: Callable[..., nn.Module]
    task: str
    heads: tuple[str, ...] | None  # None: every head type
    weights: tuple[ShippedWeights, ...]
    input_size: tuple[int, int]  # (height, width) the model reads an image at unless --input-size says otherwise


_MODELS: dict[str, ModelEntry] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None, task: str = "recognition",
                   heads: tuple[str, ...] | None = None, weights: tuple[ShippedWeights, ...] = (),
                   input_size: tuple[int, int] = INPUT_SIZE):
    """Register a factory under its function name (or `name`). `task` groups models for listings;
    `heads` names the only head types the model supports (default: all); `weights` declares the
    files shipped for it; `input_size` is the size training resizes images to by default."""

    def wrap(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or f.__name__
        if key in _MODELS:
            raise ValueError(f"model {key!r} is already registered")
        _MODELS[key] = ModelEntry(f, task, heads, tuple(weights), tuple(input_size))
        return f

    return wrap(fn) if fn is not None else wrap


def list_models(task: str | None = None) -> list[str]:
    return sorted(k for k, entry in _MODELS.items() if task is None or entry.task == task)


def supports_head(name: str, head: str) -> bool:
    """Whether model `name` can be built with `head` (fixed, attention or ctc)."""
    entry = _MODELS.get(name)
    return entry is None or entry.heads is None or head in entry.heads


def default_input_size(name: str) -> tuple[int, int]:
    """The (height, width) model `name` reads an image at when training is given no --input-size."""
    entry = _MODELS.get(name)
    return entry.input_size if entry is not None else INPUT_SIZE


def shipped_weights(name: str | None = None) -> list[tuple[str, ShippedWeights]]:
    """(model, weights) for every weights file declared for model `name` (default: all models)."""
    return [(key, w) for key, entry in sorted(_MODELS.items()) if name in (None, key) for w in entry.weights]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    try:
        entry = _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(list_models())}") from None
    head = kwargs.get("head")
    if head is not None and not supports_head(name, head):
        raise ValueError(f"{name} supports only --head {' or '.join(entry.heads)}, not {head!r}")
    return entry.factory(**{k: v for k, v in kwargs.items() if v is not None})


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
