"""Accuracy on CAPTCHA styles the project never trained on, default recipe vs the plain baseline.

    python benchmarks/accuracy.py [--styles eval-plain eval-scriptc eval-lines]

For each held-out evaluation style (`captcha.generate.EVAL_STYLES`: fonts, colours, distortion
and noise unlike every pre-training style) it draws 4000 train / 1000 val / 3000 test images
with 36 symbols and trains:
- the default recipe (`captcha train --data DIR`, no other flags: fine-tuned from the shipped
  synthetic pre-training weights, which never saw these styles);
- the plain course recipe: resnet18_mod with pooled (fixed) heads, no augmentation, no
  pre-training, 25 epochs.
It prints parameters, per-character and whole-string test accuracy and training time side by
side, naming the machine. The R1 grid (models x preprocessors) is `captcha sweep`.
"""

from __future__ import annotations

import argparse
import string
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import describe  # noqa: E402

from captcha.generate import EVAL_STYLES, GeneratorConfig, generate_dataset  # noqa: E402
from captcha.train import TrainConfig, fit  # noqa: E402

ALPHABET_36 = string.digits + string.ascii_lowercase
RECIPES = {
    "default recipe": {},
    "plain (fixed heads, no augmentation, 25 epochs)": {
        "head": "fixed", "augment": "none", "schedule": "constant", "lr": 1e-3, "optimizer": "adam", "epochs": 25, "init": "none",
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--styles", nargs="+", default=list(EVAL_STYLES))
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for style in args.styles:
            data = Path(tmp) / style
            generate_dataset(data, GeneratorConfig(alphabet=ALPHABET_36, styles=(style,), seed=123,
                                                   splits={"train": args.train, "val": 1000, "test": 3000}))
            for recipe, overrides in RECIPES.items():
                config = TrainConfig(data=str(data), out=f"{tmp}/{style}-{len(rows)}",
                                     device=args.device, cache_dir=f"{tmp}/cache", **overrides)
                result = fit(config, log=lambda s: None)
                rows.append((style, recipe, result))
                print(f"done: {style} / {recipe}: {result.test['sequence_accuracy'] * 100:.2f}%", file=sys.stderr)

    print(f"\nMachine: {describe()}; {args.train} train / 1000 val / 3000 test per style, 36 symbols\n")
    print("| style | recipe | params | per-char test accuracy | whole-string | train time |")
    print("|---|---|---:|---|---:|---:|")
    for style, recipe, r in rows:
        chars = " / ".join(f"{a * 100:.1f}" for a in r.test["per_char_accuracy"])
        print(f"| {style} | {recipe} | {r.parameters:,} | {chars} | {r.test['sequence_accuracy'] * 100:.2f}% | {r.train_seconds:.0f} s |")


if __name__ == "__main__":
    main()
