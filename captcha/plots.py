"""Pictures people would rather look at than read.

Learning curves and confusion matrices are matplotlib figures (no display needed: a bare
`Figure` renders through Agg), written as PNG or, when the path ends in `.svg`, as SVG. Image
grids (preview, misread images) stay OpenCV: they tile pixels at their own size, which a plotting
library would only resample.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import cv2
import numpy as np

from captcha.imageio import write_image

_FONT = cv2.FONT_HERSHEY_SIMPLEX
PLOT_FORMATS = ("png", "svg")


def _save(figure, out: str | Path) -> Path:
    """Write a matplotlib figure; the suffix of `out` (.png or .svg) picks the format."""
    out = Path(out)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in PLOT_FORMATS:
        raise ValueError(f"{out}: plots are written as {' or '.join(PLOT_FORMATS)}, not {out.suffix or 'no suffix'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format=fmt, dpi=110, bbox_inches="tight")
    return out


def _phases(history: list[dict]) -> list[str]:
    known = ["train", "val"]
    return sorted({row["phase"] for row in history}, key=lambda p: (known.index(p) if p in known else len(known), p))


def _gapped(epochs: list[int], values: list[float]) -> tuple[list[float], list[float]]:
    """The points with a break (NaN) wherever epochs were skipped, so that a line joins only
    consecutive epochs: validation in the last third of a run is not drawn as a straight climb."""
    xs, ys = [], []
    for i, (epoch, value) in enumerate(zip(epochs, values)):
        if i and epoch > epochs[i - 1] + 1:
            xs.append(float("nan"))
            ys.append(float("nan"))
        xs.append(epoch)
        ys.append(value)
    return xs, ys


def learning_curves(history: list[dict], out: str | Path, metric: str = "sequence_accuracy", metric_label: str = "whole-string accuracy") -> Path:
    """Loss, accuracy (`metric` per phase, plus each character's validation accuracy where the
    rows carry `per_char_accuracy`) and the learning rate per epoch, side by side."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    phases = _phases(history)
    has_lr = any("lr" in row for row in history)
    figure = Figure(figsize=(15 if has_lr else 10, 4.2), layout="constrained")
    axes = figure.subplots(1, 3 if has_lr else 2)
    for phase in phases:
        rows = [r for r in history if r["phase"] == phase]
        epochs = [r["epoch"] for r in rows]
        axes[0].plot(*_gapped(epochs, [r["loss"] for r in rows]), marker=".", label=phase)
        axes[1].plot(*_gapped(epochs, [r[metric] for r in rows]), marker=".", linewidth=2, label=f"{phase} {metric_label}")
    val = [r for r in history if r["phase"] == "val" and r.get("per_char_accuracy")]
    for i in range(max((len(r["per_char_accuracy"]) for r in val), default=0)):
        rows = [r for r in val if i < len(r["per_char_accuracy"])]
        axes[1].plot(*_gapped([r["epoch"] for r in rows], [r["per_char_accuracy"][i] for r in rows]), linewidth=0.8, linestyle="--",
                     marker=".", markersize=3, alpha=0.7, label=f"val character {i + 1}")
    axes[0].set(title="loss (train: on augmented images, with label smoothing)" if "train" in phases else "loss", xlabel="epoch")
    axes[1].set(title="accuracy", xlabel="epoch", ylim=(0.0, 1.01))
    if has_lr:
        rows = [r for r in history if r["phase"] == (phases[0] if phases else "train") and "lr" in r]
        axes[2].plot([r["epoch"] for r in rows], [r["lr"] for r in rows], marker=".", color="tab:purple")
        axes[2].set(title="learning rate (end of epoch)", xlabel="epoch")
        axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[:2]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    axes[-1].grid(alpha=0.3)
    return _save(figure, out)


def confusion_matrix_image(matrix: np.ndarray, names: list[str], out: str | Path, title: str = "") -> Path:
    """A row-normalised confusion matrix as a heat map (rows: true, columns: predicted), with
    the counts written in the cells when there are few enough classes to read them."""
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix)
    k = len(names)
    norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = min(4 + 0.32 * k, 40)
    figure = Figure(figsize=(side + 1.5, side), layout="constrained")
    ax = figure.subplots()
    shown = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(shown, ax=ax, shrink=0.8, label="share of the true class")
    labels = [str(n)[:12] for n in names]
    ax.set_xticks(range(k), labels, rotation=90 if max(map(len, labels), default=1) > 2 else 0, fontsize="small")
    ax.set_yticks(range(k), labels, fontsize="small")
    ax.set(xlabel="predicted", ylabel="true", title=title or f"confusion matrix ({int(matrix.sum())} readings)")
    if k <= 40:
        for i, j in zip(*np.nonzero(matrix)):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=6 if k > 20 else 8,
                    color="white" if norm[i, j] > 0.5 else "black")
    return _save(figure, out)


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


def misread_grid_image(items: list[tuple[np.ndarray, str, str]], columns: int = 4, scale: int = 2) -> np.ndarray:
    """Tile (image, truth, prediction) triples, each captioned `truth -> prediction` underneath,
    with the characters that differ in red (BGR)."""
    if not items:
        raise ValueError("no misread images to draw")
    cells = []
    for image, truth, predicted in items:
        image = image if image.ndim == 3 and image.shape[2] == 3 else cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        cell = cv2.copyMakeBorder(image, 0, 24, 0, 0, cv2.BORDER_CONSTANT, value=(255, 255, 255))
        x = 4
        for text, color in [(truth, (0, 0, 0)), (" -> ", (0, 0, 0))] + [
            (ch, (0, 0, 220) if wrong else (0, 0, 0)) for ch, wrong in marked_prediction(truth, predicted)
        ]:
            cv2.putText(cell, text, (x, cell.shape[0] - 7), _FONT, 0.55, color, 1, cv2.LINE_AA)
            x += cv2.getTextSize(text, _FONT, 0.55, 1)[0][0]
        cells.append(cell)
    return image_grid([cells[i : i + columns] for i in range(0, len(cells), columns)], scale=1)


def misread_grid(items: list[tuple[np.ndarray, str, str]], out: str | Path, columns: int = 4, scale: int = 2) -> Path:
    """`misread_grid_image`, written to `out`."""
    return write_image(out, misread_grid_image(items, columns, scale))
