"""Reading speed without gradients: milliseconds per image by images per forward pass and views.

    python benchmarks/eval_speed.py [--run RUN_DIR] [--images 1000] [--batches 1 8 32 512] [--views 1 5] [--repeats 3]

Reads the built-in generated set's validation images (created once, then cached) with the
default model, or with a trained run's `best.pt` (`--run`), in eval mode as `captcha evaluate`,
validation during training and `captcha predict` do, and prints a Markdown table naming the
machine: for each number of test-time views and each number of images a pass, the time per
image (a forward pass carries every view of its images: five views of 32 images are 160) with the
weights in the channels-last layout (NHWC: how `fit` trains and `load_model` now loads them) and
in PyTorch's default one (NCHW: how `load_model` loaded them before), and which batch
`captcha.runtime.eval_batch` picks on this device (before it, every pass read 512 images,
whatever the views). The best of `--repeats` passes is
kept, so a neighbour's burst of work on a shared machine counts less. The weights do not change
the work, so the default model is read with freshly initialised weights.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import describe  # noqa: E402

import torch  # noqa: E402

from captcha import checkpoint as ckpt  # noqa: E402
from captcha.models import create_model  # noqa: E402
from captcha.preprocess import get_preprocessor  # noqa: E402
from captcha.runtime import eval_batch, predict_logits, resolve_device  # noqa: E402
from captcha.recognition_data import default_data_dir, prepare_data  # noqa: E402
from captcha.train import TrainConfig  # noqa: E402
from captcha.tta import read_views  # noqa: E402


def default_model(config: TrainConfig, device: torch.device, num_classes: int, length: int) -> tuple[torch.nn.Module, str]:
    """The default model, untrained: its reading speed does not depend on its weights."""
    channels = get_preprocessor(config.preprocess).channels
    model = create_model(config.model, num_classes=num_classes, length=length, in_channels=channels, head=config.head)
    model.to(device).to(memory_format=torch.channels_last)  # as `fit` trains it and `load_model` reads it
    return model, f"{config.model} (the default model)"


def seconds_per_image(model: torch.nn.Module, images: torch.Tensor, batch: int, repeats: int) -> float:
    predict_logits(model, images[:batch], batch)  # warm-up: first-call allocations and kernel choice
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        predict_logits(model, images, batch)
        best = min(best, time.perf_counter() - started)
    return best / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a trained run folder (default: the default model on the built-in set)")
    parser.add_argument("--images", type=int, default=1000, help="validation images read per pass")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128, 512],
                        help="images a pass to time (a forward pass carries each image's views)")
    parser.add_argument("--views", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    data = default_data_dir()
    model = None
    if args.run:  # the images are read at the run's own size and preprocessor
        model, meta = ckpt.load_model(Path(args.run) / ckpt.BEST, device)
        name = f"{meta['model']['name']} from {args.run}"
        config = TrainConfig(data=str(data), preprocess=meta["preprocess"], input_size=tuple(meta["input_size"]))
    else:
        config = TrainConfig(data=str(data))
    prepared = prepare_data(config, data)
    images = torch.from_numpy(prepared.splits["val"].images[: args.images]).to(device)
    if model is None:
        model, name = default_model(config, device, len(prepared.alphabet), prepared.length or 1)

    layouts = {"NHWC": torch.channels_last, "NCHW": torch.contiguous_format}
    rows = []
    for views in args.views:
        read_views(model, views)
        auto = eval_batch(model, device)
        for batch in sorted(set(args.batches) | {auto}):
            ms = {}
            for layout_name, layout in layouts.items():
                model.to(memory_format=layout)
                ms[layout_name] = seconds_per_image(model, images, batch, args.repeats) * 1000
            rows.append((views, batch, batch * views, ms, batch == auto))
            print(f"done: {views} views, {batch} images a pass", file=sys.stderr)
    model.to(memory_format=torch.channels_last)
    read_views(model, 1)

    print(f"\nMachine: {describe()}; device {device}; {name}; {len(images)} validation images of the built-in set, "
          f"best of {args.repeats} passes\n")
    print("| views | images a pass | images a forward pass (views counted) | ms per image, NHWC (channels-last, as loaded) | "
          "ms per image, NCHW | picked by `eval_batch` |")
    print("|---:|---:|---:|---:|---:|:---:|")
    for views, batch, forward, ms, picked in rows:
        print(f"| {views} | {batch} | {forward} | {ms['NHWC']:.2f} | {ms['NCHW']:.2f} | {'yes' if picked else ''} |")


if __name__ == "__main__":
    main()
