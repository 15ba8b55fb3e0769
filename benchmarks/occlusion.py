"""How much of a style's difficulty is its noise curves? The same test images without them.

    python benchmarks/occlusion.py --run RUN_DIR [--style eval-thin] [--test 3000] [--out DIR]

Draws the test split that `benchmarks/accuracy.py` draws for `--style` (seed 123, 36 symbols) twice:
as drawn, and with its noise curves left out. Only the curves change: every other pixel and every
label is the same, image for image, since the generator takes a curve's random numbers before it
paints it. Reads each set with
the trained run `RUN_DIR` (its own test-time views) and prints a Markdown table naming the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _machine import describe  # noqa: E402
from accuracy import ALPHABET_36, DATA_SEED  # noqa: E402  the same test images as the accuracy table's

from captcha.generate import EVAL_STYLES, GeneratorConfig, generate_dataset  # noqa: E402
from captcha.inference import evaluate_folder  # noqa: E402

VARIANTS = {"as drawn": None, "no curves": lambda img, *args, **kwargs: img}
_polylines = cv2.polylines


@contextlib.contextmanager
def curves_drawn_by(draw):
    """Within the block, the generator draws its curves with `draw` (None: as it always does)."""
    if draw is None:
        yield
        return
    cv2.polylines = draw
    try:
        yield
    finally:
        cv2.polylines = _polylines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run trained on the style (e.g. one of accuracy.py --workdir's runs)")
    parser.add_argument("--style", default="eval-thin", choices=list(EVAL_STYLES))
    parser.add_argument("--test", type=int, default=3000, help="test images (accuracy.py draws 3000)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", help="keep the two drawn sets here (default: a temporary folder)")
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        for name, draw in VARIANTS.items():
            folder = root / name.replace(" ", "-")
            # The train and val splits drawn empty keep the test split's seed, and so its images.
            config = GeneratorConfig(alphabet=ALPHABET_36, styles=(args.style,), seed=DATA_SEED, splits={"train": 0, "val": 0, "test": args.test})
            with curves_drawn_by(draw):
                generate_dataset(folder, config)
            result = evaluate_folder(args.run, folder, device=args.device)
            rows.append((name, result))
            print(f"{name}: {result['sequence_accuracy'] * 100:.2f}%", file=sys.stderr)

    views = rows[0][1]["tta"]
    print(f"\nMachine: {describe()}; run {args.run}; {args.style} test split, {args.test} images; {views} test-time view(s)\n")
    print("| the style's curves | whole-string | per character |")
    print("|---|---:|---|")
    for name, result in rows:
        chars = " / ".join(f"{a * 100:.1f}" for a in result["per_char_accuracy"])
        print(f"| {name} | {result['sequence_accuracy'] * 100:.2f}% | {chars} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
