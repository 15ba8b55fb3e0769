"""A generated ImageFolder tree of coloured shapes: classification data that needs no download.

Used by the tests (easy: centred, large) and by `benchmarks/classify_bench.py` (hard: anywhere,
any size, a clutter line).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from captcha.imageio import write_image

SHAPES = ("circle", "cross", "ring", "square", "triangle")


def draw_shape(kind: str, rng: np.random.Generator, size: int, hard: bool = False) -> np.ndarray:
    """One uint8 BGR image of `kind` on a random light background."""
    img = np.full((size, size, 3), rng.integers(120 if hard else 170, 255, 3), np.uint8)
    if hard:
        p, q = rng.integers(0, size, 2), rng.integers(0, size, 2)
        cv2.line(img, tuple(int(v) for v in p), tuple(int(v) for v in q), tuple(int(v) for v in rng.integers(0, 255, 3)), 1)
    color = tuple(int(v) for v in rng.integers(0, 110, 3))
    lo, hi = (0.3, 0.7) if hard else (0.4, 0.6)
    cx, cy = (int(v) for v in rng.integers(int(size * lo), int(size * hi), 2))
    r = int(rng.integers(int(size * (0.12 if hard else 0.2)), int(size * (0.28 if hard else 0.3))))
    if kind == "circle":
        cv2.circle(img, (cx, cy), r, color, -1)
    elif kind == "ring":
        cv2.circle(img, (cx, cy), r, color, 2)
    elif kind == "square":
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), color, -1)
    elif kind == "triangle":
        cv2.fillPoly(img, [np.array([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], np.int32)], color)
    elif kind == "cross":
        cv2.line(img, (cx - r, cy - r), (cx + r, cy + r), color, 3)
        cv2.line(img, (cx - r, cy + r), (cx + r, cy - r), color, 3)
    else:
        raise ValueError(f"unknown shape {kind!r}; choose from {', '.join(SHAPES)}")
    return img


def write_shapes(root: str | Path, per_class: int, size: int = 36, seed: int = 0, hard: bool = False,
                 splits: bool = False, mixed_formats: bool = False) -> Path:
    """Write `root/<class>/NNNN.png` (or `root/{train,val,test}/<class>/...` with `splits`)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for kind in SHAPES:
        for i in range(per_class):
            split = ("train", "train", "val", "test")[i % 4] if splits else ""
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            ext = ".jpg" if mixed_formats and i % 3 == 0 else ".png"
            write_image(folder / f"{i:04d}{ext}", draw_shape(kind, rng, size, hard))
    return root
