"""What width costs a training step: `sepnet`'s stages at other widths, timed side by side.

    python benchmarks/width_cost.py [--variant NAME=STEM:W1,W2,W3,W4 ...] [--rounds 5]

Each variant is `sepnet`'s body (a stride-2 stem, then its four stages with their strides and block
counts) at the stem and stage widths given, with the attention heads; `sepnet` and `sepnet_wide`
are always timed too. A step (forward, loss, backward, fused AdamW) on random images at the default
reading size runs as `benchmarks/step_time.py` runs it (bf16 autocast, channels-last), the variants
taking turns within each round. Prints parameters and milliseconds a step against `sepnet`'s,
naming the machine: where in the network extra width is cheapest on this machine, before anything is
trained with it. The figures belong in docs/benchmarks.md, not in a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import describe  # noqa: E402
from step_time import time_rounds, training_step  # noqa: E402

from captcha.constants import READ_SIZE  # noqa: E402
from captcha.models import create_model  # noqa: E402
from captcha.models._heads import Recognizer, make_head  # noqa: E402
from captcha.models.sepnet import SEPNET_STAGES, SepNetBody  # noqa: E402

CLASSES, LENGTH = 36, 4
SHIPPED = ("sepnet", "sepnet_wide")
# Wider only where the feature map is small (the last stages), or everywhere but the stem and first stage.
DEFAULT_VARIANTS = ("late=16:24,48,160,224", "taper=16:24,96,160,224")


def parse_variant(text: str) -> tuple[str, tuple[int, tuple[int, ...]]]:
    """`NAME=STEM:W1,W2,W3,W4` -> (name, (stem, widths)), with a message naming the bad part."""
    try:
        name, spec = text.split("=", 1)
        stem, widths = spec.split(":", 1)
        parsed = tuple(int(w) for w in widths.split(","))
        if not name or len(parsed) != len(SEPNET_STAGES) or min(parsed + (int(stem),)) < 1:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--variant {text!r}: expected NAME=STEM:W1,W2,W3,W4 with {len(SEPNET_STAGES)} positive stage widths") from None
    return name, (int(stem), parsed)


def build(stem: int, widths: tuple[int, ...]) -> Recognizer:
    stages = tuple((width, stride, blocks) for width, (_, stride, blocks) in zip(widths, SEPNET_STAGES))
    body = SepNetBody(1, stem=stem, stages=stages)
    return Recognizer(body, make_head("attention", body.out_features, CLASSES, LENGTH))


def describe_widths(model: Recognizer) -> str:
    """`stem : stage widths` of a sepnet body, read from the model itself."""
    body = model.backbone
    blocks = list(body.stages)
    starts = [sum(count for _, _, count in SEPNET_STAGES[:i]) for i in range(len(SEPNET_STAGES))]
    widths = [blocks[start].pointwise[0].out_channels for start in starts]
    return f"{body.stem[0].out_channels} : {', '.join(map(str, widths))}"


def make_step(model: torch.nn.Module, batch: int, size: tuple[int, int]):
    """A closure running one training step of `model` (`step_time.training_step`), and its parameter count."""
    torch.manual_seed(0)
    model = model.to(memory_format=torch.channels_last).train()
    return training_step(model, batch, size), sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", type=parse_variant, action="append", metavar="NAME=STEM:W1,W2,W3,W4",
                        help=f"a width to time beside sepnet and sepnet_wide (default: {' '.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--input-size", type=int, nargs=2, default=list(READ_SIZE), metavar=("H", "W"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps-per-round", type=int, default=2)
    args = parser.parse_args()
    variants = dict(args.variant or [parse_variant(v) for v in DEFAULT_VARIANTS])
    size = tuple(args.input_size)
    models = {name: create_model(name, num_classes=CLASSES, length=LENGTH, in_channels=1, head="attention") for name in SHIPPED}
    models.update({name: build(stem, widths) for name, (stem, widths) in variants.items()})
    steps, params = {}, {}
    for name, model in models.items():
        steps[name], params[name] = make_step(model, args.batch_size, size)
    times = time_rounds(steps, args.rounds, args.steps_per_round)
    base = statistics.median(times["sepnet"])
    print(f"\nMachine: {describe()}; {size[0]} x {size[1]}, batch {args.batch_size}, bf16 autocast, channels-last; "
          f"{args.rounds} interleaved rounds of {args.steps_per_round} steps\n")
    print("| variant | stem : stage widths | params | ms a step, median (min-max) | against sepnet |")
    print("|---|---|---:|---|---:|")
    for name, model in models.items():
        ms = times[name]
        print(f"| {name} | {describe_widths(model)} | {params[name]:,} | "
              f"{statistics.median(ms):.0f} ({min(ms):.0f}-{max(ms):.0f}) | {statistics.median(ms) / base:.2f}x |")


if __name__ == "__main__":
    main()
