"""Logits -> text and confidences. NumPy only, so the server needs no torch.

Fixed heads give logits [B, L, C]; a CTC head gives [B, T, C + 1] with class 0 the blank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Prediction:
    text: str
    confidence: float  # probability that the whole string is right: product of char confidences
    char_confidences: list[float]

    def as_dict(self) -> dict:
        return {"text": self.text, "confidence": self.confidence, "char_confidences": self.char_confidences}


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def unsmooth(probs: np.ndarray, label_smoothing: float, classes: int) -> np.ndarray:
    """Probabilities of a head trained with label smoothing `s`, back on the 0-1 scale of an
    unsmoothed one: smoothing trains a sure reading towards 1 - s + s / classes (0.806 at 0.2 over
    36 symbols, so a sure 4-character string would read 0.42), and (p - s / classes) / (1 - s)
    maps that back to 1, while chance (1 / classes) stays where it is."""
    if not label_smoothing:
        return probs
    return np.clip((probs - label_smoothing / classes) / (1.0 - label_smoothing), 0.0, 1.0)


def label_smoothing_of(meta: dict[str, Any]) -> float:
    """The label smoothing by which decoding rescales a model's confidences to the 0-1 scale
    (`unsmooth`): the training value of a per-character recognizer; 0 for a CTC head (its loss
    takes none), a classifier (its top-k probabilities stay the softmax's, whatever its recipe's
    smoothing) and an older checkpoint."""
    config = meta.get("config") or {}
    if meta.get("task") != "recognition" or (meta.get("head") or config.get("head")) == "ctc":
        return 0.0
    return float(config.get("label_smoothing") or 0.0)


def decode_fixed(logits: np.ndarray, alphabet: str, label_smoothing: float = 0.0) -> list[Prediction]:
    probs = softmax(logits.astype(np.float64))
    idx = probs.argmax(axis=-1)
    conf = unsmooth(probs.max(axis=-1), label_smoothing, probs.shape[-1])
    return [
        Prediction("".join(alphabet[i] for i in row), float(np.prod(c)), [round(float(x), 6) for x in c])
        for row, c in zip(idx, conf)
    ]


def ctc_greedy(logits: np.ndarray) -> list[tuple[list[int], list[float]]]:
    """Best path per sample: collapse repeats, drop blanks (0). Returns (classes, confidences)."""
    probs = softmax(logits.astype(np.float64))
    best = probs.argmax(axis=-1)
    out = []
    for path, p in zip(best, probs):
        classes, confs, prev = [], [], 0
        for t, k in enumerate(path):
            if k != 0 and k != prev:
                classes.append(int(k) - 1)
                confs.append(float(p[t, k]))
            elif k != 0 and k == prev and confs:
                confs[-1] = max(confs[-1], float(p[t, k]))
            prev = k
        out.append((classes, confs))
    return out


def decode_ctc(logits: np.ndarray, alphabet: str) -> list[Prediction]:
    return [
        Prediction("".join(alphabet[i] for i in classes), float(np.prod(confs)) if confs else 0.0, [round(c, 6) for c in confs])
        for classes, confs in ctc_greedy(logits)
    ]


def decode(logits: np.ndarray, alphabet: str, head: str = "fixed", label_smoothing: float = 0.0) -> list[Prediction]:
    """Text and confidences; `label_smoothing` is the model's training value (its checkpoint's
    `config.label_smoothing`, its ONNX file's `label_smoothing`), which the CTC loss never takes."""
    return decode_ctc(logits, alphabet) if head == "ctc" else decode_fixed(logits, alphabet, label_smoothing)
