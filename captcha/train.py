"""Training: `fit(config)` runs a whole experiment; `train_one_epoch` and `evaluate` are the loop.

Decoded, preprocessed images stay in memory as one uint8 tensor on the training device; each
batch is normalised and augmented there. Every epoch writes `last.pt` (weights, optimizer,
scheduler, random states, history), so `--resume` continues an interrupted run exactly where it
stopped; `best.pt` is the checkpoint with the best validation whole-string accuracy.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from captcha import checkpoint as ckpt
from captcha import distributed as dist
from captcha import pretrained
from captcha.alphabet import Alphabet
from captcha.augment import AUGMENT_LEVELS, augment_batch
from captcha.constants import DEFAULT_MAX_PARAMS, INPUT_SIZE, NORM_MEAN, NORM_STD
from captcha.data import (LAYOUT_HINT, SKIP_BAD_HINT, DataError, Dataset, Sample, check_labels, load_images, load_splits, split_samples,
                          length_spread)
from captcha.decoding import decode
from captcha.distill import distillation_loss, load_teacher
from captcha.imageio import list_images
from captcha.plots import PLOT_FORMATS
from captcha.metrics import format_accuracies, per_char_accuracy, per_char_counts, sequence_accuracy
from captcha.models import count_parameters, create_model
from captcha.models._heads import AttentionHeads, CTCHead
from captcha.preprocess import get_preprocessor
from captcha.tensorboard_log import TensorBoardLog
from captcha.tensorboard_log import check_available as check_tensorboard
from captcha.tta import views_for, views_read


class ParameterBudgetError(ValueError):
    """The chosen model has more parameters than `--max-params` allows."""


@dataclass
class TrainConfig:
    """Everything that defines a training run; stored in every checkpoint."""

    data: str | None = None  # labeled folder; None = the built-in generated CAPTCHA set
    out: str = "runs/latest"  # run directory: best.pt, last.pt, metrics.csv, learning_curves.png
    model: str = "sepnet"  # depthwise-separable, ~85K parameters; resnet18_mod is the course's 95K model
    preprocess: str = "gray"  # measured best on unseen styles; shipped pre-trained weights match it
    head: str = "attention"  # attention (position-aware) | fixed (pooled, as in the course) | ctc (variable length)
    epochs: int = 60  # benchmarks/accuracy.py: whole-string on the three eval styles in the README, 7-20 min on 2 CPU cores, by the day's machine
    batch_size: int = 64
    lr: float = 1e-2  # peak learning rate (eval-scriptc, weight_decay 0.05, 5 views: 3e-3 88.1%, 6e-3 89.7%, 1e-2 91.3%, 2e-2 90.9%)
    optimizer: str = "adamw"  # adam | adamw | sgd
    weight_decay: float = 0.05  # AdamW's decoupled decay (eval-scriptc, 1 view at lr 3e-3: 1e-4 82.7%, 0.05 84.4%; 5 views at lr 1e-2: 0.1 91.2%); L2 with adam or sgd
    schedule: str = "onecycle"  # onecycle | cosine | constant
    label_smoothing: float = 0.2  # eval-scriptc / eval-lines, 5 views: 0 92.5 / 93.8%, 0.1 93.5 (seed 1: 93.3) / 95.5%, 0.2 93.9 (seed 1: 93.6) / 95.4 (seed 1: 95.1)%
    ema: float = 0.0  # decay of an exponential moving average of the weights, validated and saved instead; 0 = off
    augment: str = "light"  # none | light | strong (on the training device)
    augment_views: int = 1  # augmented copies of each image per step; 2, batch 32, 30 epochs (the same work): plain / scriptc / lines 99.6 / 94.1 / 94.9% against 99.4 / 93.9 (a rerun: 94.3) / 95.4%: noise, so off
    tta: int = 5  # views read per image at evaluation and inference (captcha.tta): 1, 5 or 9; 1 = off
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    patience: int = 0  # stop after this many epochs without a better val score; 0 = never
    max_params: int = DEFAULT_MAX_PARAMS
    alphabet: str | None = None  # None = inferred from the training labels
    length: int | None = None  # None = inferred from the training labels (fixed heads)
    input_size: tuple[int, int] = INPUT_SIZE
    skip_bad: bool = False  # leave bad files out with a warning instead of stopping
    cache_dir: str | None = None  # where preprocessed datasets are cached; None = ~/.cache/captchakit
    init: str | None = "pretrained"  # pretrained (shipped weights when they match) | none | a checkpoint to fine-tune
    eval_batch_size: int | None = None  # images a validation pass reads; None = eval_batch's choice for the device
    resume: bool = False  # continue from out/last.pt if it exists
    channels_last: bool = True  # NHWC memory layout: faster convolutions on CPU and GPU
    amp: bool = True  # bf16 autocast when training on CUDA (ignored on CPU)
    unlabeled: str | None = None  # folder of unlabeled images of the same style, pseudo-labeled during training
    pseudo_threshold: float = 0.95  # use a pseudo-label only when every character's probability reaches this
    teacher: str | None = None  # a trained run whose per-character distributions the student also learns (distillation)
    distill_weight: float = 0.5  # share of the distillation term in the loss, with --teacher
    distill_temperature: float = 2.0  # softening of both distributions, with --teacher
    plot_format: str = "png"  # learning curves and confusion matrix as png or svg
    tensorboard: str | None = None  # folder for TensorBoard event files ("" = OUT/tensorboard); None = off

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError("--epochs must be at least 1")
        if self.patience < 0:
            raise ValueError("--patience must be 0 (never stop early) or more")
        if len(self.input_size) != 2 or min(self.input_size) < 8:
            raise ValueError(f"--input-size takes a height and a width of at least 8 pixels, not {' '.join(map(str, self.input_size))}")
        if self.batch_size < 1:
            raise ValueError("--batch-size must be at least 1")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ValueError("eval_batch_size must be at least 1 (or None for the device's default)")
        if self.lr <= 0:
            raise ValueError("--lr must be positive")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise ValueError(f"--optimizer must be adam, adamw or sgd, not {self.optimizer!r}")
        if self.schedule not in ("onecycle", "cosine", "constant"):
            raise ValueError(f"--schedule must be onecycle, cosine or constant, not {self.schedule!r}")
        if self.augment not in AUGMENT_LEVELS:
            raise ValueError(f"--augment must be one of {', '.join(AUGMENT_LEVELS)}, not {self.augment!r}")
        if self.head == "ctc" and self.length is not None:
            raise ValueError("--length does not apply to --head ctc, which reads labels of any length")
        if self.augment_views < 1:
            raise ValueError("--augment-views must be at least 1")
        if self.augment_views > 1 and self.augment == "none":
            raise ValueError("--augment-views above 1 needs --augment light or strong: unaugmented copies are the same image")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("--label-smoothing must be in [0, 1)")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError("--ema must be in [0, 1)")
        if not 0.0 < self.pseudo_threshold <= 1.0:
            raise ValueError("--pseudo-threshold must be in (0, 1]")
        if not 0.0 < self.distill_weight <= 1.0:
            raise ValueError("--distill-weight must be in (0, 1]")
        if self.distill_temperature <= 0:
            raise ValueError("--distill-temperature must be positive")
        if self.tensorboard is not None:
            check_tensorboard()
        if self.plot_format not in PLOT_FORMATS:
            raise ValueError(f"--plot-format must be {' or '.join(PLOT_FORMATS)}, not {self.plot_format!r}")
        get_preprocessor(self.preprocess)  # raises on an unknown name
        views_for(self.tta)  # raises on an unsupported count
        self.input_size = tuple(self.input_size)


@dataclass
class EpochStats:
    loss: float
    per_char: list[float]
    sequence: float
    samples: int
    texts: list[str] = field(default_factory=list, repr=False)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but no CUDA GPU is available")
    return torch.device(name)


def encode_labels(labels: list[str], alphabet: Alphabet, width: int) -> torch.Tensor:
    """Labels as class indices, padded with -1 to `width` (variable-length CTC labels)."""
    out = torch.full((len(labels), width), -1, dtype=torch.long)
    for i, text in enumerate(labels):
        out[i, : len(text)] = torch.tensor(alphabet.encode(text), dtype=torch.long)
    return out


def loss_fn(logits: torch.Tensor, targets: torch.Tensor, head: str, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over heads, or CTC loss for a CTC head (targets padded with -1)."""
    if head == "ctc":
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # T x B x C+1
        lengths = (targets >= 0).sum(1)
        flat = targets[targets >= 0] + 1  # class 0 is the blank
        input_lengths = torch.full((logits.shape[0],), logits.shape[1], dtype=torch.long)
        return F.ctc_loss(log_probs, flat, input_lengths, lengths, blank=0, zero_infinity=True)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), label_smoothing=label_smoothing)


