"""End-to-end benchmark of the classification track on data available offline.

- R2 on real digits: scikit-learn's bundled 8x8 digits (1797 images), written as MNIST IDX files
  and read through the MNIST path, upscaled to 28x28; MLP vs CNN, then the one-factor sweep.
- R3 (two-phase, tricks), R4 (finetune), R5 (probe + SVM) on generated shapes: 5 classes of
  OpenCV-drawn shapes with random colours, positions and sizes, written as an ImageFolder tree,
  64x64 inputs. No ImageNet weights are available here, so the ResNets start from random
  weights (the probe then measures a random-feature baseline).

Usage: python benchmarks/classify_bench.py [--out DIR] [--quick]
Prints a Markdown table naming the machine.
"""

from __future__ import annotations

import argparse
import gzip
import platform
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from captcha.classify.recipes import build_recipe  # noqa: E402
from captcha.classify.shapes import write_shapes  # noqa: E402
from captcha.classify.svm import svm_compare  # noqa: E402
from captcha.classify.sweep import format_markdown, run_sweep  # noqa: E402
from captcha.classify.evaluate import evaluate_run  # noqa: E402
from captcha.classify.train import train_classifier  # noqa: E402



def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_digits(root: Path, test: int = 297) -> Path:
    """sklearn's digits as MNIST IDX files: the last `test` images are the test file."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * 16).clip(0, 255).astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(images))
    images, labels = images[order], digits.target[order]
    root.mkdir(parents=True, exist_ok=True)
    _write_idx(root / "train-images-idx3-ubyte.gz", images[:-test])
    _write_idx(root / "train-labels-idx1-ubyte.gz", labels[:-test])
    _write_idx(root / "t10k-images-idx3-ubyte.gz", images[-test:])
    _write_idx(root / "t10k-labels-idx1-ubyte.gz", labels[-test:])
    return root


def _row(report: str, what: str, data_name: str, run: Path, data: Path, result) -> str:
    m = evaluate_run(run, data, device="cpu")
    held = m["split"]
    tr = result.scores["train"]
    return (f"| {report} | {what} | {data_name} | {tr['top1'] * 100:.1f}% | {m['top1'] * 100:.1f}% ({held}) | "
            f"{m['top3'] * 100:.1f}% | {m['f1_macro']:.3f} | {result.train_seconds:.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="keep runs here (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="fewer epochs, for a smoke test")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 16)))
    root = Path(args.out or tempfile.mkdtemp(prefix="classify-bench-"))
    quiet = {"log": lambda _line: None, "device": "cpu", "cache_dir": False}
    q = 0.3 if args.quick else 1.0

    def ep(n: int) -> int:
        return max(1, int(round(n * q)))

    started = time.perf_counter()
    digits = write_digits(root / "digits")
    shapes = write_shapes(root / "shapes", per_class=60, size=72, hard=True)
    rows: list[str] = []
    # R2: MLP vs CNN on real digits, the report's baseline setting (Adam, lr 0.05, batch 64, 10 epochs)
    for model in ("mlp", "cnn"):
        recipe = build_recipe("default", model=model, activation="relu", lr=[0.05 if model == "mlp" else 1e-3], epochs=[ep(10)])
        res = train_classifier(digits, root / f"r2-{model}", recipe, **quiet)
        lr = recipe.stages[0].lr
        rows.append(_row("R2", f"default {model}, Adam lr {lr:g}, {ep(10)} ep", "digits 1200/300/297, 28x28", root / f"r2-{model}", digits, res))
    # R3 recipe A: two-phase ResNet50 + Keras top
    recipe = build_recipe("two-phase", epochs=[ep(2), ep(4)], input_size=(64, 64))
    res = train_classifier(shapes, root / "r3-two-phase", recipe, **quiet)
    rows.append(_row("R3 A", f"two-phase resnet50 keras top, {ep(2)}+{ep(4)} ep", "shapes 240/60, 64x64", root / "r3-two-phase", shapes, res))
    # R3 recipe B: tricks
    recipe = build_recipe("tricks", epochs=[ep(6)], warmup_epochs=1, input_size=(64, 64))
    res = train_classifier(shapes, root / "r3-tricks", recipe, **quiet)
    rows.append(_row("R3 B", f"tricks resnet50 fc, SGD lr {recipe.stages[0].lr:g} warm-up+cosine, LS 0.1, {ep(6)} ep", "shapes 240/60, 64x64", root / "r3-tricks", shapes, res))
    # R4: finetune ResNet18
    recipe = build_recipe("finetune", epochs=[ep(8)], input_size=(64, 64))
    res = train_classifier(shapes, root / "r4-finetune", recipe, **quiet)
    rows.append(_row("R4", f"finetune resnet18_cls, SGD 1e-3 m0.9, aug, {ep(8)} ep", "shapes 240/60, 64x64", root / "r4-finetune", shapes, res))
    # R5: probe ResNet50 (frozen random backbone here) + SVM on its features
    recipe = build_recipe("probe", epochs=[ep(3)], input_size=(64, 64))
    res = train_classifier(shapes, root / "r5-probe", recipe, **quiet)
    rows.append(_row("R5", f"probe resnet50 (frozen, random init), Adam 1e-4, {ep(3)} ep", "shapes 240/60, 64x64", root / "r5-probe", shapes, res))
    svm = svm_compare(root / "r5-probe", shapes, device="cpu", cache_dir=False)
    svm_r2 = svm_compare(root / "r2-cnn", digits, device="cpu", cache_dir=False)
    sweep_rows = run_sweep(digits, root / "r2-sweep", epochs=[ep(10)], **quiet)

    print(f"Machine: {_cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, CPU only. "
          f"Total {time.perf_counter() - started:.0f}s.\n")
    print("| report | recipe / setting | data (train/val/test) | train top-1 | held-out top-1 | held-out top-3 | macro F1 | training (s) |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print("\nSVM (RBF, gamma='scale') on penultimate features vs the network's own head (held-out top-1):\n")
    print("| run | features | SVM fit (s) | SVM train | SVM held-out | network held-out |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in (("R5 probe resnet50 (shapes)", svm), ("R2 cnn (digits)", svm_r2)):
        held = "test" if "test" in r["svm"] else "val"
        print(f"| {name} | {r['features']} | {r['svm']['fit_seconds']:.2f} | {r['svm']['train'] * 100:.1f}% | "
              f"{r['svm'][held] * 100:.1f}% ({held}) | {r['network'][held] * 100:.1f}% |")
    print(f"\nR2 one-factor sweep on digits (baseline MLP, ReLU, Adam, lr 0.05, batch 64, {ep(10)} epochs):\n")
    print(format_markdown(sweep_rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
