"""Training speed against a naive PyTorch loop on the same data, accuracy beside every time.

    python benchmarks/train_speed.py [--device auto] [--rows naive course course-b128 course-b256 default] [--repeat 2]
                                     [--data DIR] [--epochs N]

Each row is a whole process, run in turn on the same prepared data (decoded once first, so every
row reads the warm cache), `--repeat` times interleaved:

- naive:   `benchmarks/naive_train.py`, a plain loop (resnet18_mod, pooled heads, batch 64, fp32,
           Adam, tensors on the device, no augmentation, no validation), the reference;
- course:  `captcha train --model resnet18_mod --preprocess denoise --epochs 25 --init none`;
- course-b128, course-b256: the course command at batch 128 (lr 1.4e-2) and 256 (lr 2e-2),
           whether larger batches pay on this device;
- default: `captcha train` (the default recipe, validation included).

Prints a Markdown table naming the machine: wall seconds of the whole process, training seconds
(the log's Elapsed, validation included), the first epoch, the ratio to the naive loop's training
seconds in the same round, and test whole-string accuracy. `--epochs` overrides every row's
epochs (a quick check, e.g. `--device cpu --epochs 1`).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import describe  # noqa: E402

from captcha.recognition_data import default_data_dir, prepare_data  # noqa: E402
from captcha.train_config import TrainConfig  # noqa: E402

# The course recipe at larger batches, the learning rate scaled by the square root of the batch.
BATCH_ROWS = {"course-b128": ["--batch-size", "128", "--lr", "1.4e-2"], "course-b256": ["--batch-size", "256", "--lr", "2e-2"]}

ROWS = {
    "naive": ("naive loop: resnet18_mod, pooled heads, batch 64, fp32, no augmentation", 25),
    "course": ("captcha train --model resnet18_mod --preprocess denoise --epochs 25 --init none", 25),
    **{row: ("the same with " + " ".join(flags), 25) for row, flags in BATCH_ROWS.items()},
    "default": (f"captcha train (default recipe: {TrainConfig.model}, {TrainConfig.epochs} epochs)", TrainConfig.epochs),
}


def command(row: str, epochs: int, args: argparse.Namespace, data: Path, cache: str, out: Path) -> list[str]:
    common = ["--data", str(data), "--cache-dir", cache, "--device", args.device, "--epochs", str(epochs)]
    if row == "naive":
        return [sys.executable, str(ROOT / "benchmarks" / "naive_train.py"), *common]
    train = [sys.executable, "-m", "captcha", "train", *common, "--out", str(out)]
    course = ["--model", "resnet18_mod", "--preprocess", "denoise", "--init", "none"]
    if row == "course":
        return train + course
    if row in BATCH_ROWS:
        return train + course + BATCH_ROWS[row]
    return train


def run_row(row: str, epochs: int, args: argparse.Namespace, data: Path, cache: str, out: Path) -> dict:
    """One whole process; its wall time, and the figures it reported."""
    started = time.perf_counter()
    done = subprocess.run(command(row, epochs, args, data, cache, out), cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode or (row != "naive" and not (out / "metrics.json").exists()):
        sys.exit(f"{row} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    if row == "naive":
        result = json.loads(done.stdout.strip().splitlines()[-1])
        return {"wall": wall, "train": result["train_seconds"], "first": result["first_epoch_seconds"], "test": result["test_whole_string"]}
    metrics = json.loads((out / "metrics.json").read_text())
    with open(out / "metrics.csv", newline="") as f:
        first = next(float(r["elapsed_s"]) for r in csv.DictReader(f) if r["phase"] == "val")
    return {"wall": wall, "train": metrics["train_seconds"], "first": first, "test": metrics["test"]["sequence_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=["naive", "course"])
    parser.add_argument("--repeat", type=int, default=2, help="rounds; the rows run interleaved in each")
    parser.add_argument("--data", help="labeled folder with train/val/test (default: the built-in generated set)")
    parser.add_argument("--epochs", type=int, help="override every row's epochs (a quick check)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cache = f"{tmp}/cache"
        data = Path(args.data) if args.data else default_data_dir()
        # Fill the cache at the course rows' settings and the default's, so that every row reads it warm.
        for settings in ({"model": "resnet18_mod", "preprocess": "denoise"}, {}):
            started = time.perf_counter()
            config = TrainConfig(data=str(data), cache_dir=cache, **settings)
            prepare_data(config, data)
            print(f"decoded {data} with {config.preprocess} at {config.read_size} in {time.perf_counter() - started:.1f} s (cold cache)",
                  file=sys.stderr)
        results: dict[str, list[dict]] = {row: [] for row in args.rows}
        for round_ in range(args.repeat):
            for row in args.rows:
                epochs = args.epochs or ROWS[row][1]
                result = run_row(row, epochs, args, data, cache, Path(tmp) / f"{row}-{round_}")
                results[row].append(result)
                print(f"round {round_ + 1}: {row} {result}", file=sys.stderr)

    print(f"\nMachine: {describe()}; --device {args.device}; data {data}; {args.repeat} interleaved rounds\n")
    print("| row | epochs | wall, whole process (s) | training (s) | first epoch (s) | training / naive | test whole-string |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    naive = results.get("naive")
    for row, runs in results.items():
        epochs = args.epochs or ROWS[row][1]
        ratio = "" if not naive or row == "naive" else " / ".join(f"{r['train'] / n['train']:.2f}" for r, n in zip(runs, naive))
        cells = [" / ".join(f"{r[key]:.1f}" for r in runs) for key in ("wall", "train", "first")]
        tests = " / ".join(f"{r['test'] * 100:.1f}%" for r in runs)
        print(f"| {ROWS[row][0]} | {epochs} | {' | '.join(cells)} | {ratio} | {tests} |")
    if naive and len(args.rows) > 1:
        print("\nEach cell lists the rounds in order; training / naive pairs each run with the naive loop of its own round.")
        for row, runs in results.items():
            if row != "naive":
                print(f"median training / naive, {row}: {statistics.median(r['train'] / n['train'] for r, n in zip(runs, naive)):.2f}")


if __name__ == "__main__":
    main()
