"""How legible is an evaluation style to a reader? A blind reading sheet, and its score.

    python benchmarks/legibility.py sheet [--style eval-scriptc] [--count 40] [--seed 2026] [--out legibility]
    python benchmarks/legibility.py score legibility/key.csv ANSWERS [--run RUN_DIR]

`sheet` picks `--count` images at random from the same test split that `benchmarks/accuracy.py`
draws for the style (seed 123, 3000 images, 36 symbols), and writes `OUT/sheet.png` (numbered,
enlarged, no labels) and `OUT/key.csv` (number, file, label) beside a copy of the images, plus
`OUT/study.png`: 24 labeled images from the style's validation split, so that the reader, like
the model, can learn the style's font from labeled examples first. A person studies that, then
reads the sheet without opening the key and writes one reading per image, in sheet order, into
a text file (whitespace or newlines between readings; `?` for a character they
cannot make out). `score` prints the reader's whole-string and per-character accuracy and every
miss; with `--run` it also reads the same images with a trained run, side by side.

A model's accuracy on a style means little without knowing how readable the style is: this
measures it for a person who has studied a few labeled examples. A reader is no ceiling (they do
not know an unseen font's details as well as a model trained on thousands of labels), but a style
that such a reader mostly misreads is hard by any measure.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import ALPHABET_36, DATA_SEED  # noqa: E402  the sheet's images are accuracy.py's test images

from captcha.generate import GeneratorConfig, generate_dataset  # noqa: E402


def _tile_sheet(images: list[np.ndarray], captions: list[str], columns: int, scale: int) -> np.ndarray:
    tiles = []
    for image, caption in zip(images, captions):
        big = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        tile = np.full((big.shape[0] + 24, big.shape[1] + 8, 3), 255, np.uint8)
        tile[:big.shape[0], 4:4 + big.shape[1]] = big
        cv2.putText(tile, caption, (6, tile.shape[0] - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(tile)
    tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % columns)
    return np.vstack([np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)])


def make_sheet(style: str, count: int, seed: int, out: Path, columns: int = 4, scale: int = 3, study: int = 24) -> list[tuple[int, str, str]]:
    """Write OUT/sheet.png, OUT/study.png, OUT/key.csv and OUT/images/; returns the key rows (number, file, label)."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # Train is not drawn; each split has its own seed stream, so these are accuracy.py's val and test images.
        generate_dataset(tmp, GeneratorConfig(alphabet=ALPHABET_36, styles=(style,), seed=DATA_SEED,
                                              splits={"train": 0, "val": 1000, "test": 3000}))
        examples = sorted((Path(tmp) / "val").glob("*.png"))[:study]
        cv2.imwrite(str(out / "study.png"), _tile_sheet([cv2.imread(str(p)) for p in examples],
                                                       [p.name.split("_")[0] for p in examples], columns, scale))
        files = sorted((Path(tmp) / "test").glob("*.png"))
        picked = [files[i] for i in np.random.default_rng(seed).choice(len(files), count, replace=False)]
        (out / "images").mkdir(exist_ok=True)
        key = []
        for number, path in enumerate(picked):
            shutil.copy(path, out / "images" / path.name)
            key.append((number, f"images/{path.name}", path.name.split("_")[0]))
    cv2.imwrite(str(out / "sheet.png"), _tile_sheet([cv2.imread(str(out / name)) for _, name, _ in key],
                                                    [f"#{number}" for number, _, _ in key], columns, scale))
    with open(out / "key.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["number", "file", "label"])
        writer.writerows(key)
    return key


def read_key(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="") as f:
        return [(row["file"], row["label"]) for row in csv.DictReader(f)]


def score(truths: list[str], readings: list[str]) -> tuple[float, float]:
    """(whole-string, per-character) accuracy of `readings` against `truths`, same order."""
    if len(readings) != len(truths):
        raise ValueError(f"{len(readings)} readings for {len(truths)} images: give one reading per image, in sheet order")
    whole = sum(r == t for r, t in zip(readings, truths)) / len(truths)
    chars = sum(a == b for r, t in zip(readings, truths) for a, b in zip(r.ljust(len(t), "?"), t))
    return whole, chars / sum(len(t) for t in truths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sheet", help="write a blind reading sheet and its key")
    p.add_argument("--style", default="eval-scriptc")
    p.add_argument("--count", type=int, default=40)
    p.add_argument("--seed", type=int, default=2026, help="which images are picked")
    p.add_argument("--out", type=Path, default=Path("legibility"))
    p = sub.add_parser("score", help="score a reader's answers (and optionally a trained run) against the key")
    p.add_argument("key", type=Path)
    p.add_argument("answers", type=Path)
    p.add_argument("--run", help="also read the same images with this trained run")
    args = parser.parse_args()

    if args.command == "sheet":
        key = make_sheet(args.style, args.count, args.seed, args.out)
        print(f"{len(key)} images of {args.style}: study {args.out / 'study.png'}, then read {args.out / 'sheet.png'} "
              f"without opening {args.out / 'key.csv'}")
        return
    try:
        key = read_key(args.key)
        readings = args.answers.read_text().split()
    except (OSError, KeyError) as e:
        sys.exit(f"legibility.py score: cannot read {args.key} (columns number,file,label) and {args.answers}: {e}")
    truths = [label for _, label in key]
    try:
        reader = score(truths, readings)
    except ValueError as e:
        sys.exit(f"{args.answers}: {e}")
    rows = [("reader", reader, readings)]
    if args.run:
        from captcha.inference import Predictor

        predictor = Predictor.from_run(args.run, device="cpu")
        texts = [p.text for p in predictor.predict_paths([args.key.parent / name for name, _ in key])]
        rows.append((f"model ({args.run})", score(truths, texts), texts))
    print(f"{len(truths)} images from {args.key}\n")
    print("| reader | whole-string | per character |")
    print("|---|---:|---:|")
    for who, (whole, chars), _ in rows:
        print(f"| {who} | {whole * 100:.1f}% | {chars * 100:.1f}% |")
    print("\nmisses (number: truth, then each reader's reading):")
    for i, truth in enumerate(truths):
        got = [texts[i] for _, _, texts in rows]
        if any(g != truth for g in got):
            print(f"  #{i}: {truth}  " + "  ".join(got))


if __name__ == "__main__":
    main()