def normalize_batch(x: torch.Tensor, mean: float = NORM_MEAN, std: float = NORM_STD) -> torch.Tensor:
    """uint8 batch -> float, the same arithmetic as `captcha.preprocess.normalize`."""
    return (x.float() * (1.0 / 255.0) - mean) / std


def train_one_epoch(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    labels: list[str],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    config: TrainConfig,
    alphabet: str,
    generator: torch.Generator,
    progress_desc: str = "",
    ema_model: torch.optim.swa_utils.AveragedModel | None = None,
    pseudo: tuple[torch.Tensor, torch.Tensor] | None = None,
    teacher: nn.Module | None = None,
) -> EpochStats:
    """One pass over the labeled images; with `pseudo` (images, targets), every batch also gets as
    many pseudo-labeled images drawn at random from that pool; with `config.augment_views` above 1,
    each image is read in that many independently augmented copies in the same step; with a
    `teacher`, the loss mixes in distillation from its logits on the same augmented batch."""
    model.train()
    device = next(model.parameters()).device
    n = images.shape[0]
    order = dist.shard(torch.randperm(n, generator=generator), n)
    total_loss, seen, texts, truth = 0.0, 0, [], []
    bar = tqdm(total=math.ceil(len(order) / config.batch_size), desc=progress_desc, unit="step", leave=False,
               disable=None if dist.is_main() else True)  # None: drawn on a terminal only
    for start in range(0, len(order), config.batch_size):
        idx = order[start : start + config.batch_size]
        batch, y = images[idx.to(images.device)], targets[idx]
        if pseudo is not None and len(pseudo[0]):
            extra = torch.randint(len(pseudo[0]), (len(idx),), generator=generator)
            batch = torch.cat([batch, pseudo[0][extra.to(pseudo[0].device)]])
            y = torch.cat([y, pseudo[1][extra]])
        if config.augment_views > 1:  # copies first-to-last, so rows [:len(idx)] stay the labeled images' first view
            batch, y = batch.repeat(config.augment_views, 1, 1, 1), y.repeat(config.augment_views, 1)
        x = normalize_batch(batch.to(device, non_blocking=True))
        x = augment_batch(x, config.augment, generator)
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp and device.type == "cuda"):
            logits = model(x)
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(x)
        loss = loss_fn(logits, y, config.head, config.label_smoothing)
        if teacher is not None:
            w = config.distill_weight
            loss = (1.0 - w) * loss + w * distillation_loss(logits, teacher_logits, config.distill_temperature)
        logits = logits[: len(idx)]  # the epoch's statistics cover the labeled images only
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema_model is not None:
            ema_model.update_parameters(model)
        total_loss += loss.item() * len(idx)
        seen += len(idx)
        texts += [p.text for p in decode(logits.detach().float().cpu().numpy(), alphabet, config.head)]
        truth += [labels[i] for i in idx.tolist()]
        bar.update()
        if not bar.disable:
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    bar.close()
    return _stats(total_loss, seen, texts, truth, targets.shape[1])


