"""Accuracy measures for recognition: per character, whole string, and confusions."""

from __future__ import annotations

from collections import Counter

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
