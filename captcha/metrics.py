"""Accuracy measures: per character, whole string and confusions for recognition; top-k,
precision/recall/F1 and the confusion matrix for classification (scikit-learn's definitions)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np


def per_char_counts(predicted: list[str], target: list[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Per position: how many labels have a character there, and how many of those were read
    right (a missing character counts as wrong). Positions past a shorter label are not counted."""
    hits, totals = np.zeros(length), np.zeros(length)
    for p, t in zip(predicted, target):
        for i in range(min(length, len(t))):
            totals[i] += 1
            hits[i] += i < len(p) and p[i] == t[i]
    return hits, totals


def per_char_accuracy(predicted: list[str], target: list[str], length: int) -> list[float]:
    """Fraction right at each position, among the labels that have a character there (all of
    them for fixed-length labels; for variable-length ones the later positions count fewer; 0 at a
    position no label reaches)."""
    hits, totals = per_char_counts(predicted, target, length)
    return [float(h / n) if n else 0.0 for h, n in zip(hits, totals)]


def sequence_accuracy(predicted: list[str], target: list[str]) -> float:
    """Fraction of CAPTCHAs whose every character is right."""
    if not target:
        return 0.0
    return float(np.mean([p == t for p, t in zip(predicted, target)]))


def confused_pairs(predicted: list[str], target: list[str], top: int = 10) -> list[tuple[str, str, int]]:
    """The most frequent (true symbol, predicted symbol, count) mistakes, position by position."""
    counts: Counter = Counter()
    for p, t in zip(predicted, target):
        if len(p) != len(t):
            continue
        for a, b in zip(t, p):
            if a != b:
                counts[(a, b)] += 1
    return [(a, b, n) for (a, b), n in counts.most_common(top)]


def format_accuracies(values: list[float]) -> str:
    return "[" + ", ".join(f"'{v * 100:.2f}%'" for v in values) + "]"


def symbol_confusion(predicted: list[str], target: list[str], symbols: str) -> np.ndarray:
    """Counts [true symbol, read symbol] over the positions of readings as long as their label."""
    from sklearn.metrics import confusion_matrix

    pairs = [(a, b) for p, t in zip(predicted, target) if len(p) == len(t) for a, b in zip(t, p)]
    index = {s: i for i, s in enumerate(symbols)}
    pairs = [(index[a], index[b]) for a, b in pairs if a in index and b in index]
    truth, read = (list(col) for col in zip(*pairs)) if pairs else ([], [])
    return confusion_matrix(truth, read, labels=range(len(symbols))) if pairs else np.zeros((len(symbols), len(symbols)), np.int64)


def topk_accuracy(logits: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Fraction of rows whose target is among the k largest logits ([N, K] or [N, 1, K])."""
    from sklearn.metrics import accuracy_score, top_k_accuracy_score

    targets = np.asarray(targets)
    if len(targets) == 0:
        return 0.0
    logits = np.asarray(logits, dtype=np.float64).reshape(len(targets), -1)
    classes = logits.shape[1]
    if k >= classes:
        return 1.0  # every class is among the top k
    if k == 1:
        return float(accuracy_score(targets, logits.argmax(axis=1)))
    return float(top_k_accuracy_score(targets, logits, k=k, labels=range(classes)))


def classification_metrics(logits: np.ndarray, targets: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Everything a report prints: top-1/top-3, macro and weighted precision/recall/F1, per-class
    rows and the confusion matrix, by scikit-learn (`zero_division=0`: an unpredicted class scores 0)."""
    from sklearn.metrics import classification_report, confusion_matrix

    targets = np.asarray(targets, dtype=np.int64)
    logits = np.asarray(logits).reshape(len(targets), -1)
    predictions = logits.argmax(axis=1) if len(targets) else np.zeros(0, np.int64)
    labels = list(range(len(class_names)))
    report = classification_report(targets, predictions, labels=labels, target_names=class_names, output_dict=True, zero_division=0)
    out: dict[str, Any] = {"samples": int(len(targets)), "top1": topk_accuracy(logits, targets, 1), "top3": topk_accuracy(logits, targets, 3)}
    for avg in ("macro", "weighted"):
        for name in ("precision", "recall", "f1"):
            out[f"{name}_{avg}"] = float(report[f"{avg} avg"]["f1-score" if name == "f1" else name])
    out["per_class"] = {
        c: {"precision": float(report[c]["precision"]), "recall": float(report[c]["recall"]), "f1": float(report[c]["f1-score"]),
            "support": int(report[c]["support"])}
        for c in class_names
    }
    out["confusion_matrix"] = confusion_matrix(targets, predictions, labels=labels).tolist()
    out["report"] = classification_report(targets, predictions, labels=labels, target_names=class_names, zero_division=0)
    return out


def format_report(metrics: dict[str, Any]) -> str:
    """scikit-learn's `classification_report` table, plus top-1/top-3."""
    return f"{metrics['report']}\ntop-1 {metrics['top1'] * 100:.2f}%   top-3 {metrics['top3'] * 100:.2f}%"