def _stats(total_loss: float, seen: int, texts: list[str], truth: list[str], width: int) -> EpochStats:
    """Epoch statistics, summed over every process when training is distributed."""
    hits, totals = per_char_counts(texts, truth, width)
    seq = sequence_accuracy(texts, truth)
    sums = dist.all_reduce_sum([total_loss, float(seen), seq * seen] + [float(h) for h in hits] + [float(n) for n in totals])
    total_loss, seen_f, seq_hits = sums[0], sums[1], sums[2]
    per_char = [h / n if n else 0.0 for h, n in zip(sums[3 : 3 + width], sums[3 + width :])]
    return EpochStats(total_loss / max(seen_f, 1), per_char, seq_hits / max(seen_f, 1), int(seen_f), texts)


# Images a forward pass carries when reading without gradients, test-time views counted (five
# views of 6 images are a pass of 30). On a CPU a few dozen images keep the activations in
# cache: in the training layout, passes of 32 read 1.6x faster than passes of 512 images with
# one view, and 6 images a pass 3.7x faster than 512 with five (benchmarks/eval_speed.py).
# A GPU wants large passes.
EVAL_IMAGES_PER_PASS = {"cpu": 32, "cuda": 512}


def eval_batch(model: nn.Module, device: torch.device | None = None) -> int:
    """Images per forward pass for reading with `model` on `device` (default: where it is):
    `EVAL_IMAGES_PER_PASS` for the device, shared among the model's test-time views."""
    device = device or next(model.parameters()).device
    return max(1, EVAL_IMAGES_PER_PASS.get(device.type, EVAL_IMAGES_PER_PASS["cuda"]) // views_read(model))


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int | None = None, mean: float = NORM_MEAN,
                   std: float = NORM_STD) -> torch.Tensor:
    """Logits for uint8 images N x K x H x W, `batch_size` at a time (default `eval_batch`), on
    the model's device. Eval mode: the result does not depend on the batch size."""
    model.eval()
    device = next(model.parameters()).device
    batch_size = batch_size or eval_batch(model, device)
    starts = tqdm(range(0, images.shape[0], batch_size), desc="reading", unit="batch", leave=False, disable=None if dist.is_main() else True)
    outs = [model(normalize_batch(images[i : i + batch_size].to(device), mean, std)).float().cpu() for i in starts]
    return torch.cat(outs) if outs else torch.zeros(0)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, labels: list[str], alphabet: str, head: str,
             batch_size: int | None = None) -> EpochStats:
    """Loss, per-character and whole-string accuracy on one split (no augmentation)."""
    logits = predict_logits(model, images, batch_size)
    if logits.numel() == 0:
        return EpochStats(float("nan"), [0.0] * targets.shape[1], 0.0, 0, [])
    loss = loss_fn(logits, targets, head).item()
    texts = [p.text for p in decode(logits.numpy(), alphabet, head)]
    return EpochStats(loss, per_char_accuracy(texts, labels, targets.shape[1]), sequence_accuracy(texts, labels), len(labels), texts)


