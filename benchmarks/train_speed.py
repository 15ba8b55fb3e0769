"""Training speed of the default recipe: seconds per epoch and for 25 epochs, with accuracy.

    python benchmarks/train_speed.py [--epochs 25] [--device auto]

Runs `captcha train` configurations on the built-in generated set (4000 train / 1000 val /
3000 test, 50x130) and prints a Markdown table naming the machine. Also measures dataset
loading cold (decode + preprocess) and warm (from the on-disk cache).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import describe  # noqa: E402

from captcha.recognition_data import default_data_dir, prepare_data  # noqa: E402
from captcha.train import TrainConfig, fit  # noqa: E402

CONFIGS = [
    ("resnet18_mod, attention head", dict()),
    ("resnet18_mod, attention head, NCHW layout", dict(channels_last=False)),
    ("resnet18_mod, fixed heads (course)", dict(head="fixed")),
    ("resnet18_mod, attention head, batch 128, lr 4e-3", dict(batch_size=128, lr=4e-3)),
    ("sepnet (the default model), attention head", dict(model="sepnet")),
    ("sepnet, validation in passes of 512 images (as before `eval_batch`)", dict(model="sepnet", eval_batch_size=512)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", type=int, nargs="*", help="indices of CONFIGS to run")
    args = parser.parse_args()
    if args.only is not None and (not args.only or not all(0 <= i < len(CONFIGS) for i in args.only)):
        parser.error(f"--only takes indices from 0 to {len(CONFIGS) - 1}: " + "; ".join(f"{i}: {name}" for i, (name, _) in enumerate(CONFIGS)))

    with tempfile.TemporaryDirectory() as tmp:
        data = default_data_dir()
        # the speed target: the course model and preprocessor, from scratch
        base = TrainConfig(data=str(data), model="resnet18_mod", epochs=args.epochs, device=args.device, cache_dir=tmp,
                           preprocess="denoise", init="none")
        started = time.perf_counter()
        prepare_data(base, data)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        prepare_data(base, data)
        warm = time.perf_counter() - started

        rows = []
        for i, (name, overrides) in enumerate(CONFIGS):
            if args.only is not None and i not in args.only:
                continue
            config = TrainConfig(**{**base.__dict__, **overrides, "out": f"{tmp}/run{i}"})
            result = fit(config, log=lambda s: None)
            rows.append((name, result.parameters, result.train_seconds / args.epochs, result.train_seconds, result.test))
            print(f"done: {name}", file=sys.stderr)

    print(f"\nMachine: {describe()}; device {args.device}; preprocess denoise; {args.epochs} epochs of 4000 images (val every epoch)\n")
    print(f"Dataset load (8000 images, decode + denoise): cold {cold:.1f} s, warm (cache) {warm:.2f} s\n")
    print("| configuration | params | s/epoch | total (train + val) | test per-char (mean) | test whole-string |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, params, per_epoch, total, test in rows:
        per_char = sum(test["per_char_accuracy"]) / len(test["per_char_accuracy"])
        print(f"| {name} | {params:,} | {per_epoch:.2f} | {total:.0f} s | {per_char * 100:.2f}% | {test['sequence_accuracy'] * 100:.2f}% |")


if __name__ == "__main__":
    main()
