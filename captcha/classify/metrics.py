"""Classification metrics: top-k accuracy, confusion matrix, precision/recall/F1 per class.

Plain NumPy, so training needs no scikit-learn; the definitions match scikit-learn's
(`precision_recall_fscore_support` with zero_division=0, `classification_report`), which
the tests check on a fixed prediction set.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def topk_accuracy(logits: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Fraction of rows whose target is among the k largest logits ([N, K] or [N, 1, K])."""
    logits = np.asarray(logits).reshape(len(targets), -1)
    if len(targets) == 0:
        return 0.0
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float((top == np.asarray(targets)[:, None]).any(axis=1).mean())


def confusion_matrix(targets: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [true, predicted], int64 K x K."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(targets, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def per_class_scores(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix (0 where undefined)."""
    tp = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


def classification_metrics(logits: np.ndarray, targets: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Everything a report prints: top-1/top-3, macro and weighted P/R/F1, per-class rows, matrix."""
    logits = np.asarray(logits).reshape(len(targets), -1)
    targets = np.asarray(targets, dtype=np.int64)
    predictions = logits.argmax(axis=1) if len(targets) else np.zeros(0, np.int64)
    matrix = confusion_matrix(targets, predictions, len(class_names))
    scores = per_class_scores(matrix)
    support = scores["support"]
    weights = support / max(support.sum(), 1)
    out: dict[str, Any] = {
        "samples": int(len(targets)),
        "top1": topk_accuracy(logits, targets, 1),
        "top3": topk_accuracy(logits, targets, 3),
    }
    for name in ("precision", "recall", "f1"):
        out[f"{name}_macro"] = float(scores[name].mean()) if len(class_names) else 0.0
        out[f"{name}_weighted"] = float((scores[name] * weights).sum())
    out["per_class"] = {
        c: {"precision": float(scores["precision"][i]), "recall": float(scores["recall"][i]), "f1": float(scores["f1"][i]), "support": int(support[i])}
        for i, c in enumerate(class_names)
    }
    out["confusion_matrix"] = matrix.tolist()
    return out


def format_report(metrics: dict[str, Any], digits: int = 2) -> str:
    """A table laid out like scikit-learn's `classification_report`, plus top-1/top-3."""
    names = list(metrics["per_class"])
    width = max([len(n) for n in names] + [len("weighted avg")])
    head = f"{'':>{width}s} {'precision':>9s} {'recall':>9s} {'f1-score':>9s} {'support':>9s}"
    lines = [head, ""]
    for n in names:
        r = metrics["per_class"][n]
        lines.append(f"{n:>{width}s} {r['precision']:>9.{digits}f} {r['recall']:>9.{digits}f} {r['f1']:>9.{digits}f} {r['support']:>9d}")
    total = metrics["samples"]
    lines += ["", f"{'accuracy':>{width}s} {'':>9s} {'':>9s} {metrics['top1']:>9.{digits}f} {total:>9d}"]
    for label, key in (("macro avg", "macro"), ("weighted avg", "weighted")):
        lines.append(
            f"{label:>{width}s} {metrics[f'precision_{key}']:>9.{digits}f} {metrics[f'recall_{key}']:>9.{digits}f} "
            f"{metrics[f'f1_{key}']:>9.{digits}f} {total:>9d}"
        )
    lines += ["", f"top-1 {metrics['top1'] * 100:.2f}%   top-3 {metrics['top3'] * 100:.2f}%"]
    return "\n".join(lines)