@torch.no_grad()
def pseudo_label_indices(model: nn.Module, images: torch.Tensor, alphabet: str, head: str, width: int, threshold: float,
                         label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Which unlabeled images the model reads with every character at `threshold` or above (their
    indices), and those readings as targets (padded to `width`). The confidences are rescaled for
    the `label_smoothing` the model trains with (`captcha.decoding.unsmooth`): a smoothed head's
    surest reading is about 0.81, so a raw 0.95 would pass no image at all."""
    logits = predict_logits(model, images)
    if logits.numel() == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, width, dtype=torch.long)
    keep, texts = [], []
    for i, p in enumerate(decode(logits.numpy(), alphabet, head, label_smoothing)):
        if p.text and len(p.text) <= width and min(p.char_confidences) >= threshold:
            keep.append(i)
            texts.append(p.text)
    return torch.tensor(keep, dtype=torch.long), encode_labels(texts, Alphabet(alphabet), width)


def pseudo_label(model: nn.Module, images: torch.Tensor, alphabet: str, head: str, width: int, threshold: float,
                 label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The images `pseudo_label_indices` keeps, and their targets."""
    index, targets = pseudo_label_indices(model, images, alphabet, head, width, threshold, label_smoothing)
    return images[index.to(images.device)], targets


PSEUDO_START = 1 / 3  # pseudo-labels join after this fraction of the epochs: the model must read well first
PSEUDO_REFRESHES = 6  # how many times the pool is relabeled over the remaining epochs


def log_line(epoch: int, epochs: int, phase: str, stats: EpochStats, elapsed: float) -> str:
    """The course report's epoch line, plus whole-string accuracy and elapsed time."""
    return (
        f"Epoch [{epoch}/{epochs}], phase: {phase}, samples: {stats.samples}, Loss: {stats.loss:.4f}, "
        f"Top-1 Accuracies: {format_accuracies(stats.per_char)}, Sequence: {stats.sequence * 100:.2f}%, "
        f"Elapsed: {elapsed:.1f}s"
    )


def infer_length(labels: list[str]) -> int:
    """The most common label length; labels of other lengths are then reported as bad data."""
    if not labels:
        raise DataError([("<train split>", "no training images found")], "no data")
    return Counter(len(t) for t in labels).most_common(1)[0][0]


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay, nesterov=True)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    total = config.epochs * steps_per_epoch
    if config.schedule == "onecycle":
        total = max(total, 4)  # each of the two phases needs at least two steps (tiny runs)
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total, pct_start=max(0.25, 2 / total))
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return None


def default_data_dir(cache_dir: str | None = None) -> Path:
    """The built-in generated set: created once (4000/1000/3000, course style) and reused."""
    from captcha.constants import DEFAULT_DATA_DIRNAME
    from captcha.data import _default_cache_dir
    from captcha.generate import GeneratorConfig, generate_dataset

    root = Path(cache_dir) if cache_dir else _default_cache_dir()
    folder = root / DEFAULT_DATA_DIRNAME
    marker = folder / ".complete"
    if not marker.exists():
        if dist.is_main():
            print(f"Generating the built-in CAPTCHA set once in {folder} ...", flush=True)
            generate_dataset(folder, GeneratorConfig())
            marker.write_text("ok\n")
        dist.barrier()
    return folder


@dataclass
class PreparedData:
    alphabet: Alphabet
    length: int | None
    splits: dict[str, Dataset]


def prepare_data(config: TrainConfig, data_dir: Path) -> PreparedData:
    """Find, check and decode every split; one DataError lists every bad file of every split.

    The label length and alphabet are inferred from the training images that decode (unless
    given), so a file left out by `--skip-bad` adds no symbol; a split left empty by it is refused."""
    problems: list[tuple[str, str]] = []
    samples = load_splits(data_dir, seed=config.seed, problems=problems)
    if not samples["train"]:
        raise DataError(problems or [(str(data_dir), "no labeled images found")], f"no training data in {data_dir}", hint=LAYOUT_HINT)
    if not samples["val"]:
        parts = split_samples(samples["train"], config.seed, val_fraction=0.1, test_fraction=0.0)
        samples["train"], samples["val"] = parts["train"], parts["val"]
    encoded = {split: load_images(items, config.preprocess, config.input_size, config.cache_dir) for split, items in samples.items()}
    for enc in encoded.values():
        problems += enc.problems
    train_labels = [s.label for s in encoded["train"].samples]
    if not train_labels:
        raise DataError(sorted(problems), f"no readable training images in {data_dir}", hint=None)
    length = None if config.head == "ctc" else (config.length or infer_length(train_labels))
    alphabet = Alphabet(config.alphabet) if config.alphabet else Alphabet.from_labels(t for t in train_labels if length is None or len(t) == length)
    splits = {}
    for split, enc in encoded.items():
        bad = check_labels(enc.samples, alphabet, length)
        problems += bad
        bad_paths = {p for p, _ in bad}
        keep = [i for i, s in enumerate(enc.samples) if str(s.path) not in bad_paths]
        images = enc.images if len(keep) == len(enc.samples) else enc.images[keep]
        splits[split] = Dataset(images, [enc.samples[i].label for i in keep], [enc.samples[i].path for i in keep])
    if problems:
        spread = length_spread(train_labels, length) if length is not None and not config.length else None
        varying = f"The training labels vary in length ({spread} characters), but the {config.head} head reads {length} characters"
        header = f"bad data in {data_dir}" + (" (labels of several lengths: see the last line)" if spread else "")
        hint = (f"{varying}. For variable-length CAPTCHAs train with --head ctc; to keep only the {length}-character labels, "
                f"pass --skip-bad (or --length N for another length).") if spread else SKIP_BAD_HINT
        error = DataError(sorted(problems), header, hint=hint)
        if not config.skip_bad:
            raise error
        if dist.is_main():
            print("WARNING: " + str(error).splitlines()[0] + " (left out, --skip-bad):")
            for path, reason in sorted(problems)[:50]:
                print(f"  {path}: {reason}")
            if spread:
                print(f"WARNING: {varying}: every label of another length is left out; --head ctc reads them all.")
    for split in ("train", "val"):
        if not len(splits[split]):
            raise DataError(sorted(problems), f"no usable {split} images left in {data_dir} after leaving out the bad files (--skip-bad)", hint=None)
    return PreparedData(alphabet, length, splits)


