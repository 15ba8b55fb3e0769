"""The reference row of `train_speed.py`: a plain PyTorch training loop, nothing more.

    python benchmarks/naive_train.py --data DIR --cache-dir DIR [--epochs 25] [--device auto]

resnet18_mod with pooled per-character heads, batch 64, fp32, Adam at 1e-3, the training images as
tensors on the device, no augmentation, no validation; the test split read once at the end.
This is the loop a user would write first; the project's trainer is measured against it. Prints
one JSON line: training seconds, first-epoch seconds and test whole-string accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from captcha.models import create_model  # noqa: E402
from captcha.recognition_data import prepare_data  # noqa: E402
from captcha.runtime import encode_labels, normalize_batch, resolve_device  # noqa: E402
from captcha.train_config import TrainConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--preprocess", default="denoise")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = resolve_device(args.device)
    settings = TrainConfig(data=args.data, model="resnet18_mod", preprocess=args.preprocess, head="fixed", cache_dir=args.cache_dir)
    data = prepare_data(settings, Path(args.data))
    length = data.length
    train, test = data.splits["train"], data.splits["test"]
    x = torch.from_numpy(train.images).to(device)
    y = encode_labels(train.labels, data.alphabet, length).to(device)
    model = create_model("resnet18_mod", num_classes=len(data.alphabet), length=length, in_channels=x.shape[1], head="fixed").to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    started = time.perf_counter()
    first_epoch = None
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(x), device=device)
        for i in range(0, len(x), 64):
            idx = order[i : i + 64]
            logits = model(normalize_batch(x[idx]))
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[idx].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        first_epoch = first_epoch or time.perf_counter() - started
    seconds = time.perf_counter() - started

    model.eval()
    with torch.no_grad():
        images = torch.from_numpy(test.images).to(device)
        pred = torch.cat([model(normalize_batch(images[i : i + 512])).argmax(-1) for i in range(0, len(images), 512)])
    truth = encode_labels(test.labels, data.alphabet, length).to(device)
    whole = (pred == truth).all(1).float().mean().item()
    print(json.dumps({"train_seconds": round(seconds, 2), "first_epoch_seconds": round(first_epoch or 0.0, 2), "test_whole_string": whole}))


if __name__ == "__main__":
    main()
