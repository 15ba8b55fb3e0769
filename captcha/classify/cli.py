"""`captcha classify {train,evaluate,svm,sweep}`: the image-classification verbs.

`register(subparsers)` is called by `captcha.cli` (listed in its `_EXTENSIONS`). Handlers
return an exit code; DataError / ValueError / FileNotFoundError reach the main CLI, which
prints `error: ...` and exits 2.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from captcha.classify.recipes import RECIPES, Recipe, Stage
from captcha.options import add_options, given_values, option
from captcha.runtime import DEVICES

# The recipe settings a sweep run takes; the others are the sweep's factors or keep the recipe's.
_SWEEP_SETTINGS = ("epochs", "input_size", "channels", "seed", "split", "momentum", "weight_decay", "augment")


@dataclass
class TrainCommand:
    """`captcha classify train`'s own options; the recipe's come from `Recipe` and `Stage`."""

    data: str | None = option(None, "ImageFolder root (class subfolders, optional train/val/test) or MNIST folder", required=True)
    recipe: str = option("default", "training recipe of the course reports", choices=tuple(RECIPES), shown="default: R2's baseline")
    weights: str | None = option(None, "ImageNet weights: a state-dict file or a torch hub cache dir (ResNets)")
    out: str | None = option(None, "run directory (best.pt, last.pt, metrics.csv, learning_curves.png)", required=True)
    resume: bool = option(False, "continue an interrupted run from OUT/last.pt")
    ema: float = option(0.0, "decay of a moving average of the weights that is validated and saved instead, e.g. 0.999; 0 is off")
    device: str = option("auto", "where to train (auto: CUDA when available)", choices=DEVICES)
    no_cache: bool = option(False, "do not cache decoded images on disk")


def _recipe_overrides(args: argparse.Namespace, only: tuple[str, ...] | None = None) -> dict:
    """The recipe settings given on the command line (None, not given, keeps the recipe's)."""
    return {**given_values(args, Recipe, only=only), **given_values(args, Stage, only=only)}


def _cache(args: argparse.Namespace):
    return False if args.no_cache else None


def _cmd_train(args: argparse.Namespace) -> int:
    from captcha import distributed
    from captcha.classify.recipes import build_recipe
    from captcha.classify.train import train_classifier

    recipe = build_recipe(args.recipe, **_recipe_overrides(args))
    distributed.init()
    try:
        train_classifier(args.data, args.out, recipe, weights=args.weights, device=args.device, cache_dir=_cache(args),
                         resume=bool(args.resume), ema=args.ema or 0.0)
    finally:
        distributed.cleanup()
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from captcha.classify.evaluate import evaluate_run
    from captcha.metrics import format_report

    metrics = evaluate_run(args.run, args.data, split=args.split, device=args.device, cache_dir=_cache(args))
    if args.json:
        print(json.dumps(metrics, indent=1))
    else:
        print(f"{args.run} on {args.data} ({metrics['split']}, {metrics['samples']} images)\n")
        print(format_report(metrics))
        print(f"Confusion matrix: {metrics['confusion_matrix_png']}")
    return 0


def _cmd_svm(args: argparse.Namespace) -> int:
    from captcha.classify.svm import format_comparison, svm_compare

    result = svm_compare(args.run, args.data, device=args.device, max_train=args.max_train, C=args.C, cache_dir=_cache(args))
    print(json.dumps(result, indent=1) if args.json else format_comparison(result))
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from captcha.classify.sweep import format_markdown, parse_values, run_sweep

    rows = run_sweep(args.data, args.out, factors=args.factors, values=parse_values(args.values), device=args.device,
                     cache_dir=_cache(args), **_recipe_overrides(args, _SWEEP_SETTINGS))
    print(format_markdown(rows))
    print(f"Tables written to {args.out}/sweep.md and {args.out}/sweep.csv")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    add_options(p, TrainCommand, only=("device", "no_cache"), keep_defaults=True)


def _recipe_flags(p: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    g = p.add_argument_group("recipe overrides (default: the recipe's value)")
    add_options(g, Recipe, only=only, show_defaults=False)
    add_options(g, Stage, only=only, show_defaults=False)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `classify` and its sub-verbs to the main CLI."""
    cls = subparsers.add_parser("classify", help="image classification: train, evaluate, svm, sweep")
    sub = cls.add_subparsers(dest="classify_command", metavar="{train,evaluate,svm,sweep}")
    cls.set_defaults(func=lambda _args: (cls.print_help(), 0)[1])

    p = sub.add_parser("train", help="train a classifier on an ImageFolder tree or MNIST IDX files")
    add_options(p, TrainCommand, skip=("device", "no_cache"), keep_defaults=True)
    _recipe_flags(p)
    _common(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="top-1/top-3, per-class precision/recall/F1, confusion matrix")
    p.add_argument("run", help="run directory or checkpoint")
    p.add_argument("--data", required=True)
    p.add_argument("--split", choices=("train", "val", "test"), help="default: test, or val when there is no test set")
    p.add_argument("--json", action="store_true")
    _common(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("svm", help="RBF SVM on penultimate-layer features vs the network")
    p.add_argument("run", help="run directory or checkpoint")
    p.add_argument("--data", required=True)
    p.add_argument("--max-train", type=int, help="cap the SVM's training images (seeded subset)")
    p.add_argument("--C", type=float, default=1.0, help="SVM regularisation (default 1.0)")
    p.add_argument("--json", action="store_true")
    _common(p)
    p.set_defaults(func=_cmd_svm)

    p = sub.add_parser("sweep", help="R2's one-factor-at-a-time study, as Markdown and CSV tables")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="folder for the runs and sweep.md / sweep.csv")
    p.add_argument("--factors", nargs="+", choices=("model", "activation", "optimizer", "lr", "batch_size"),
                   help="default: all five")
    p.add_argument("--values", nargs="+", metavar="FACTOR=V1,V2", help="replace a factor's values, e.g. lr=0.1,0.01")
    _recipe_flags(p, only=_SWEEP_SETTINGS)
    _common(p)
    p.set_defaults(func=_cmd_sweep)