def load_unlabeled(config: TrainConfig) -> torch.Tensor:
    """Every image under `config.unlabeled` (any depth; names and labels.csv are ignored),
    decoded and preprocessed like the labeled ones: uint8 N x K x H x W."""
    folder = Path(config.unlabeled)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (--unlabeled)")
    samples = [Sample(p, "") for p in list_images(folder, recursive=True)]
    if not samples:
        raise DataError([(str(folder), "no images found")], "no unlabeled images (--unlabeled)")
    encoded = load_images(samples, config.preprocess, config.input_size, config.cache_dir)
    if encoded.problems:
        error = DataError(sorted(encoded.problems), f"bad images in {folder}")
        if not config.skip_bad:
            raise error
        if dist.is_main():
            print("WARNING: " + str(error).splitlines()[0] + " (left out, --skip-bad)")
    return torch.from_numpy(encoded.images)


def feature_columns(model: nn.Module, channels: int, size: tuple[int, int]) -> int:
    """How many feature columns a recognizer's backbone gives its head for images of `size`."""
    was_training = model.training
    model.eval()  # leaves the batch-norm statistics alone
    try:
        with torch.no_grad():
            return model.backbone(torch.zeros(1, channels, *size)).shape[-1]
    finally:
        model.train(was_training)


def ctc_columns_needed(label: str) -> int:
    """Output columns a CTC head needs to spell `label`: one per character, plus a blank between
    each pair of equal neighbours."""
    return len(label) + sum(a == b for a, b in zip(label, label[1:]))


def _check_input_width(model: nn.Module, config: TrainConfig, channels: int, labels: list[str], log: Callable[[str], None]) -> None:
    """Refuse an input too wide for the attention head's positions; warn about labels a CTC head
    has too few columns to spell (their loss is zero, so they are never learned)."""
    if not isinstance(getattr(model, "head", None), (AttentionHeads, CTCHead)):
        return
    height, width = config.input_size
    columns = feature_columns(model, channels, (height, width))
    if isinstance(model.head, AttentionHeads):
        most = model.head.position.shape[2]
        if columns > most:
            fits = width * most // columns
            while fits > 1 and feature_columns(model, channels, (height, fits)) > most:
                fits -= 1
            raise ValueError(f"--input-size {height} {width}: {config.model} gives {columns} feature columns at that width, but the "
                             f"attention head reads at most {most}; use a width of at most {fits}, or --head ctc")
        return
    short = [t for t in labels if ctc_columns_needed(t) > columns]
    if short:
        log(f"WARNING: {len(short)} of {len(labels)} training labels (e.g. {short[0]!r}) need more than the {columns} output columns "
            f"the CTC head has at --input-size {height} {width} (one per character, plus one between equal neighbours): "
            f"they cannot be learned; a wider --input-size gives more columns")


def _init_weights(model: nn.Module, config: TrainConfig, alphabet: str) -> str:
    """Start from the shipped pre-trained weights, a given checkpoint, or nothing; says which."""
    source = config.init
    if source in (None, "", pretrained.SCRATCH):
        return "Initialised at random (--init none)"
    if source == pretrained.PRETRAINED:
        found = pretrained.find_pretrained(config.model, config.preprocess, config.head)
        if found is None:
            return (f"Initialised at random: no shipped pre-trained weights for {config.model} + {config.preprocess} + "
                    f"{config.head} head (shipped: {', '.join(pretrained.list_pretrained()) or 'none'})")
        source = str(found)
    copied = pretrained.transfer_weights(model, source, alphabet, config.head)
    return f"Initialised {copied} of {len(model.state_dict())} tensors from {source}"


@dataclass
class RunResult:
    run_dir: Path
    best_epoch: int
    val: dict
    test: dict | None
    parameters: int
    train_seconds: float


def _stats_dict(s: EpochStats) -> dict:
    return {"samples": s.samples, "loss": s.loss, "per_char_accuracy": s.per_char, "sequence_accuracy": s.sequence}


