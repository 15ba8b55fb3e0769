"""Where the time of one training step goes, and what running some convolutions in float32 saves.

    python benchmarks/step_time.py [--model sepnet] [--batch-size 64] [--rounds 8] [--top 12]

Times a training step of `--model` (forward, loss, backward, fused AdamW) at its reading size on
random images, in bf16 autocast and channels-last as `captcha train` runs on a CPU with native bf16,
two ways in interleaved rounds: as shipped, where `CPUFloat32Conv2d` layers run in float32 under
autocast, and with every such layer run as a plain bf16 convolution. Then lists the operators that
take the most time in one of the two steps (`--profile`), by input shape (`torch.profiler`). Prints
a table naming the machine; the figures belong in docs/benchmarks.md, not in a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import describe  # noqa: E402

from captcha.models import create_model, default_input_size  # noqa: E402
from captcha.models.sepnet import CPUFloat32Conv2d  # noqa: E402
from captcha.runtime import fast_optimizer, loss_fn  # noqa: E402

CLASSES, LENGTH = 36, 4


def make_step(model_name: str, batch: int, float32_layers: bool):
    """A closure running one training step; `float32_layers=False` turns every `CPUFloat32Conv2d`
    back into a plain convolution, which autocast runs in bf16."""
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=CLASSES, length=LENGTH, in_channels=1, head="attention")
    model = model.to(memory_format=torch.channels_last).train()
    if not float32_layers:
        for layer in model.modules():
            if isinstance(layer, CPUFloat32Conv2d):
                layer.forward = nn.Conv2d.forward.__get__(layer)
    float32_layer_count = sum(isinstance(m, CPUFloat32Conv2d) for m in model.modules())
    return training_step(model, batch, default_input_size(model_name)), float32_layer_count


def training_step(model: nn.Module, batch: int, size: tuple[int, int]):
    """A closure running one training step of a channels-last `model` on random images of `size`,
    as `captcha train` runs on a CPU with native bf16."""
    x = torch.randn(batch, 1, *size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, CLASSES, (batch, LENGTH))
    optimizer = fast_optimizer(torch.optim.AdamW, list(model.parameters()), lr=1e-3)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
        loss = loss_fn(logits, y, "attention")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def time_rounds(steps: dict, rounds: int, per_round: int) -> dict[str, list[float]]:
    """Milliseconds a step, one figure a round, the configurations taking turns within each round."""
    for step in steps.values():
        step(), step()  # warm-up: oneDNN picks its kernels on the first calls
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(per_round):
                step()
            times[name].append((time.perf_counter() - start) / per_round * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sepnet")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps-per-round", type=int, default=4)
    parser.add_argument("--top", type=int, default=12, help="operators listed by self time")
    parser.add_argument("--profile", choices=("shipped", "plain"), default="shipped", help="which step's operators to list")
    args = parser.parse_args()
    shipped, layers = make_step(args.model, args.batch_size, True)
    plain, _ = make_step(args.model, args.batch_size, False)
    times = time_rounds({"shipped": shipped, "plain": plain}, args.rounds, args.steps_per_round)
    size = " x ".join(map(str, default_input_size(args.model)))
    print(f"\nMachine: {describe()}; {args.model} at {size}, batch {args.batch_size}, bf16 autocast, channels-last; "
          f"{args.rounds} interleaved rounds of {args.steps_per_round} steps\n")
    print("| step | float32 layers | ms a step, median (min-max) |")
    print("|---|---:|---|")
    for name, label, count in (("shipped", "as shipped", layers), ("plain", "every convolution in bf16", 0)):
        ms = times[name]
        print(f"| {label} | {count} | {statistics.median(ms):.0f} ({min(ms):.0f}-{max(ms):.0f}) |")
    ratio = statistics.median(times["shipped"]) / statistics.median(times["plain"])
    print(f"\nshipped / plain: {ratio:.2f}")
    profiled = shipped if args.profile == "shipped" else plain
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(2):
            profiled()
    print(f"\nOperators by self time over 2 {args.profile} steps (top {args.top}):\n")
    print("| operator | input shapes | calls | self ms |")
    print("|---|---|---:|---:|")
    rows = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: e.self_cpu_time_total, reverse=True)
    for event in rows[: args.top]:
        shapes = ", ".join(str(s) for s in event.input_shapes if s)
        print(f"| {event.key} | {shapes} | {event.count} | {event.self_cpu_time_total / 1000:.1f} |")


if __name__ == "__main__":
    main()
