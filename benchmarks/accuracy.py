"""Accuracy on CAPTCHA styles the project never trained on, default recipe vs the plain baseline.

    python benchmarks/accuracy.py [--styles eval-plain eval-scriptc eval-lines eval-thin] [--train 4000 ...] [--unlabeled 8000]
                                  [--try augment=strong ...] [--recipes N...] [--grid [--grid-models M...] [--grid-epochs N]]
                                  [--workdir DIR] [--plot FILE]
    python benchmarks/accuracy.py --plot-from docs/images/label_curve_eval_thin.csv --plot docs/images/label_curve_eval_thin.png

For each held-out evaluation style (`captcha.generate.EVAL_STYLES`: fonts, colours, distortion
and noise unlike every pre-training style; `eval-thin` draws thin warped strokes under a thick
curve of the text colour, in small text) it draws 4000 train / 1000 val / 3000 test images
with 36 symbols and trains:
- the default recipe (`captcha train --data DIR`, no other flags: fine-tuned from the shipped
  synthetic pre-training weights, which never saw these styles);
- the plain course recipe: resnet18_mod with pooled (fixed) heads, no augmentation, no
  pre-training, 25 epochs (`--recipes` picks some of these by number).
With `--unlabeled N` it also draws N unlabeled images of each style and trains the default
recipe plus `--unlabeled` (pseudo-labeling); `--try KEY=VALUE...` adds the default recipe with
those changes, a candidate for a new default (recipe 2, or 3 with `--unlabeled`). It prints
parameters, per-character and whole-string test accuracy and training time side by side,
naming the machine.

`--grid` adds the R1 grid (every recognizer x every preprocessor, `captcha.sweep`) with the
default recipe on the built-in course-style set; `--grid-models` picks rows, `--grid-epochs`
shortens it (the 5M-13M parameter course models, which the default budget refuses and the grid
trains anyway, take 13-24 s per epoch each on a 2-core CPU).

`--train` takes several label counts for a learning curve: the same test images for each (the
generator draws each split from its own seeded stream, and a larger train split begins with the
smaller one's images); `--plot FILE` draws whole-string accuracy against labels (PNG or SVG).
`--plot-from CSV` draws it from figures kept as CSV instead of training (columns series,
labels, whole_string in %, machine), so a plot that joins runs of several days can be redrawn.

`--workdir DIR` keeps the generated data and every trained run there (for `captcha evaluate`,
`--errors`, other view counts) instead of in a temporary folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import string
import sys
import tempfile
import types
import typing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import describe  # noqa: E402

from captcha.generate import EVAL_STYLES, GeneratorConfig, generate_dataset  # noqa: E402
from captcha.sweep import markdown_table, run_grid  # noqa: E402
from captcha.recognition_data import default_data_dir  # noqa: E402
from captcha.train import TrainConfig, fit  # noqa: E402

ALPHABET_36 = string.digits + string.ascii_lowercase
DATA_SEED = 123  # every evaluation set is drawn with this seed (legibility.py reads the same test images)
RECIPES = {
    "default recipe": {},
    "plain resnet18_mod (fixed heads, no augmentation, 25 epochs)": {
        "model": "resnet18_mod", "head": "fixed", "augment": "none", "schedule": "constant", "lr": 1e-3, "optimizer": "adam", "weight_decay": 1e-4, "epochs": 25, "init": "none", "label_smoothing": 0.0,
    },
}


def _pseudo_label_lines(line: str) -> None:
    """fit's log, reduced to how many pseudo-labels each refresh kept (on stderr, like `done:`)."""
    if line.startswith("Pseudo-labels for epoch"):
        print(line, file=sys.stderr, flush=True)


def _field_hint(key: str):
    """The type a TrainConfig field holds: `int` for `int | None`, `tuple[int, int]` as declared."""
    hint = typing.get_type_hints(TrainConfig)[key]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(k for k in typing.get_args(hint) if k is not type(None))
    return hint