def fit(config: TrainConfig, on_epoch_end: Callable[[int, dict], None] | None = None, log: Callable[[str], None] = print,
        given: set[str] | None = None) -> RunResult:
    """Train, keep the best checkpoint, evaluate it on the test split; resumable. `given` names
    the settings given on the command line, which `--resume` reports as ignored when they
    differ from the run's, even where they equal the defaults."""
    run_dir = Path(config.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {run_dir}: a file of that name is there; name a folder for the run")
    last_path = run_dir / ckpt.LAST
    resume_state = None
    device = resolve_device(config.device)
    if config.resume and not last_path.exists():  # a typo in --out, or a run cut short before its first epoch ended
        raise FileNotFoundError(f"--resume: no {last_path} to continue (a run writes it at the end of each epoch); "
                                "check --out, or start the run without --resume")
    if config.resume:
        resume_state = ckpt.read_checkpoint_file(last_path)
        saved = {k: v for k, v in resume_state["config"].items() if k in {f.name for f in fields(TrainConfig)}}
        saved.update(device=config.device, out=config.out)
        ignored = _settings_resume_ignores(config, saved, given)
        config = TrainConfig(**saved)
        if dist.is_main():
            log(f"Resuming {run_dir} from epoch {resume_state['epoch']} of {config.epochs}")
            if ignored:
                log("--resume continues the run with the settings it was started with; ignoring " + ", ".join(ignored))

    torch.manual_seed(config.seed)
    data_dir = Path(config.data) if config.data else default_data_dir(config.cache_dir)
    data = prepare_data(config, data_dir)
    train, val, test = data.splits["train"], data.splits["val"], data.splits.get("test")
    channels = get_preprocessor(config.preprocess).channels
    model_args = {"num_classes": len(data.alphabet), "length": data.length or 1, "in_channels": channels, "head": config.head}
    model = create_model(config.model, **model_args)
    n_params = count_parameters(model)
    if n_params > config.max_params:
        raise ParameterBudgetError(
            f"model {config.model} has {n_params:,} parameters, over the budget of {config.max_params:,} (--max-params)"
        )
    _check_input_width(model, config, channels, train.labels, log if dist.is_main() else (lambda s: None))
    if resume_state is None:
        message = _init_weights(model, config, data.alphabet.symbols)
        if dist.is_main():
            log(message)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    width = data.length or max(len(t) for t in train.labels)
    tensors = {}
    for name, ds in (("train", train), ("val", val), ("test", test)):
        if ds is None:
            continue
        tensors[name] = (torch.from_numpy(ds.images).to(device), encode_labels(ds.labels, data.alphabet, max(width, max((len(t) for t in ds.labels), default=1))))
    unlabeled = load_unlabeled(config).to(device) if config.unlabeled else None
    teacher = None
    if config.teacher:
        teacher = load_teacher(config.teacher, device, alphabet=data.alphabet.symbols, length=data.length, head=config.head,
                               preprocess=config.preprocess, input_size=config.input_size)
        if dist.is_main():
            t_val = evaluate(teacher, *tensors["val"], val.labels, data.alphabet.symbols, config.head, config.eval_batch_size)
            log(f"Distilling from {config.teacher} ({count_parameters(teacher):,} parameters, val whole-string "
                f"{t_val.sequence * 100:.2f}%), weight {config.distill_weight}, temperature {config.distill_temperature}")
    pseudo_from = max(2, int(config.epochs * PSEUDO_START) + 1)
    pseudo_every = max(1, (config.epochs - pseudo_from + 1) // PSEUDO_REFRESHES)
    pseudo = None  # (images, targets) the current pool trains on
    pseudo_saved = None  # (indices into the unlabeled images, targets): what last.pt keeps of the pool
    ema_model = None
    if config.ema:
        ema_fn = torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema)
        ema_model = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=ema_fn, use_buffers=True)
    eval_model = ema_model.module if ema_model is not None else model  # what is validated and saved
    ddp_model = dist.wrap_model(model, device)
    optimizer = _make_optimizer(model, config)
    steps_per_epoch = math.ceil(math.ceil(len(train) / dist.world_size()) / config.batch_size)
    scheduler = _make_scheduler(optimizer, config, steps_per_epoch)
    # The same seed on every process: each draws the same permutation and takes its own share of it
    # (`dist.shard`); per-rank seeds drew different permutations, so shares overlapped.
    generator = torch.Generator().manual_seed(config.seed)

    meta = ckpt.make_meta(
        task="recognition", model_name=config.model, model_args=model_args, input_size=config.input_size,
        channels=channels, preprocess=config.preprocess, mean=NORM_MEAN, std=NORM_STD,
        alphabet=data.alphabet.symbols, length=data.length, config=_config_dict(config),
    )
    meta["parameters"] = n_params
    meta["tta"] = config.tta  # validated during training with one view, for speed; the final scores use them all
    history: list[dict] = []
    best_score, best_epoch, start_epoch, stale, train_seconds = -1.0, 0, 1, 0, 0.0
    if resume_state is not None:
        model.load_state_dict(resume_state["model_state"])
        optimizer.load_state_dict(resume_state["optimizer"])
        if scheduler is not None and resume_state.get("scheduler"):
            scheduler.load_state_dict(resume_state["scheduler"])
        generator.set_state(resume_state["generator"])
        if ema_model is not None:
            ema_model.load_state_dict(resume_state["ema"])
        torch.set_rng_state(resume_state["torch_rng"])
        history = resume_state["history"]
        best_score, best_epoch = resume_state["best_score"], resume_state["best_epoch"]
        stale, train_seconds = resume_state["stale"], resume_state["train_seconds"]
        start_epoch = resume_state["epoch"] + 1
        if config.patience and stale >= config.patience:  # it had stopped early: only the final evaluation is left
            start_epoch = config.epochs + 1
            if dist.is_main():
                log(f"The run stopped early at epoch {resume_state['epoch']} (patience {config.patience}): nothing left to train")
        if unlabeled is not None and resume_state.get("pseudo") is not None:  # the pool as it was: no extra relabel
            pseudo_saved = resume_state["pseudo"]
            pseudo = (unlabeled[pseudo_saved[0].to(unlabeled.device)], pseudo_saved[1])

    if dist.is_main():
        if resume_state is None:
            _keep_previous_run(run_dir, log)
        run_dir.mkdir(parents=True, exist_ok=True)
        log(
            f"Training {config.model} ({n_params:,} parameters) on {len(train)} train / {len(val)} val images "
            f"from {data_dir}, preprocess={config.preprocess}, alphabet={data.alphabet.symbols!r} "
            f"({len(data.alphabet)} symbols), length={data.length or 'variable'}, device={device}"
        )
    board = TensorBoardLog(Path(config.tensorboard or run_dir / "tensorboard")) if config.tensorboard is not None and dist.is_main() else None
    timer_start = time.perf_counter() - train_seconds
    for epoch in range(start_epoch, config.epochs + 1):
        if unlabeled is not None and epoch >= pseudo_from and (pseudo is None or (epoch - pseudo_from) % pseudo_every == 0):
            pseudo_saved = pseudo_label_indices(eval_model, unlabeled, data.alphabet.symbols, config.head, tensors["train"][1].shape[1],
                                                config.pseudo_threshold, config.label_smoothing)
            pseudo = (unlabeled[pseudo_saved[0].to(unlabeled.device)], pseudo_saved[1])
            if dist.is_main():
                log(f"Pseudo-labels for epoch {epoch}: {len(pseudo[0])} of {len(unlabeled)} unlabeled images read with "
                    f"every character at {config.pseudo_threshold:.2f} or above")
        train_stats = train_one_epoch(ddp_model, *tensors["train"], train.labels, optimizer, scheduler, config, data.alphabet.symbols, generator, f"epoch {epoch}/{config.epochs}", ema_model, pseudo, teacher)
        val_stats = evaluate(eval_model, *tensors["val"], val.labels, data.alphabet.symbols, config.head, config.eval_batch_size)
        elapsed = time.perf_counter() - timer_start
        rows = [
            {"epoch": epoch, "phase": phase, **_stats_dict(s), "elapsed": round(elapsed, 3), "lr": optimizer.param_groups[0]["lr"]}
            for phase, s in (("train", train_stats), ("val", val_stats))
        ]
        history += rows
        if board is not None:
            board.epoch(rows)
        improved = val_stats.sequence > best_score
        if improved:
            best_score, best_epoch, stale = val_stats.sequence, epoch, 0
        else:
            stale += 1
        if dist.is_main():
            log(log_line(epoch, config.epochs, "train", train_stats, elapsed))
            log(log_line(epoch, config.epochs, "val", val_stats, elapsed))
            if improved:
                meta["metrics"] = {"best_epoch": epoch, "val": _stats_dict(val_stats)}
                ckpt.save_checkpoint(run_dir / ckpt.BEST, eval_model, meta)
            ckpt.save_checkpoint(
                last_path, model, meta, optimizer=optimizer.state_dict(),
                ema=ema_model.state_dict() if ema_model is not None else None,
                scheduler=scheduler.state_dict() if scheduler is not None else None,
                generator=generator.get_state(), torch_rng=torch.get_rng_state(), history=history,
                epoch=epoch, best_score=best_score, best_epoch=best_epoch, stale=stale,
                train_seconds=elapsed, config=_config_dict(config), pseudo=pseudo_saved,
            )
            _write_history(run_dir, history, width)
        if on_epoch_end is not None:
            on_epoch_end(epoch, rows[-1])
        if config.patience and stale >= config.patience:
            if dist.is_main():
                log(f"Stopping early: no better val whole-string accuracy for {config.patience} epochs")
            break
    train_seconds = time.perf_counter() - timer_start
    dist.barrier()

    best_model, best_meta = ckpt.load_model(run_dir / ckpt.BEST, device)
    val_best = evaluate(best_model, *tensors["val"], val.labels, data.alphabet.symbols, config.head, config.eval_batch_size)
    test_stats = None
    if test is not None and len(test):
        test_stats = evaluate(best_model, *tensors["test"], test.labels, data.alphabet.symbols, config.head, config.eval_batch_size)
    if dist.is_main():
        best_meta["metrics"] = {
            "best_epoch": best_epoch, "val": _stats_dict(val_best),
            "test": _stats_dict(test_stats) if test_stats else None, "train_seconds": round(train_seconds, 2),
        }
        ckpt.save_checkpoint(run_dir / ckpt.BEST, best_model, best_meta)
        (run_dir / "metrics.json").write_text(json.dumps(best_meta["metrics"], indent=2) + "\n")
        shown = ("test", test, tensors.get("test"), test_stats) if test_stats else ("val", val, tensors["val"], val_best)
        _write_pictures(run_dir, config, history, *shown, data.alphabet.symbols, board)
        if board is not None:
            board.finish(_config_dict(config), {f"{name}_whole_string_accuracy": s.sequence for name, s in (("val", val_best), ("test", test_stats)) if s})
        if test_stats:
            log(log_line(best_epoch, config.epochs, "test", test_stats, train_seconds).replace(f"Epoch [{best_epoch}/{config.epochs}]", f"Best epoch [{best_epoch}/{config.epochs}]"))
        views = f", {config.tta} views: {val_best.sequence * 100:.2f}%" if config.tta > 1 else ""
        log(f"Saved the best model (epoch {best_epoch}, val whole-string {best_score * 100:.2f}%{views}) to {run_dir / ckpt.BEST}")
    return RunResult(run_dir, best_epoch, _stats_dict(val_best), _stats_dict(test_stats) if test_stats else None, n_params, train_seconds)


