"""Host work in one training step of `captcha train`: operators and host synchronisations per step.

    python benchmarks/step_profile.py [--batch-size 8] [--model resnet18_mod] [--device cpu]

Trains one epoch on a small generated set (256 training images) at a tiny batch, where per-step
overhead dominates, under `torch.profiler`, and counts what runs inside each step (the trainer
marks every step with `record_function("captcha.train_step")`): operators, and the calls that make
the host wait for the device (`aten::item`/`_local_scalar_dense`, `aten::is_nonzero`, copies to
the CPU, `aten::nonzero`). Prints a table naming the machine, the training arithmetic of one image
with each head (`torch.utils.flop_counter`, forward and backward; the naive loop of train_speed.py
uses fixed heads, `captcha train` attention heads), and the most frequent operators.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import describe  # noqa: E402

from captcha.generate import GeneratorConfig, generate_dataset  # noqa: E402
from captcha.models import create_model, default_input_size  # noqa: E402
from captcha.train import STEP_MARK, TrainConfig, fit  # noqa: E402

# Operators whose result the host must wait for: each is a synchronisation on a GPU.
SYNC_OPS = ("aten::item", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero", "aten::equal", "aten::masked_select",
            "cudaStreamSynchronize", "cudaDeviceSynchronize")


def _ancestors(event):
    parent = event.cpu_parent
    while parent is not None:
        yield parent
        parent = parent.cpu_parent


def step_ops(prof) -> tuple[int, Counter, Counter]:
    """The number of marked steps; a count of every operator called inside them (nested calls
    included); and a count of the host waits among them (outermost only: `item` calls
    `_local_scalar_dense`), keyed "optimizer" inside the optimizer's step and "elsewhere" outside it."""
    events = prof.events()
    steps = sum(e.name == STEP_MARK for e in events)
    inside: Counter = Counter()
    waits: Counter = Counter()
    for e in events:
        chain = [a.name for a in _ancestors(e)]
        if e.name == STEP_MARK or STEP_MARK not in chain:
            continue
        inside[e.name] += 1
        if e.name in SYNC_OPS and not any(name in SYNC_OPS for name in chain):
            waits["optimizer" if any(name.startswith("Optimizer.step") for name in chain) else "elsewhere"] += 1
    return steps, inside, waits


def training_flops(model: str, head: str, classes: int = 19, length: int = 4, batch: int = 8) -> float:
    """FLOPs of one training image (forward and backward) of `model` with `head`, at the model's
    reading size and one input channel, counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    net = create_model(model, num_classes=classes, length=length, in_channels=1, head=head)
    x = torch.randn(batch, 1, *default_input_size(model))
    with FlopCounterMode(display=False) as counter:
        net(x).float().sum().backward()
    return counter.get_total_flops() / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", default="resnet18_mod")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ema", type=float, default=0.0, help="also average the weights (the EMA update is in the step)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate_dataset(data, GeneratorConfig(splits={"train": 256, "val": 32, "test": 0}))
        config = TrainConfig(data=str(data), out=f"{tmp}/run", model=args.model, epochs=1, batch_size=args.batch_size, init="none",
                             device=args.device, cache_dir=f"{tmp}/cache", ema=args.ema)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
        with profile(activities=activities) as prof:
            fit(config, log=lambda s: None)
    steps, inside, waits = step_ops(prof)
    if not steps:
        sys.exit(f"no step marked {STEP_MARK!r}: the trainer did not run a step")
    print(f"\nMachine: {describe()}; {args.model}, batch {args.batch_size}, device {args.device}, ema {args.ema}; {steps} steps\n")
    print("| per training step | count |")
    print("|---|---:|")
    print(f"| operators (aten::, nested included) | {sum(n for k, n in inside.items() if k.startswith('aten::')) / steps:.1f} |")
    print(f"| host reads of a tensor's value, outside the optimizer | {waits['elsewhere'] / steps:.2f} |")
    print(f"| host reads inside the optimizer's step | {waits['optimizer'] / steps:.2f} |")
    size = "x".join(map(str, default_input_size(args.model)))
    for head in ("fixed", "attention"):
        print(f"| training MFLOP an image, {head} heads, {size} (flop_counter) | {training_flops(args.model, head) / 1e6:.1f} |")
    print("\nOn a CPU a host read costs no wait; on a GPU each is a synchronisation. torch's fused CPU"
          "\noptimizers read their step count on the host, the CUDA ones on the device.")
    print("\nMost frequent operators per step:")
    for name, n in inside.most_common(12):
        print(f"  {n / steps:7.1f}  {name}")


if __name__ == "__main__":
    main()
