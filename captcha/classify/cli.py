"""`captcha classify {train,evaluate,svm,sweep}`: the image-classification verbs.

`register(subparsers)` is called by `captcha.cli` (listed in its `_EXTENSIONS`). Handlers
return an exit code; DataError / ValueError / FileNotFoundError reach the main CLI, which
prints `error: ...` and exits 2.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from captcha.classify.models import ACTIVATIONS, CLASSIFIERS, TOPS
from captcha.classify.recipes import AUGMENTATIONS, OPTIMIZERS, RECIPES, SCHEDULES

# Flags that override a recipe value; None (not given) keeps the recipe's own.
_RECIPE_FLAGS = ("model", "top", "activation", "epochs", "lr", "batch_size", "optimizer", "momentum", "weight_decay",
                 "schedule", "warmup_epochs", "label_smoothing", "augment", "input_size", "channels", "seed", "split", "freeze")
_SWEEP_FLAGS = ("epochs", "input_size", "channels", "seed", "split", "momentum", "weight_decay", "augment")


def _overrides(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def _cache(args: argparse.Namespace):
    return False if args.no_cache else None


def _cmd_train(args: argparse.Namespace) -> int:
    from captcha.classify.recipes import build_recipe
    from captcha.classify.train import train_classifier

    recipe = build_recipe(args.recipe, **_overrides(args, _RECIPE_FLAGS))
    train_classifier(args.data, args.out, recipe, weights=args.weights, device=args.device, cache_dir=_cache(args))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from captcha.metrics import format_report
    from captcha.classify.train import evaluate_run

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
                     cache_dir=_cache(args), **_overrides(args, _SWEEP_FLAGS))
    print(format_markdown(rows))
    print(f"Tables written to {args.out}/sweep.md and {args.out}/sweep.csv")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default auto")
    p.add_argument("--no-cache", action="store_true", help="do not cache decoded images on disk")


def _recipe_flags(p: argparse.ArgumentParser, sweep: bool = False) -> None:
    g = p.add_argument_group("recipe overrides (default: the recipe's value)")
    if not sweep:
        g.add_argument("--model", choices=CLASSIFIERS, help="classifier (default: the recipe's; mlp for default)")
        g.add_argument("--top", choices=TOPS, help="ResNet head: fc (replaced fc) or keras (Dense 1024 ReLU, Dense K)")
        g.add_argument("--activation", choices=ACTIVATIONS, help="hidden activation of mlp / cnn")
        g.add_argument("--lr", type=float, nargs="+", help="learning rate (one, or one per stage)")
        g.add_argument("--batch-size", type=int)
        g.add_argument("--optimizer", choices=OPTIMIZERS)
        g.add_argument("--schedule", choices=SCHEDULES)
        g.add_argument("--warmup-epochs", type=int)
        g.add_argument("--label-smoothing", type=float)
        g.add_argument("--freeze", choices=("backbone", "none"), help="backbone: train only the head in every stage")
    g.add_argument("--epochs", type=int, nargs="+", help="epochs (one, or one per stage)")
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--augment", choices=AUGMENTATIONS)
    g.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"))
    g.add_argument("--channels", type=int, choices=(1, 3), help="default: 1 for MNIST with mlp/cnn, else 3")
    g.add_argument("--seed", type=int)
    g.add_argument("--split", type=float, nargs=2, metavar=("TRAIN", "VAL"),
                   help="fractions of the unsplit pool (default 0.8 0.2; MNIST 48000/6000: 0.8 0.1)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `classify` and its sub-verbs to the main CLI."""
    cls = subparsers.add_parser("classify", help="image classification: train, evaluate, svm, sweep")
    sub = cls.add_subparsers(dest="classify_command", metavar="{train,evaluate,svm,sweep}")
    cls.set_defaults(func=lambda _args: (cls.print_help(), 0)[1])

    p = sub.add_parser("train", help="train a classifier on an ImageFolder tree or MNIST IDX files")
    p.add_argument("--data", required=True, help="ImageFolder root (class subfolders, optional train/val/test) or MNIST folder")
    p.add_argument("--recipe", choices=list(RECIPES), default="default", help="default, two-phase, tricks, finetune, probe")
    p.add_argument("--weights", help="ImageNet weights: a state-dict file or a torch hub cache dir (ResNets)")
    p.add_argument("--out", required=True, help="run directory (best.pt, last.pt, history.json, curves.png)")
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
    _recipe_flags(p, sweep=True)
    _common(p)
    p.set_defaults(func=_cmd_sweep)
