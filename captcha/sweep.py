"""Sweeps: train a list of settings one after the other and tabulate them (`run_cells`, shared
by both tasks); the course report's grid, every model x every preprocessor, one table."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from captcha.constants import DEFAULT_MAX_PARAMS
from captcha.models import list_models, supports_head
from captcha.options import option
from captcha.preprocess import list_preprocessors
from captcha.tasks import Task
from captcha.train import RunResult, TrainConfig, fit

@dataclass
class GridConfig:
    """`captcha sweep`'s own options; its training options are TrainConfig's."""

    models: tuple[str, ...] = option(default_factory=lambda: tuple(list_models("recognition")), help="recognizers to train",
                                     choices=lambda: list_models("recognition"))
    preprocessors: tuple[str, ...] = option(("original", "denoise", "denoise2"), "preprocessors to train each of them with",
                                            choices=list_preprocessors)
    out: str = option("runs/sweep", "folder for the runs and sweep.md / sweep.csv")


@dataclass
class Cell:
    """One setting of a sweep: what to train, and the table row its result makes. Cells with the
    same `tag` are one run, trained once."""

    tag: str
    banner: str  # logged before the run trains
    config: TrainConfig | Task
    row: Callable[[RunResult], dict[str, Any]]


def run_cells(cells: list[Cell], log=print, on_row: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Train every cell (once per tag) with `captcha.train.fit`; one row per cell, in order.
    `on_row` sees the rows so far after each, so a table on disk grows as the sweep goes."""
    done: dict[str, RunResult] = {}
    rows: list[dict] = []
    for cell in cells:
        if cell.tag not in done:
            log(cell.banner)
            done[cell.tag] = fit(cell.config, log=log)
        rows.append(cell.row(done[cell.tag]))
        if on_row is not None:
            on_row(rows)
    return rows


COLUMNS = ["model", "preprocess", "parameters", "char1", "char2", "char3", "char4", "per_char_mean", "sequence", "train_seconds", "s_per_epoch", "epochs_run", "head"]
NO_BUDGET = 10**12  # the grid trains the course's 5M-13M parameter models too, marked "over 1M"


def run_grid(base: TrainConfig, out_dir: str | Path, models: list[str] | None = None, preprocessors: list[str] | None = None, log=print) -> list[dict]:
    """The R1 grid at `base`'s recipe: every recognizer x every preprocessor (all by default).

    A model that cannot take `base.head` (the dense course models read pooled features only)
    gets the course's fixed heads; the row says which head each model had. The parameter budget
    is lifted, so that the over-budget course models are measured and marked, not refused.
    """
    models = models or list_models("recognition")
    preprocessors = preprocessors or list_preprocessors()
    base = replace(base, max_params=NO_BUDGET)
    own_head = [m for m in models if supports_head(m, base.head)]
    fixed_only = [m for m in models if m not in own_head]
    rows = run_sweep(base, own_head, preprocessors, Path(out_dir) / base.head, log) if own_head else []
    if fixed_only:
        rows += run_sweep(replace(base, head="fixed"), fixed_only, preprocessors, Path(out_dir) / "fixed", log)
    write_tables(rows, Path(out_dir))
    return rows


def run_sweep(base: TrainConfig, models: list[str], preprocessors: list[str], out_dir: str | Path, log=print) -> list[dict]:
    """Train each (model, preprocessor) pair with `base`'s recipe; write sweep.csv and sweep.md."""
    unable = [m for m in models if not supports_head(m, base.head)]
    if unable:  # refused before any cell trains
        raise ValueError(f"{', '.join(unable)}: only --head fixed (dense layers after the convolutions); "
                         f"drop {'them' if len(unable) > 1 else 'it'} from --models, or sweep with --head fixed")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = []
    for model in models:
        for prep in preprocessors:
            config = replace(base, model=model, preprocess=prep, out=str(out_dir / f"{model}-{prep}"))
            cells.append(Cell(config.out, f"=== {model} x {prep} ===", config, lambda result, m=model, p=prep: _grid_row(m, p, base.head, result)))
    return run_cells(cells, log, on_row=lambda rows: write_tables(rows, out_dir))


def _grid_row(model: str, prep: str, head: str, result: RunResult) -> dict:
    scores = result.test or result.val
    per_char = scores["per_char_accuracy"]
    epochs_run = _epochs_in(result.run_dir / "metrics.csv")
    return {
        "model": model, "preprocess": prep, "parameters": result.parameters,
        **{f"char{i + 1}": per_char[i] if i < len(per_char) else "" for i in range(4)},
        "per_char_mean": sum(per_char) / len(per_char), "sequence": scores["sequence_accuracy"],
        "train_seconds": round(result.train_seconds, 1), "s_per_epoch": round(result.train_seconds / epochs_run, 2),
        "epochs_run": epochs_run, "head": head,
    }


def _epochs_in(metrics_csv: Path) -> int:
    with open(metrics_csv) as f:
        return max(1, len({row["epoch"] for row in csv.DictReader(f)}))


def write_tables(rows: list[dict], out_dir: Path) -> None:
    with open(out_dir / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "sweep.md").write_text(markdown_table(rows))


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| model | head | preprocess | parameters | per-char test accuracy (1/2/3/4) | whole-string | train time |",
        "|---|---|---|---:|---|---:|---:|",
    ]
    for r in rows:
        chars = " / ".join(f"{r[f'char{i}'] * 100:.1f}" for i in range(1, 5) if r[f"char{i}"] != "")
        budget = "" if r["parameters"] <= DEFAULT_MAX_PARAMS else " (over 1M)"
        lines.append(
            f"| {r['model']} | {r['head']} | {r['preprocess']} | {r['parameters']:,}{budget} | {chars} | {r['sequence'] * 100:.2f}% | {r['train_seconds']:.0f} s ({r['s_per_epoch']:.1f} s/epoch) |"
        )
    return "\n".join(lines) + "\n"