def _parse_changes(items: list[str]) -> dict:
    """`key=value` pairs -> TrainConfig overrides, each value typed as the field is declared."""
    changes = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in {f.name for f in dataclasses.fields(TrainConfig)}:
            raise SystemExit(f"--try: {item!r} is not KEY=VALUE with a TrainConfig field as KEY")
        hint = _field_hint(key)
        kind = typing.get_origin(hint) or hint
        if kind is bool:
            changes[key] = value.lower() in ("1", "true", "yes")
            continue
        # a tuple field takes its values comma-separated: input_size=75,195
        kinds, values = (typing.get_args(hint), value.split(",")) if kind is tuple else ((kind,), [value])
        if len(values) != len(kinds):
            raise SystemExit(f"--try: {key} takes {len(kinds)} comma-separated values, not {value!r}")
        try:
            typed = tuple(k(v) for k, v in zip(kinds, values))
        except ValueError:
            raise SystemExit(f"--try: {key} takes {' '.join(k.__name__ for k in kinds)} values, not {value!r}") from None
        changes[key] = typed if kind is tuple else typed[0]
    return changes


def _train_style(args, trial: dict, tmp: Path, style: str, labels: int, done: int) -> list[tuple]:
    """Draw `style` with `labels` training images and train each chosen recipe on it: rows of
    (style, labels, recipe, result)."""
    data = tmp / (style if args.train == [labels] else f"{style}-{labels}")
    splits = {"train": labels, "val": 1000, "test": 3000}
    if args.unlabeled:
        splits["unlabeled"] = args.unlabeled  # a folder the loader does not read as a split
    generate_dataset(data, GeneratorConfig(alphabet=ALPHABET_36, styles=(style,), seed=DATA_SEED, splits=splits))
    recipes = dict(RECIPES)
    if args.unlabeled:
        recipes[f"default + {args.unlabeled} unlabeled (pseudo-labels)"] = {"unlabeled": str(data / "unlabeled")}
    if trial:
        recipes["default + " + " ".join(args.trial)] = trial
    rows = []
    for number, (recipe, overrides) in enumerate(recipes.items()):
        if args.recipes is not None and number not in args.recipes:
            continue
        config = TrainConfig(data=str(data), out=f"{tmp}/{style}-{done + len(rows)}", device=args.device, cache_dir=f"{tmp}/cache", **overrides)
        result = fit(config, log=_pseudo_label_lines)
        rows.append((style, labels, recipe, result))
        print(f"done: {style} / {labels} labels / {recipe}: {result.test['sequence_accuracy'] * 100:.2f}%", file=sys.stderr)
    return rows


