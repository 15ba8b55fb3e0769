"""R5's comparison: an RBF SVM on the network's penultimate-layer features vs the network.

The features are the input of the head's last linear layer (the pooled backbone output for an
fc top, the 1024-unit hidden layer for the Keras top, the last hidden layer of the MLP), read
with a forward hook, so the SVM sees exactly what the network's own classifier sees.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from captcha.checkpoint import load_model
from captcha.classify.data import Split
from captcha.classify.evaluate import load_run_data, predict, require_classification_run
from captcha.models.classifiers import META_MEAN, META_STD, penultimate_layer
from captcha.runtime import normalize_batch, resolve_device


@torch.no_grad()
def extract_features(model: nn.Module, split: Split, batch_size: int = 256) -> np.ndarray:
    """Penultimate-layer features [N, F] of a split (no augmentation)."""
    model.eval()
    device = next(model.parameters()).device
    captured: list[torch.Tensor] = []
    hook = penultimate_layer(model).register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach().float().cpu()))
    try:
        for start in range(0, len(split), batch_size):
            model(normalize_batch(split.images[start : start + batch_size].to(device), META_MEAN, META_STD))
    finally:
        hook.remove()
    return torch.cat(captured).numpy() if captured else np.zeros((0, 0), np.float32)


def svm_compare(
    run: str | Path,
    data_dir: str | Path,
    device: str = "auto",
    max_train: int | None = None,
    C: float = 1.0,
    seed: int = 0,
    cache_dir: str | Path | None | bool = None,
) -> dict[str, Any]:
    """Fit `SVC(kernel="rbf", gamma="scale")` on train features; accuracy per split, fit time.

    `max_train` caps the SVM's training set (a seeded subset): kernel SVMs scale
    quadratically, which matters on MNIST's 48000 images.
    """
    from sklearn.svm import SVC

    if max_train is not None and max_train < 2:  # checked before any features are extracted
        raise ValueError(f"--max-train must be at least 2 (an SVM needs images of two classes), not {max_train}")
    model, meta = load_model(run, resolve_device(device))
    require_classification_run(run, meta)
    data = load_run_data(meta, data_dir, cache_dir)
    splits = {k: v for k, v in data.splits.items() if len(v)}
    features = {k: extract_features(model, v) for k, v in splits.items()}
    targets = {k: v.targets.numpy() for k, v in splits.items()}
    x_train, y_train = features["train"], targets["train"]
    if max_train is not None and len(y_train) > max_train:
        keep = np.random.default_rng(seed).permutation(len(y_train))[:max_train]
        x_train, y_train = x_train[keep], y_train[keep]
    svm = SVC(kernel="rbf", gamma="scale", C=C)
    t0 = time.perf_counter()
    svm.fit(x_train, y_train)
    fit_seconds = time.perf_counter() - t0
    result: dict[str, Any] = {
        "features": int(x_train.shape[1]),
        "svm_train_samples": int(len(y_train)),
        "svm": {"fit_seconds": fit_seconds},
        "network": {},
    }
    for name in splits:
        result["svm"][name] = float((svm.predict(features[name]) == targets[name]).mean())
        result["network"][name] = float((predict(model, splits[name]).argmax(axis=1) == targets[name]).mean())
    return result


def format_comparison(result: dict[str, Any]) -> str:
    """A small Markdown table: accuracy per split for the SVM and the network."""
    splits = [k for k in ("train", "val", "test") if k in result["network"]]
    lines = [
        f"SVM (RBF, gamma='scale') on {result['features']}-d penultimate features, fit on {result['svm_train_samples']} images in {result['svm']['fit_seconds']:.2f}s",
        "",
        "| classifier | " + " | ".join(splits) + " |",
        "|---|" + "---:|" * len(splits),
    ]
    for who in ("network", "svm"):
        lines.append(f"| {who} | " + " | ".join(f"{result[who][s] * 100:.2f}%" for s in splits) + " |")
    return "\n".join(lines)
