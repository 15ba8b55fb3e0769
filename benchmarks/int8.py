"""What an int8 export gains and loses against the float one: readings and ONNX Runtime speed.

    python benchmarks/int8.py --run RUN_DIR [--run ...] [--tta 1 5] [--batches 1 8 32] [--threads 1] [--repeats 5]

For each run (a `captcha train` run directory whose data folder has a test split) and each number
of test-time views, it exports the float model and its int8 form (`captcha export --quantize
int8`, calibrated on the run's training images), reads the whole test split with both through ONNX
Runtime's CPU provider, as `captcha serve` does (decode, preprocessor, normalisation, model,
decoding), and prints a Markdown table naming the machine: whole-string accuracy of each, the
share of images the two read alike, and milliseconds per image of the model alone for each number
of images a run (`--threads` intra-op threads; the best of `--repeats` timings, so a neighbour's
burst of work on a shared machine counts less).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402

from _machine import describe  # noqa: E402
from captcha.checkpoint import load_checkpoint, resolve_checkpoint  # noqa: E402
from captcha.data import label_from_filename  # noqa: E402
from captcha.export import export_onnx  # noqa: E402
from captcha.imageio import list_images  # noqa: E402
from captcha.recognition_data import default_data_dir  # noqa: E402
from serving.model import ServedModel  # noqa: E402


def test_split(run: Path, limit: int | None) -> tuple[list[Path], list[str]]:
    """The run's test images (else val) and their labels, from the run's data folder (the built-in set's when it has none)."""
    data = Path(load_checkpoint(resolve_checkpoint(run))["meta"]["config"]["data"] or default_data_dir())  # None: the built-in set
    for split in ("test", "val"):
        files = list_images(data / split) if (data / split).is_dir() else []
        if files:
            files = files[:limit] if limit else files
            return files, [label_from_filename(p) for p in files]
    raise SystemExit(f"{run}: its data folder {data} has no test or val images")


def read_all(model: ServedModel, images: np.ndarray, batch: int = 64) -> list[str]:
    return [p.text for i in range(0, len(images), batch) for p in model.decode(model.run(images[i : i + batch]))]


def ms_per_image(model: ServedModel, images: np.ndarray, batch: int, repeats: int) -> float:
    x = np.ascontiguousarray(images[:batch])
    runs = max(1, 400 // batch)
    for _ in range(3):
        model.run(x)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(runs):
            model.run(x)
        best = min(best, (time.perf_counter() - start) / (runs * len(x)))
    return 1000 * best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="a trained run directory; repeat for several")
    parser.add_argument("--tta", type=int, nargs="+", default=[1], help="test-time views in the exported graphs")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32], help="images a model run, for the timings")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--limit", type=int, help="read only the first N test images")
    parser.add_argument("--calibration-images", type=int, default=256)
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in map(Path, args.run):
            files, labels = test_split(run, args.limit)
            for tta in args.tta:
                exports = {
                    kind: export_onnx(run, Path(tmp) / f"{run.name}-{tta}-{kind}.onnx", verify_images=0, log=lambda s: None, tta=tta,
                                      quantize=None if kind == "float" else kind, calibration_images=args.calibration_images).path
                    for kind in ("float", "int8")
                }
                models = {kind: ServedModel(kind, path, "cpu", args.threads) for kind, path in exports.items()}
                images = np.stack([models["float"].preprocess(p.read_bytes(), str(p)) for p in files])
                read = {kind: read_all(model, images) for kind, model in models.items()}
                accuracy = {kind: np.mean([r == t for r, t in zip(texts, labels)]) for kind, texts in read.items()}
                alike = np.mean([a == b for a, b in zip(read["float"], read["int8"])])
                times = {(kind, b): ms_per_image(model, images, b, args.repeats) for kind, model in models.items() for b in args.batches}
                rows.append((run, tta, len(files), accuracy, alike, times))
                print(f"{run} tta {tta}: float {accuracy['float']:.2%}, int8 {accuracy['int8']:.2%}, alike {alike:.2%}", file=sys.stderr)

    print(f"\nMachine: {describe()}; ONNX Runtime CPU provider, {args.threads} intra-op thread(s); "
          f"int8 calibrated on {args.calibration_images} training images; ms per image: best of {args.repeats}\n")
    timing_heads = " | ".join(f"ms/image, {b} a run: float | int8" for b in args.batches)
    print(f"| run | views | test images | whole-string: float | int8 | read alike | {timing_heads} |")
    print("|---|---:|---:|---:|---:|---:|" + "---:|---:|" * len(args.batches))
    for run, tta, count, accuracy, alike, times in rows:
        timing = " | ".join(f"{times[('float', b)]:.3f} | {times[('int8', b)]:.3f}" for b in args.batches)
        print(f"| {run.name} | {tta} | {count} | {accuracy['float']:.2%} | {accuracy['int8']:.2%} | {alike:.2%} | {timing} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
