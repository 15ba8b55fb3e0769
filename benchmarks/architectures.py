"""Compact architectures compared from scratch on a held-out style, everything else equal.

    python benchmarks/architectures.py [--style eval-scriptc] [--epochs 30] [--models sepnet resnet18_mod]

Draws the style's 4000 train / 1000 val / 3000 test images (36 symbols, the same seed as
`benchmarks/accuracy.py`), then trains each model with the default recipe's head, preprocessor,
optimizer, schedule and augmentation, but from random weights (`--init none`) and for `--epochs`,
all at one input size (`--input-size`, default the course's 50 x 130, whatever size each model
reads at by default), so the table compares architectures and not pre-training or resolution.
Prints parameters, whole-string test accuracy and time per epoch, naming the machine.
"""

from __future__ import annotations

import argparse
import string
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import describe  # noqa: E402

from captcha.constants import INPUT_SIZE  # noqa: E402
from captcha.generate import GeneratorConfig, generate_dataset  # noqa: E402
from captcha.train import TrainConfig, fit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--style", default="eval-scriptc")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--models", nargs="+", default=["sepnet", "resnet18_mod"])
    parser.add_argument("--input-size", type=int, nargs=2, default=list(INPUT_SIZE), metavar=("H", "W"))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / args.style
        generate_dataset(data, GeneratorConfig(alphabet=string.digits + string.ascii_lowercase, styles=(args.style,), seed=123,
                                               splits={"train": 4000, "val": 1000, "test": 3000}))
        for model in args.models:
            config = TrainConfig(data=str(data), out=f"{tmp}/{model}", model=model, epochs=args.epochs, init="none",
                                 input_size=tuple(args.input_size), device=args.device, cache_dir=f"{tmp}/cache")
            result = fit(config, log=lambda s: None)
            rows.append((model, config, result))
            print(f"done: {model}: {result.test['sequence_accuracy'] * 100:.2f}%", file=sys.stderr)

    print(f"\nMachine: {describe()}")
    print(f"\n{args.style}, 4000 train / 1000 val / 3000 test, 36 symbols; from scratch, {args.epochs} epochs, "
          f"head {rows[0][1].head}, preprocess {rows[0][1].preprocess}, augment {rows[0][1].augment}, "
          f"input {args.input_size[0]} x {args.input_size[1]}\n")
    print("| model | params | per-char test accuracy | whole-string | s/epoch |")
    print("|---|---:|---|---:|---:|")
    for model, config, r in rows:
        chars = " / ".join(f"{a * 100:.1f}" for a in r.test["per_char_accuracy"])
        print(f"| {model} | {r.parameters:,} | {chars} | {r.test['sequence_accuracy'] * 100:.2f}% | {r.train_seconds / config.epochs:.1f} |")


if __name__ == "__main__":
    main()