def _write_pictures(run_dir: Path, config: TrainConfig, history: list[dict], split: str, ds: Dataset, tensors: tuple,
                    stats: EpochStats, alphabet: str, board: TensorBoardLog | None) -> None:
    """Learning curves and the symbol confusion matrix of `split` in the run folder; the misread
    images of `split` in TensorBoard."""
    from captcha.metrics import symbol_confusion
    from captcha.plots import confusion_matrix_image, learning_curves, misread_grid_image

    learning_curves(history, run_dir / f"learning_curves.{config.plot_format}")
    matrix = symbol_confusion(stats.texts, ds.labels, alphabet)
    confusion_matrix_image(matrix, list(alphabet), run_dir / f"confusion_matrix.{config.plot_format}",
                           title=f"{split} split, symbol by symbol: {int(matrix.sum())} characters of readings as long as their label")
    wrong = [i for i, (text, label) in enumerate(zip(stats.texts, ds.labels)) if text != label][:32]
    if board is not None and wrong:
        images = tensors[0][wrong].cpu().permute(0, 2, 3, 1).numpy()
        grid = misread_grid_image([(images[j], ds.labels[i], stats.texts[i]) for j, i in enumerate(wrong)])
        board.image(f"misread/{split}", grid, history[-1]["epoch"] if history else 0)


