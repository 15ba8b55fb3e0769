"""The model registry: `@register_model` on small factory functions, `create_model(name, ...)`.

A factory takes `num_classes`, `length` (heads) and `in_channels`, plus its own keyword
arguments. `create_model` drops arguments left as None so CLI defaults never override a
model's own defaults. A recognizer registered with `heads=` supports only those heads (models
that end in a dense layer have no feature columns for attention or CTC).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_TASKS: dict[str, str] = {}
_HEADS: dict[str, tuple[str, ...] | None] = {}  # None: every head type


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None, task: str = "recognition",
                   heads: tuple[str, ...] | None = None):
    """Register a factory under its function name (or `name`). `task` groups models for listings;
    `heads` names the only head types the model supports (default: all)."""

    def wrap(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or f.__name__
        if key in _MODELS:
            raise ValueError(f"model {key!r} is already registered")
        _MODELS[key] = f
        _TASKS[key] = task
        _HEADS[key] = heads
        return f

    return wrap(fn) if fn is not None else wrap


def list_models(task: str | None = None) -> list[str]:
    return sorted(k for k in _MODELS if task is None or _TASKS[k] == task)


def supports_head(name: str, head: str) -> bool:
    """Whether model `name` can be built with `head` (fixed, attention or ctc)."""
    allowed = _HEADS.get(name)
    return allowed is None or head in allowed


def create_model(name: str, **kwargs: Any) -> nn.Module:
    try:
        factory = _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(list_models())}") from None
    head = kwargs.get("head")
    if head is not None and not supports_head(name, head):
        raise ValueError(f"{name} supports only --head {' or '.join(_HEADS[name])}, not {head!r}")
    return factory(**{k: v for k, v in kwargs.items() if v is not None})


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