def _plot_curve(points: list[tuple[str, int, float]], path: str, machine: str) -> None:
    """Whole-string test accuracy (%) against labeled images, a line per series: points are
    (series, labels, accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    for series in dict.fromkeys(name for name, _, _ in points):
        line = sorted((labels, accuracy) for name, labels, accuracy in points if name == series)
        drawn = ax.plot(*zip(*line), marker="o", label=series)[0]
        for x, y in line:  # each figure on the side with more room before another line's point, so close lines stay legible
            others = [a for name, labels, a in points if labels == x and name != series]
            room_above = min([a - y for a in others if a >= y], default=100)
            room_below = min([y - a for a in others if a < y], default=100)
            ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 6 if room_above >= room_below else -12),
                        ha="center", fontsize=8, color=drawn.get_color())
    ax.set_xscale("log", base=2)
    ticks = sorted({labels for _, labels, _ in points})
    ax.set_xticks(ticks, [f"{t:,}" for t in ticks])
    ax.set(xlabel="labeled training images", ylabel="whole-string test accuracy (%)", title="How accuracy grows with labels")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, machine, fontsize=6, color="gray")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"Wrote {path}", file=sys.stderr)


def _read_curve(path: str) -> tuple[list[tuple[str, int, float]], str]:
    """A label curve kept as CSV (series, labels, whole_string in %, machine), as docs/images holds
    the figures of runs made at different times: its points and the machines it names."""
    points, machines = [], []
    with open(path, newline="") as f:
        for number, row in enumerate(csv.DictReader(f), start=2):
            try:
                points.append((row["series"], int(row["labels"]), float(row["whole_string"])))
            except (KeyError, TypeError, ValueError):
                raise SystemExit(f"--plot-from: {path} line {number} needs series, labels (an integer) and whole_string (a percentage)") from None
            machines.append(row.get("machine") or "")
    if not points:
        raise SystemExit(f"--plot-from: {path} has no rows")
    return points, "; ".join(m for m in dict.fromkeys(machines) if m)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--styles", nargs="+", default=list(EVAL_STYLES), choices=list(EVAL_STYLES))
    parser.add_argument("--train", type=int, nargs="+", default=[4000], help="labeled training images (several: a learning curve)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--unlabeled", type=int, default=0, help="also train with this many unlabeled images (pseudo-labels)")
    parser.add_argument("--grid", action="store_true", help="also run the R1 grid at the default recipe")
    parser.add_argument("--grid-epochs", type=int, default=None, help="epochs per grid cell (default: the default recipe's)")
    parser.add_argument("--grid-models", nargs="+", default=None, help="grid rows for these models only (default: every recognizer)")
    parser.add_argument("--no-styles", action="store_true", help="skip the evaluation styles (with --grid)")
    parser.add_argument("--recipes", type=int, nargs="+", help="run only these recipes (0: default, 1: plain, then --unlabeled, then --try)")
    parser.add_argument("--try", dest="trial", nargs="+", metavar="KEY=VALUE", default=[],
                        help="also run the default recipe with these TrainConfig changes (e.g. augment=strong epochs=80)")
    parser.add_argument("--plot", help="draw whole-string test accuracy against --train labels into this file (.png or .svg)")
    parser.add_argument("--plot-from", metavar="CSV",
                        help="draw --plot from this CSV of earlier runs (series,labels,whole_string,machine) instead of training")
    parser.add_argument("--workdir", help="keep the generated data and the trained runs in this folder (default: a temporary one, removed)")
    args = parser.parse_args()
    trial = _parse_changes(args.trial)
    if args.plot_from:
        if not args.plot:
            parser.error("--plot-from needs --plot FILE")
        points, machines = _read_curve(args.plot_from)
        _plot_curve(points, args.plot, machines)
        return

    rows = []
    workdir = contextlib.nullcontext(args.workdir) if args.workdir else tempfile.TemporaryDirectory()
    with workdir as tmp:
        Path(tmp).mkdir(parents=True, exist_ok=True)
        for style in [] if args.no_styles else args.styles:
            for labels in args.train:
                rows += _train_style(args, trial, Path(tmp), style, labels, len(rows))

        grid = []
        if args.grid:
            base = TrainConfig(data=str(default_data_dir(f"{tmp}/cache")), device=args.device, cache_dir=f"{tmp}/cache")
            if args.grid_epochs:
                base.epochs = args.grid_epochs
            grid = run_grid(base, f"{tmp}/grid", models=args.grid_models, log=lambda line: line.startswith("===") and print(line, file=sys.stderr, flush=True))

    print(f"\nMachine: {describe()}")
    if rows:
        print(f"\n{' / '.join(map(str, args.train))} train, 1000 val, 3000 test images per style, 36 symbols\n")
        print("| style | labels | recipe | params | per-char test accuracy | whole-string | train time |")
        print("|---|---:|---|---:|---|---:|---:|")
        for style, labels, recipe, r in rows:
            chars = " / ".join(f"{a * 100:.1f}" for a in r.test["per_char_accuracy"])
            print(f"| {style} | {labels:,} | {recipe} | {r.parameters:,} | {chars} | {r.test['sequence_accuracy'] * 100:.2f}% | {r.train_seconds:.0f} s |")
        if args.plot:
            _plot_curve([(f"{style}, {recipe}", labels, r.test["sequence_accuracy"] * 100) for style, labels, recipe, r in rows],
                        args.plot, describe())
    if grid:
        print(f"\nR1 grid, default recipe at {base.epochs} epochs, built-in course-style set (4000/1000/3000, 19 symbols)\n")
        print(markdown_table(grid), end="")


if __name__ == "__main__":
    main()
