"""Pictures people would rather look at than read: learning curves, preview grids, confusion
matrices, misread images. Drawn with OpenCV alone."""

from __future__ import annotations

import difflib
from pathlib import Path

import cv2
import numpy as np

from captcha.imageio import write_image

_COLORS = [(200, 90, 30), (40, 140, 240), (60, 170, 60), (40, 40, 200), (150, 60, 150)]
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _line_panel(title: str, series: dict[str, list[float]], size=(420, 560), y_range=None) -> np.ndarray:
    h, w = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 60, 20, 40, 45
    cv2.putText(img, title, (left, 25), _FONT, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    values = [v for s in series.values() for v in s if np.isfinite(v)]
    if not values:
        return img
    lo, hi = y_range if y_range else (min(values), max(values))
    if hi - lo < 1e-9:
        hi = lo + 1.0
    n = max(len(s) for s in series.values())
    cv2.rectangle(img, (left, top), (w - right, h - bottom), (0, 0, 0), 1)

    def to_px(i: int, v: float) -> tuple[int, int]:
        x = left + (i / max(n - 1, 1)) * (w - left - right)
        y = h - bottom - (v - lo) / (hi - lo) * (h - top - bottom)
        return int(round(x)), int(round(y))

    for k in range(5):
        v = lo + (hi - lo) * k / 4
        _, y = to_px(0, v)
        cv2.line(img, (left, y), (w - right, y), (225, 225, 225), 1)
        cv2.putText(img, f"{v:.3g}", (5, y + 4), _FONT, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
    for k in range(min(n, 6)):
        i = round(k * (n - 1) / max(min(n, 6) - 1, 1))
        x, _ = to_px(i, lo)
        cv2.putText(img, str(i + 1), (x - 5, h - bottom + 18), _FONT, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
    cv2.putText(img, "epoch", (w // 2 - 20, h - 8), _FONT, 0.45, (60, 60, 60), 1, cv2.LINE_AA)
    # The legend goes where the curves end up not being: at the bottom when they end high (accuracy).
    ends = [s[-1] for s in series.values() if s and np.isfinite(s[-1])]
    legend_top = top + 20 if not ends or np.mean(ends) < (lo + hi) / 2 else h - bottom - 12 - 18 * (len(series) - 1)
    for j, (name, s) in enumerate(series.items()):
        color = _COLORS[j % len(_COLORS)]
        pts = np.array([to_px(i, v) for i, v in enumerate(s) if np.isfinite(v)], np.int32)
        if len(pts) > 1:
            cv2.polylines(img, [pts], False, color, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, tuple(int(c) for c in p), 3, color, -1, cv2.LINE_AA)
        cv2.putText(img, name, (w - right - 110, legend_top + 18 * j), _FONT, 0.5, color, 1, cv2.LINE_AA)
    return img


def learning_curves(history: list[dict], out: str | Path, metric: str = "sequence_accuracy", metric_label: str = "whole-string accuracy") -> Path:
    """Loss and `metric` per epoch for each phase, side by side, saved as PNG."""
    phases = sorted({row["phase"] for row in history}, key=["train", "val"].index if all(r["phase"] in ("train", "val") for r in history) else str)
    loss = {p: [r["loss"] for r in history if r["phase"] == p] for p in phases}
    acc = {p: [r[metric] for r in history if r["phase"] == p] for p in phases}
    img = np.concatenate([_line_panel("loss", loss), _line_panel(metric_label, acc, y_range=(0.0, 1.0))], axis=1)
    return write_image(out, img)


def image_grid(rows: list[list[np.ndarray]], labels: list[str] | None = None, scale: int = 2, pad: int = 4) -> np.ndarray:
    """Tile uint8 images (gray or BGR) row by row, each row optionally captioned on the left."""
    def bgr(a: np.ndarray) -> np.ndarray:
        a = a if a.ndim == 3 else a[:, :, None]
        return cv2.cvtColor(a, cv2.COLOR_GRAY2BGR) if a.shape[2] == 1 else a

    cells = [[cv2.resize(bgr(c), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) for c in row] for row in rows]
    ch = max(c.shape[0] for row in cells for c in row)
    cw = max(c.shape[1] for row in cells for c in row)
    caption_w = 120 if labels else 0
    ncols = max(len(r) for r in cells)
    grid = np.full((len(cells) * (ch + pad) + pad, caption_w + ncols * (cw + pad) + pad, 3), 255, np.uint8)
    for r, row in enumerate(cells):
        y = pad + r * (ch + pad)
        if labels:
            cv2.putText(grid, labels[r][:14], (4, y + ch // 2 + 5), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        for c, cell in enumerate(row):
            x = caption_w + pad + c * (cw + pad)
            grid[y : y + cell.shape[0], x : x + cell.shape[1]] = cell
    return grid


def marked_prediction(truth: str, predicted: str) -> list[tuple[str, bool]]:
    """The prediction as (character, wrong) pairs for a caption: position by position when the
    lengths agree; otherwise aligned to the truth, a missing character shown as a wrong `_`."""
    if len(truth) == len(predicted):
        return [(p, p != t) for t, p in zip(truth, predicted)]
    marks: list[tuple[str, bool]] = []
    for op, t0, t1, p0, p1 in difflib.SequenceMatcher(None, truth, predicted, autojunk=False).get_opcodes():
        if op == "equal":
            marks += [(ch, False) for ch in predicted[p0:p1]]
        else:  # replace, insert: the predicted characters are wrong; delete: the truth's are missing
            marks += [(ch, True) for ch in predicted[p0:p1]] + [("_", True)] * max(0, (t1 - t0) - (p1 - p0))
    return marks


def misread_grid(items: list[tuple[np.ndarray, str, str]], out: str | Path, columns: int = 4, scale: int = 2) -> Path:
    """Tile (image, truth, prediction) triples, each captioned `truth -> prediction` underneath,
    with the characters that differ in red."""
    if not items:
        raise ValueError("no misread images to draw")
    cells = []
    for image, truth, predicted in items:
        image = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        cell = cv2.copyMakeBorder(image, 0, 24, 0, 0, cv2.BORDER_CONSTANT, value=(255, 255, 255))
        x = 4
        for text, color in [(truth, (0, 0, 0)), (" -> ", (0, 0, 0))] + [
            (ch, (0, 0, 220) if wrong else (0, 0, 0)) for ch, wrong in marked_prediction(truth, predicted)
        ]:
            cv2.putText(cell, text, (x, cell.shape[0] - 7), _FONT, 0.55, color, 1, cv2.LINE_AA)
            x += cv2.getTextSize(text, _FONT, 0.55, 1)[0][0]
        cells.append(cell)
    grid = image_grid([cells[i : i + columns] for i in range(0, len(cells), columns)], scale=1)
    return write_image(out, grid)


def confusion_matrix_image(matrix: np.ndarray, names: list[str], out: str | Path, cell: int = 28) -> Path:
    """A row-normalised confusion matrix as a heat map (rows: true, columns: predicted)."""
    k = len(names)
    norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    margin = 90
    img = np.full((margin + k * cell + 10, margin + k * cell + 10, 3), 255, np.uint8)
    for i in range(k):
        for j in range(k):
            shade = int(255 - 220 * norm[i, j])
            y, x = margin + i * cell, margin + j * cell
            cv2.rectangle(img, (x, y), (x + cell - 1, y + cell - 1), (255, shade, shade) if i != j else (shade, 255, shade), -1)
            if matrix[i, j]:
                cv2.putText(img, str(int(matrix[i, j])), (x + 2, y + cell // 2 + 4), _FONT, 0.3, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, names[i][:10], (2, margin + i * cell + cell // 2 + 4), _FONT, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, names[i][:3], (margin + i * cell + 2, margin - 8), _FONT, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "true \\ predicted", (2, 20), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return write_image(out, img)
