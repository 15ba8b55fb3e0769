"""R2's study: change one factor at a time from a baseline, train each setting, tabulate.

Baseline: MLP, ReLU, Adam, lr 0.05, batch 64 (10 epochs). Factors and their values:
model (mlp, cnn), activation (relu, softmax, sigmoid), optimizer (adam, sgd),
lr (0.05, 0.01, 0.25), batch_size (64, 4, 1024). A setting shared by several factors (the
baseline) is trained once. Results go to `sweep.md` (Markdown) and `sweep.csv`.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

from captcha.classify.recipes import build_recipe
from captcha.classify.train import ClassificationTask
from captcha.models.classifiers import CLASSIFIERS
from captcha.sweep import Cell, run_cells
from captcha.train import RunResult

BASELINE: dict[str, Any] = {"model": "mlp", "activation": "relu", "optimizer": "adam", "lr": 0.05, "batch_size": 64}
FACTORS: dict[str, list[Any]] = {
    "model": ["mlp", "cnn"],
    "activation": ["relu", "softmax", "sigmoid"],
    "optimizer": ["adam", "sgd"],
    "lr": [0.05, 0.01, 0.25],
    "batch_size": [64, 4, 1024],
}
_CAST = {"lr": float, "batch_size": int}


def parse_values(specs: list[str] | None) -> dict[str, list[Any]]:
    """`["lr=0.1,0.01", "model=cnn"]` -> {"lr": [0.1, 0.01], "model": ["cnn"]}."""
    out: dict[str, list[Any]] = {}
    for spec in specs or []:
        key, _, values = spec.partition("=")
        key = key.strip().replace("-", "_")
        if key not in FACTORS or not values:
            raise ValueError(f"--values takes FACTOR=V1,V2 with FACTOR one of {', '.join(FACTORS)}; got {spec!r}")
        out[key] = [_CAST.get(key, str)(v) for v in values.split(",")]
    return out


def _tag(settings: dict[str, Any]) -> str:
    return "-".join(f"{k}{settings[k]}" for k in BASELINE)


def run_sweep(
    data_dir: str | Path,
    out: str | Path,
    factors: list[str] | None = None,
    values: dict[str, list[Any]] | None = None,
    baseline: dict[str, Any] | None = None,
    device: str = "auto",
    cache_dir: str | Path | None | bool = None,
    log: Callable[[str], None] = print,
    **recipe_overrides: Any,
) -> list[dict[str, Any]]:
    """Train every one-factor variation of the baseline; returns one row per (factor, value).

    `recipe_overrides` (epochs, input_size, split, seed, ...) apply to every run.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = {**BASELINE, **(baseline or {})}
    grid = {**FACTORS, **(values or {})}
    factors = factors or list(FACTORS)
    unknown = [f for f in factors if f not in FACTORS]
    if unknown:
        raise ValueError(f"unknown factor(s) {', '.join(unknown)}; choose from {', '.join(FACTORS)}")
    not_classifiers = [m for m in {base["model"], *grid["model"]} if m not in CLASSIFIERS]
    if not_classifiers:  # checked before any run trains
        raise ValueError(f"model {', '.join(sorted(not_classifiers))}: not a classifier; choose from {', '.join(CLASSIFIERS)}")
    cells = []
    for factor in factors:
        for value in grid[factor]:
            settings = {**base, factor: value}
            tag = _tag(settings)
            recipe = build_recipe(
                "default", model=settings["model"], activation=settings["activation"], optimizer=settings["optimizer"],
                lr=[settings["lr"]], batch_size=settings["batch_size"], **recipe_overrides,
            )
            task = ClassificationTask(data_dir, out / "runs" / tag, recipe, device=device, cache_dir=cache_dir)
            cells.append(Cell(tag, f"== {factor} = {value} ({tag})", task, lambda result, f=factor, v=value: _row(f, v, v == base[f], result)))
    rows = run_cells(cells, log)
    write_tables(rows, out)
    return rows


def _row(factor: str, value: Any, baseline: bool, result: RunResult) -> dict[str, Any]:
    row: dict[str, Any] = {"factor": factor, "value": value, "baseline": baseline}
    for split in ("train", "val", "test"):
        for k in ("top1", "top3"):
            row[f"{split}_{k}"] = result.scores.get(split, {}).get(k, float("nan"))
    row["seconds"] = result.train_seconds
    return row


def format_markdown(rows: list[dict[str, Any]]) -> str:
    """One row per (factor, value); accuracies in percent, the baseline value starred."""
    head = "| factor | value | train top-1 | train top-3 | val top-1 | val top-3 | test top-1 | test top-3 | time (s) |"
    lines = [head, "|---|---|" + "---:|" * 7]
    for r in rows:
        cells = [f"{r[f'{s}_{k}'] * 100:.2f}%" if r[f"{s}_{k}"] == r[f"{s}_{k}"] else "-" for s in ("train", "val", "test") for k in ("top1", "top3")]
        value = f"**{r['value']}**" if r["baseline"] else str(r["value"])
        lines.append(f"| {r['factor']} | {value} | " + " | ".join(cells) + f" | {r['seconds']:.1f} |")
    return "\n".join(lines)


def write_tables(rows: list[dict[str, Any]], out: str | Path) -> tuple[Path, Path]:
    """`sweep.md` and `sweep.csv` in `out`."""
    out = Path(out)
    md, table = out / "sweep.md", out / "sweep.csv"
    md.write_text(format_markdown(rows) + "\n")
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["factor"])
        writer.writeheader()
        writer.writerows(rows)
    return md, table
