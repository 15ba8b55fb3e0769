"""Use a trained run: predict images and evaluate labeled folders.

Images go through the same decode (`captcha.imageio`) and preprocessor (`captcha.preprocess`) as
in training and serving; the checkpoint's meta says which preprocessor, size and alphabet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from captcha.alphabet import Alphabet
from captcha.checkpoint import load_model
from captcha.data import LAYOUT_HINT, SPLITS, DataError, Sample, check_labels, has_split_folders, load_images, load_splits, scan_folder
from captcha.decoding import Prediction, decode, label_smoothing_of
from captcha.imageio import decode_image, read_image_file
from captcha.metrics import confused_pairs, per_char_accuracy, sequence_accuracy
from captcha.preprocess import get_preprocessor
from captcha.runtime import encode_labels, loss_fn, predict_logits, resolve_device
from captcha.tta import read_views


@dataclass
class Predictor:
    model: nn.Module
    meta: dict[str, Any]

    @classmethod
    def from_run(cls, path: str | Path, device: str = "auto") -> "Predictor":
        model, meta = load_model(path, resolve_device(device))
        return cls(model, meta)

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.meta["input_size"])

    def preprocess_bytes(self, data: bytes, source: str) -> np.ndarray:
        """Encoded image -> uint8 K x H x W, exactly as the training data was prepared."""
        return get_preprocessor(self.meta["preprocess"])(decode_image(data, source), self.size).transpose(2, 0, 1)

    def logits(self, images: np.ndarray) -> np.ndarray:
        norm = self.meta["normalization"]
        return predict_logits(self.model, torch.from_numpy(np.ascontiguousarray(images)), mean=norm["mean"], std=norm["std"]).numpy()

    def decode(self, logits: np.ndarray) -> list[Prediction]:
        labels = self.meta["alphabet"] if self.meta["task"] == "recognition" else self.meta["class_names"]
        return decode(logits, labels, self.meta.get("head", "fixed"), label_smoothing_of(self.meta))

    def predict_paths(self, paths: list[str | Path]) -> list[Prediction]:
        images = np.stack([self.preprocess_bytes(read_image_file(p), str(p)) for p in paths])
        return self.decode(self.logits(images))


def _trained_on(meta: dict[str, Any], folder: Path) -> bool:
    """Whether the run was trained on `folder` itself (a flat folder it split with its seed)."""
    data = (meta.get("config") or {}).get("data")
    return bool(data) and Path(data).resolve() == folder.resolve()


def _samples_to_score(meta: dict[str, Any], root: Path, split: str | None, problems: list[tuple[str, str]]) -> tuple[list[Sample], Path | str]:
    """The labeled images to score and where they are: a split folder (`test/` by default), the
    held-out part of the run's own flat folder, or a folder as it is."""
    if has_split_folders(root):
        split = split or ("test" if (root / "test").is_dir() else "val")
        folder = root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such data folder")
        return load_splits(root, problems=problems, require_train=False)[split], folder  # a labels.csv at the top labels the splits too
    if _trained_on(meta, root):  # the run's own flat folder: score its held-out part, not what it trained on
        split = split or "test"
        if split not in SPLITS:
            raise ValueError(f"--split must be one of {', '.join(SPLITS)}, not {split!r}")
        seed = (meta.get("config") or {}).get("seed", 0)
        return load_splits(root, seed=seed, problems=problems)[split], f"{root} ({split} part of the run's seeded 80/10/10 split)"
    folder = root / split if split else root
    return scan_folder(folder, problems), folder


def evaluate_folder(run: str | Path, data: str | Path, split: str | None = None, device: str = "auto", skip_bad: bool = False,
                    tta: int | None = None) -> dict[str, Any]:
    """Accuracy of a trained run on a labeled folder (its `test/` split when it has one); `tta`
    overrides the run's number of test-time views (`captcha.tta`)."""
    predictor = Predictor.from_run(run, device)
    if predictor.meta.get("task", "recognition") != "recognition":
        raise ValueError(f"{run}: a {predictor.meta['task']} run; `captcha classify evaluate` evaluates it")
    if tta is not None:
        read_views(predictor.model, tta)
    meta = predictor.meta
    problems: list[tuple[str, str]] = []
    samples, folder = _samples_to_score(meta, Path(data), split, problems)
    if not samples and not problems:
        raise DataError([(str(folder), "no labeled images found")], f"nothing to evaluate in {folder}", hint=LAYOUT_HINT)
    alphabet = Alphabet(meta["alphabet"])
    problems += check_labels(samples, alphabet, meta["length"])
    bad = {p for p, _ in problems}
    samples = [s for s in samples if str(s.path) not in bad]
    encoded = load_images(samples, meta["preprocess"], tuple(meta["input_size"]), cache_dir=False)
    problems += encoded.problems
    if problems and not skip_bad:
        raise DataError(sorted(problems), f"bad data in {folder}")
    labels = [s.label for s in encoded.samples]
    if not labels:
        raise DataError(sorted(problems), f"no usable images left in {folder} after leaving out the bad files (--skip-bad)", hint=None)
    logits = predictor.logits(encoded.images)
    texts = [p.text for p in predictor.decode(logits)]
    width = meta["length"] or max((len(t) for t in labels), default=1)
    targets = encode_labels(labels, alphabet, width)
    loss = loss_fn(torch.from_numpy(logits), targets, meta.get("head", "fixed")).item() if labels else float("nan")
    return {
        "run": str(run),
        "data": str(folder),
        "samples": len(labels),
        "loss": loss,
        "per_char_accuracy": per_char_accuracy(texts, labels, width),
        "sequence_accuracy": sequence_accuracy(texts, labels),
        "tta": meta.get("tta", 1) if tta is None else tta,
        "confused_pairs": [{"true": a, "predicted": b, "count": n} for a, b, n in confused_pairs(texts, labels)],
        "misread": [{"path": str(s.path), "label": s.label, "predicted": t} for s, t in zip(encoded.samples, texts) if t != s.label],
        "skipped": [{"path": p, "reason": r} for p, r in problems],
    }