def _keep_previous_run(run_dir: Path, log: Callable[[str], None]) -> None:
    """A new run in a folder that holds one moves the old run to `<folder>.previous` (replacing an
    older one there), so that forgetting `--resume`, or training again, loses nothing at once."""
    if not ((run_dir / ckpt.LAST).exists() or (run_dir / ckpt.BEST).exists()):
        return
    here = Path.cwd().resolve()
    if run_dir.resolve() in (here, *here.parents):  # --out . : there is nowhere to move it
        log(f"{run_dir} holds a run; starting a new one over it (--resume continues the old one)")
        return
    previous = run_dir.with_name(run_dir.name + ".previous")
    if previous.is_dir():
        shutil.rmtree(previous)
    elif previous.exists():
        previous.unlink()
    run_dir.rename(previous)
    log(f"{run_dir} held a run: moved to {previous} (--resume continues a run instead of starting over)")


# Settings that name files or folders: saved as absolute paths, so that `--resume` works from
# any working directory.
_PATH_SETTINGS = ("data", "cache_dir", "init", "unlabeled", "teacher")


def _config_dict(config: TrainConfig) -> dict:
    d = asdict(config)
    d["input_size"] = list(config.input_size)
    for name in _PATH_SETTINGS:
        if _names_a_path(name, d[name]):
            d[name] = str(Path(d[name]).resolve())
    return d


def _names_a_path(name: str, value: Any) -> bool:
    """Whether a setting's value is a file or folder here (not `--init pretrained` / `none`)."""
    if not value or (name == "init" and value in (pretrained.PRETRAINED, pretrained.SCRATCH)):
        return False
    return Path(value).exists()


def _settings_resume_ignores(config: TrainConfig, saved: dict, given: set[str] | None = None) -> list[str]:
    """`name=value (the run's: value)` for each setting given (in `given`, or else away from its
    default) that differs from the one the resumed run was started with (`--resume` keeps the
    run's settings)."""
    defaults = _config_dict(TrainConfig())
    asked = _config_dict(config)
    ignored = []
    for name, value in asked.items():
        if name in ("device", "out", "resume") or name not in saved:
            continue
        if (name not in given) if given is not None else value == defaults[name]:
            continue
        before = saved[name]
        if name in _PATH_SETTINGS and _names_a_path(name, before):
            before = str(Path(before).resolve())  # runs saved before paths were stored absolute
        if value != before:
            ignored.append(f"{name}={value!r} (the run's: {saved[name]!r})")
    return ignored


def _write_history(run_dir: Path, history: list[dict], width: int) -> None:
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "phase", "samples", "loss", "sequence_accuracy"] + [f"char{i + 1}_accuracy" for i in range(width)] + ["elapsed_s", "lr"])
        for r in history:
            accs = list(r["per_char_accuracy"]) + [""] * (width - len(r["per_char_accuracy"]))
            writer.writerow([r["epoch"], r["phase"], r["samples"], f"{r['loss']:.6f}", f"{r['sequence_accuracy']:.6f}"] + [f"{a:.6f}" if a != "" else "" for a in accs] + [r["elapsed"], f"{r['lr']:.6g}"])
