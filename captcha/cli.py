"""The `captcha` command: one entry point mapping verbs to functions.

Core verbs live here; export, serving and the classification track register their own verbs
through `register(subparsers)` in the modules listed in `_EXTENSIONS`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from captcha import __version__

# Modules that add verbs: each has register(subparsers) and sets func on its parsers.
_EXTENSIONS: tuple[str, ...] = ("captcha.pretrain", "captcha.export", "serving.cli", "captcha.classify.cli")
# Verbs whose module needs neither torch nor the model zoo: `captcha serve ...` builds only their
# parser, so a server or client starts in a fraction of a second instead of importing torch. They
# are also all the serving-only install (requirements/serve.txt, docs/install.md) can run.
_LIGHT_VERBS = {"serve": "serving.cli", "client": "serving.cli"}
# Import names whose distribution is called otherwise, for the message naming a missing one.
_DISTRIBUTIONS = {"sklearn": "scikit-learn", "cv2": "opencv-python-headless", "PIL": "pillow", "yaml": "pyyaml"}


def _cmd_generate(args: argparse.Namespace) -> int:
    from captcha.generate import GeneratorConfig, generate_dataset

    length: int | tuple[int, int] = args.length
    if args.min_length is not None:
        length = (args.min_length, args.length)
    splits = dict(zip(("train", "val", "test"), args.splits))
    fonts: tuple[str, ...] = ()
    if args.fonts:
        from captcha.fonts import find_fonts
        from captcha.generate import MIX

        if MIX not in args.style:
            raise ValueError(f"--fonts: only the {MIX} style writes in font files; add --style {MIX}")
        fonts = find_fonts(args.fonts, args.alphabet, log=print)  # raises when none is usable
    counts = generate_dataset(
        args.out,
        GeneratorConfig(alphabet=args.alphabet, length=length, size=(args.height, args.width), splits=splits, styles=tuple(args.style), seed=args.seed, fonts=fonts),
        workers=args.workers,
    )
    print(f"Wrote {sum(counts.values())} images to {args.out} ({', '.join(f'{k}: {v}' for k, v in counts.items())})")
    return 0


def _cmd_styles(args: argparse.Namespace) -> int:
    from captcha.generate import EVAL_STYLES, MIX, STYLES

    for name, style in STYLES.items():
        group = "held-out eval" if name in EVAL_STYLES else "pre-training"
        print(f"{name:14s} {group:14s} {style.description}")
    print(f"{MIX:14s} {'pre-training':14s} each image recombines the pre-training styles' traits, and with --fonts writes in font files too (what `captcha pretrain` draws)")
    return 0


def _cmd_preview(args: argparse.Namespace) -> int:
    import cv2

    from captcha.data import load_splits
    from captcha.imageio import read_image, write_image
    from captcha.plots import image_grid
    from captcha.preprocess import get_preprocessor, list_preprocessors

    names = args.preprocess or list_preprocessors()
    if args.count < 1:
        raise ValueError(f"--count must be at least 1, not {args.count}")
    if min(args.height, args.width) < 8:
        raise ValueError(f"--height and --width must be at least 8 pixels, not {args.height} x {args.width}")
    splits = load_splits(args.data, require_train=False)
    samples = (splits["train"] + splits["val"] + splits["test"])[: args.count]
    if not samples:
        print(f"error: no labeled images in {args.data}", file=sys.stderr)
        return 2
    size = (args.height, args.width)
    rows, labels = [], []
    for s in samples:
        image = read_image(s.path)
        shown = [get_preprocessor(n)(image, size) for n in names]
        shown = [cv2.cvtColor(a, cv2.COLOR_RGB2BGR) if a.ndim == 3 and a.shape[2] == 3 else a for a in shown]  # RGB model input
        rows.append([cv2.resize(image, (size[1], size[0]))] + shown)
        labels.append(s.label)
    grid = image_grid(rows, labels)
    header = image_grid([[_header_cell(n, size) for n in ["input"] + names]], [""])
    out = Path(args.out)
    write_image(out, cv2.vconcat([header, grid]))
    print(f"Wrote {out}: {len(samples)} images x ({', '.join(['input'] + names)})")
    return 0


def _header_cell(text: str, size: tuple[int, int]):
    import cv2
    import numpy as np

    cell = np.full((18, size[1], 3), 255, np.uint8)
    cv2.putText(cell, text, (2, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return cell


def _cmd_models(args: argparse.Namespace) -> int:
    from captcha.models import count_parameters, create_model, list_models

    print(f"{'model':16s} {'parameters':>12s}   (classes={args.classes}, channels={args.channels}, length={args.length}, head={args.head})")
    for name in list_models("recognition"):
        try:
            model = create_model(name, num_classes=args.classes, length=args.length, in_channels=args.channels, head=args.head)
        except ValueError as exc:  # a model without this kind of head
            print(f"{name:16s} {'-':>12s}   ({exc})")
            continue
        n = count_parameters(model)
        flag = "" if n <= args.max_params else f"  over the {args.max_params:,} budget"
        print(f"{name:16s} {n:>12,}{flag}")
    return 0


def _given_settings(args: argparse.Namespace) -> dict:
    """The TrainConfig settings given on the command line (the parser's defaults are None)."""
    from captcha.options import given_values
    from captcha.train import TrainConfig

    return given_values(args, TrainConfig)


def _train_config(args: argparse.Namespace):
    from captcha.train import TrainConfig

    return TrainConfig(**_given_settings(args))


def _cmd_train(args: argparse.Namespace) -> int:
    from captcha import distributed
    from captcha.train import TrainConfig, fit

    distributed.init()
    try:
        given = _given_settings(args)
        result = fit(TrainConfig(**given), given=set(given))
        main_process = distributed.is_main()  # asked before the process group is gone (every rank is 0 after)
    finally:
        distributed.cleanup()
    if result.test and main_process:
        accs = ", ".join(f"{a * 100:.2f}%" for a in result.test["per_char_accuracy"])
        print(f"Test: per-character [{accs}], whole-string {result.test['sequence_accuracy'] * 100:.2f}%")
        print(f"Run saved in {result.run_dir}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from captcha.inference import evaluate_folder

    report = evaluate_folder(args.run, args.data, args.split, args.device, args.skip_bad, args.tta)
    if args.errors and not report["misread"]:
        print(f"No misread images: {args.errors} not written", file=sys.stderr if args.json else sys.stdout)
    elif args.errors:
        from captcha.imageio import read_image
        from captcha.plots import misread_grid

        shown = report["misread"][: args.max_errors]
        misread_grid([(read_image(m["path"]), m["label"], m["predicted"]) for m in shown], args.errors)
        print(f"Wrote {args.errors}: {len(shown)} of {len(report['misread'])} misread images", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(report))
        return 0
    accs = ", ".join(f"{a * 100:.2f}%" for a in report["per_char_accuracy"])
    print(f"{report['data']}: {report['samples']} images, loss {report['loss']:.4f}")
    print(f"per-character accuracy: [{accs}]")
    print(f"whole-string accuracy:  {report['sequence_accuracy'] * 100:.2f}% ({report['tta']} view{'s' if report['tta'] > 1 else ''} per image)")
    if report["confused_pairs"]:
        print("most confused (true -> predicted: count): " + ", ".join(f"{p['true']}->{p['predicted']}: {p['count']}" for p in report["confused_pairs"]))
    for item in report["skipped"]:
        print(f"skipped {item['path']}: {item['reason']}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from captcha.imageio import ImageDecodeError, expand_image_paths
    from captcha.inference import Predictor

    predictor = Predictor.from_run(args.run, args.device)
    status = 0
    for path in expand_image_paths(args.images):
        try:
            prediction = predictor.predict_paths([path])[0]
        except (ImageDecodeError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
            continue
        if args.json:
            print(json.dumps({"path": str(path), **prediction.as_dict()}))
        else:
            chars = " ".join(f"{c:.2f}" for c in prediction.char_confidences)
            print(f"{path}\t{prediction.text}\t{prediction.confidence:.4f}\t[{chars}]")
    return status


def _cmd_sweep(args: argparse.Namespace) -> int:
    from captcha.sweep import markdown_table, run_sweep

    base = _train_config(args)
    rows = run_sweep(base, list(args.models), list(args.preprocessors), args.out)
    print(markdown_table(rows))
    print(f"Tables written to {Path(args.out) / 'sweep.md'} and sweep.csv")
    return 0


# The report's grid: pooled per-character heads (the dense-layer models support no other), and
# no parameter budget (two of its models are over the default one).
_SWEEP_DEFAULTS = {"head": "fixed", "max_params": 10**12}
_SWEEP_SHOWN = {"head": _SWEEP_DEFAULTS["head"], "max_params": "none: the report's grid holds models of 4.8M and 12.8M parameters"}


def _add_training_flags(p: argparse.ArgumentParser, sweep: bool = False) -> None:
    """Every TrainConfig field as a flag; the sweep's own flags (its models, preprocessors and
    folder) replace the ones naming one run."""
    from captcha.options import add_options
    from captcha.sweep import GridConfig
    from captcha.train import TrainConfig

    if not sweep:
        add_options(p, TrainConfig)
        return
    add_options(p, TrainConfig, skip=("model", "preprocess", "out", "resume"), shown=_SWEEP_SHOWN)
    add_options(p, GridConfig, keep_defaults=True)


def _top_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(prog="captcha", description="Train, evaluate and serve compact CAPTCHA recognizers.")
    parser.add_argument("--version", action="version", version=f"captchakit {__version__}")
    return parser, parser.add_subparsers(dest="command", metavar="COMMAND")


def build_light_parser(module: str) -> argparse.ArgumentParser:
    """The top-level parser with only `module`'s verbs (see `_LIGHT_VERBS`)."""
    parser, sub = _top_parser()
    importlib.import_module(module).register(sub)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser, sub = _top_parser()
    _add_data_verbs(sub)
    _add_run_verbs(sub)
    for module in _EXTENSIONS:
        importlib.import_module(module).register(sub)
    return parser


def _add_data_verbs(sub: argparse._SubParsersAction) -> None:
    """generate, styles, preview, models: the verbs that draw, show and list."""
    from captcha.constants import DEFAULT_ALPHABET, DEFAULT_LENGTH, DEFAULT_MAX_PARAMS, DEFAULT_SPLITS, INPUT_HEIGHT, INPUT_WIDTH
    from captcha.generate import MIX, STYLES
    from captcha.models import HEAD_TYPES
    from captcha.preprocess import list_preprocessors

    p = sub.add_parser("generate", help="draw a synthetic labeled CAPTCHA set")
    p.add_argument("out", help="output folder (train/ val/ test/ subfolders)")
    p.add_argument("--alphabet", default=DEFAULT_ALPHABET)
    p.add_argument("--length", type=int, default=DEFAULT_LENGTH, help="characters per CAPTCHA (the maximum with --min-length)")
    p.add_argument("--min-length", type=int, help="draw variable-length CAPTCHAs from --min-length to --length")
    p.add_argument("--height", type=int, default=INPUT_HEIGHT)
    p.add_argument("--width", type=int, default=INPUT_WIDTH)
    p.add_argument("--splits", type=int, nargs=3, default=list(DEFAULT_SPLITS), metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--style", nargs="+", default=["course"], choices=[*STYLES, MIX], help=f"visual styles, mixed in turn ({MIX}: a new recombination of the pre-training styles per image)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fonts", nargs="+", metavar="PATH", help=f"TrueType/OpenType files or folders the {MIX} style also writes in")
    p.add_argument("--workers", type=int, default=1, help="processes that draw the images (default 1: this one; 0: one per core); the same files whatever the number")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("styles", help="list the generator's visual styles")
    p.set_defaults(func=_cmd_styles)

    p = sub.add_parser("preview", help="before/after grid of the preprocessors on a few images")
    p.add_argument("data", help="labeled image folder")
    p.add_argument("--preprocess", nargs="+", choices=list_preprocessors(), help="default: all")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--height", type=int, default=INPUT_HEIGHT)
    p.add_argument("--width", type=int, default=INPUT_WIDTH)
    p.add_argument("--out", default="preview.png")
    p.set_defaults(func=_cmd_preview)

    p = sub.add_parser("models", help="list the models with their parameter counts")
    p.add_argument("--classes", type=int, default=len(DEFAULT_ALPHABET), help="symbols per character")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--length", type=int, default=DEFAULT_LENGTH)
    p.add_argument("--head", choices=HEAD_TYPES, default="fixed")
    p.add_argument("--max-params", type=int, default=DEFAULT_MAX_PARAMS)
    p.set_defaults(func=_cmd_models)


def _add_run_verbs(sub: argparse._SubParsersAction) -> None:
    """train, evaluate, predict, sweep: the verbs that train and use runs."""
    from captcha.constants import READ_SIZE
    from captcha.runtime import DEVICES
    from captcha.tta import TTA_VIEWS

    p = sub.add_parser("train", help="train a recognizer (default: sepnet at {} x {} on the built-in generated set)".format(*READ_SIZE))
    _add_training_flags(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="accuracy of a trained run on a labeled folder")
    p.add_argument("run", help="run directory or checkpoint")
    p.add_argument("--data", required=True, help="labeled folder (its test/ split when it has one)")
    p.add_argument("--split", choices=("train", "val", "test"), help="which split (default test): a subfolder, or, for the flat folder the run trained on, that part of its seeded 80/10/10 split")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--skip-bad", action="store_true", help="leave bad files out instead of stopping")
    p.add_argument("--json", action="store_true", help="print one JSON object (with every misread image)")
    p.add_argument("--errors", metavar="PNG", help="draw the misread images, truth -> prediction, into this picture")
    p.add_argument("--max-errors", type=int, default=48, help="at most this many images in --errors (default 48)")
    p.add_argument("--tta", type=int, choices=sorted(TTA_VIEWS), help="test-time views read per image (default: the run's, see captcha train --tta)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="recognize images with a trained run")
    p.add_argument("run", help="run directory or checkpoint")
    p.add_argument("images", nargs="+", help="image files, or folders of them")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("sweep", help="train the model x preprocessor grid and tabulate it")
    _add_training_flags(p, sweep=True)
    p.set_defaults(func=_cmd_sweep, **_SWEEP_DEFAULTS)


def _missing_distribution(exc: ImportError) -> str | None:
    """The package to install for an import that failed because a third-party module is not
    installed; None when the failure is in this project's own modules (a bug, not an install)."""
    top = (exc.name or "").partition(".")[0]
    if not top or top in ("captcha", "serving"):
        return None
    return _DISTRIBUTIONS.get(top, top)


def _serving_only(argv: list[str], missing: str) -> int:
    """`captcha` where the training packages are not installed (the serving-only install): its
    help lists the verbs that work, and any other verb is one error line naming what is missing."""
    parser, sub = _top_parser()
    for module in dict.fromkeys(_LIGHT_VERBS.values()):
        importlib.import_module(module).register(sub)
    where = f"{missing}, which this install lacks (the serving-only install of requirements/serve.txt)"
    parser.epilog = f"Only {' and '.join(_LIGHT_VERBS)} work here: the other verbs need {where}; docs/install.md installs everything."
    verb = next((a for a in argv if not a.startswith("-")), None)
    if verb is None:
        parser.parse_args(argv)  # --help and --version end here
        parser.print_help()
        return 0
    print(f"error: `captcha {verb}` needs {where}: install the whole project (docs/install.md); "
          f"here only {' and '.join(f'`captcha {v}`' for v in _LIGHT_VERBS)} work", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    light = _LIGHT_VERBS.get(argv[0]) if argv else None
    if light:
        parser = build_light_parser(light)
    else:
        try:
            parser = build_parser()
        except ImportError as exc:  # torch & co. missing: the serving-only install
            missing = _missing_distribution(exc)
            if missing is None:
                raise
            return _serving_only(argv, missing)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:  # DataError, ParameterBudgetError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = ""
        if getattr(args, "func", None) is _cmd_train:
            from captcha.train import TrainConfig

            hint = f"; `captcha train --resume --out {getattr(args, 'out', None) or TrainConfig.out}` continues the run"
        print(f"\ninterrupted{hint}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # python -m captcha.cli works as python -m captcha does
    sys.exit(main())
