"""CAPTCHA recognition as a training task: labels are strings of symbols, one head per character
(or a CTC head for any length), scored per character and per whole string.

`RecognitionTask(config)` is what `captcha.train.fit(config)` runs for a `TrainConfig`.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from captcha import checkpoint as ckpt
from captcha import distributed as dist
from captcha import pretrained
from captcha.alphabet import Alphabet
from captcha.augment import augment_batch
from captcha.constants import NORM_MEAN, NORM_STD
from captcha.data import Dataset
from captcha.decoding import decode
from captcha.distill import load_teacher
from captcha.metrics import format_accuracies, per_char_accuracy, per_char_counts, sequence_accuracy
from captcha.models import AttentionHeads, CTCHead, count_parameters, create_model
from captcha.preprocess import get_preprocessor
from captcha.pseudo_labels import PseudoLabelPool
from captcha.recognition_data import PreparedData, default_data_dir, load_unlabeled, prepare_data
from captcha.runtime import encode_labels, fast_optimizer, normalize_batch
from captcha.tasks import LabeledImages, PreparedRun, RunOptions, Stage, score_split
from captcha.train_config import TrainConfig


class ParameterBudgetError(ValueError):
    """The chosen model has more parameters than `--max-params` allows."""


@dataclass
class EpochStats:
    loss: float
    per_char: list[float]
    sequence: float
    samples: int
    texts: list[str] = field(default_factory=list, repr=False)

    @property
    def score(self) -> float:
        return self.sequence

    def as_dict(self) -> dict:
        return {"samples": self.samples, "loss": self.loss, "per_char_accuracy": self.per_char, "sequence_accuracy": self.sequence}


def log_line(epoch: int, epochs: int, phase: str, stats: EpochStats, elapsed: float) -> str:
    """The course report's epoch line, plus whole-string accuracy and elapsed time."""
    return (
        f"Epoch [{epoch}/{epochs}], phase: {phase}, samples: {stats.samples}, Loss: {stats.loss:.4f}, "
        f"Top-1 Accuracies: {format_accuracies(stats.per_char)}, Sequence: {stats.sequence * 100:.2f}%, "
        f"Elapsed: {elapsed:.1f}s"
    )


def make_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return fast_optimizer(torch.optim.SGD, params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay, nesterov=True)
    if config.optimizer == "adam":
        return fast_optimizer(torch.optim.Adam, params, lr=config.lr, weight_decay=config.weight_decay)
    return fast_optimizer(torch.optim.AdamW, params, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    total = config.epochs * steps_per_epoch
    if config.schedule == "onecycle":
        total = max(total, 4)  # each of the two phases needs at least two steps (tiny runs)
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total, pct_start=max(0.25, 2 / total))
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return None


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


def check_input_width(model: nn.Module, config: TrainConfig, channels: int, labels: list[str], log: Callable[[str], None]) -> None:
    """Refuse an input too wide for the attention head's positions; warn about labels a CTC head
    has too few columns to spell (their loss is zero, so they are never learned)."""
    if not isinstance(getattr(model, "head", None), (AttentionHeads, CTCHead)):
        return
    height, width = config.read_size
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


def init_weights(model: nn.Module, config: TrainConfig, alphabet: str) -> str:
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


# Settings that name files or folders: saved as absolute paths, so that `--resume` works from
# any working directory.
PATH_SETTINGS = ("data", "cache_dir", "init", "unlabeled", "teacher")


def config_dict(config: TrainConfig) -> dict:
    """The settings as checkpoints store them: paths made absolute, the input size a list."""
    d = asdict(config)
    d["input_size"] = list(config.read_size)
    for name in PATH_SETTINGS:
        if _names_a_path(name, d[name]):
            d[name] = str(Path(d[name]).resolve())
    return d


def _names_a_path(name: str, value: Any) -> bool:
    """Whether a setting's value is a file or folder here (not `--init pretrained` / `none`)."""
    if not value or (name == "init" and value in (pretrained.PRETRAINED, pretrained.SCRATCH)):
        return False
    return Path(value).exists()


def settings_resume_ignores(config: TrainConfig, saved: dict, given: set[str] | None = None) -> list[str]:
    """`name=value (the run's: value)` for each setting given (in `given`, or else away from its
    default) that differs from the one the resumed run was started with (`--resume` keeps the
    run's settings)."""
    defaults = config_dict(TrainConfig())
    asked = config_dict(config)
    ignored = []
    for name, value in asked.items():
        if name in ("device", "out", "resume") or name not in saved:
            continue
        if (name not in given) if given is not None else value == defaults[name]:
            continue
        before = saved[name]
        if name in PATH_SETTINGS and _names_a_path(name, before):
            before = str(Path(before).resolve())  # runs saved before paths were stored absolute
        if value != before:
            ignored.append(f"{name}={value!r} (the run's: {saved[name]!r})")
    return ignored


class RecognitionTask:
    """The trainer's questions answered for CAPTCHA recognition (see `captcha.tasks.Task`)."""

    name = "recognition"
    mean, std = NORM_MEAN, NORM_STD
    report_splits = ("val", "test")
    headline = "whole_string_accuracy"
    score_name = "whole-string accuracy"

    def __init__(self, config: TrainConfig, given: set[str] | None = None):
        self.config = config
        self.given = given
        self.options = RunOptions.of(config)
        self.head = config.head
        self.label_smoothing = config.label_smoothing
        self.alphabet = ""  # known once the data is read (`prepare`)

    def settings(self) -> dict:
        return config_dict(self.config)

    def resumed(self, saved: dict) -> tuple[RecognitionTask, list[str]]:
        known = {f.name for f in fields(TrainConfig)}
        settings = {k: v for k, v in saved.items() if k in known}
        settings.setdefault("ink_curves", 0.0)  # runs saved before the option existed trained without ink curves
        settings.update(device=self.config.device, out=self.config.out)
        ignored = settings_resume_ignores(self.config, settings, self.given)
        return RecognitionTask(TrainConfig(**settings), self.given), ignored

    def read_data(self) -> tuple[PreparedData, str]:
        """Every split, checked and decoded, and where they came from (for the start line)."""
        data_dir = Path(self.config.data) if self.config.data else default_data_dir(self.config.cache_dir)
        return prepare_data(self.config, data_dir), str(data_dir)

    def labeled(self, ds: Dataset, alphabet: Alphabet, width: int, device: torch.device) -> LabeledImages:
        """One split's images on the device, its labels encoded `width` wide (or as wide as its longest)."""
        padded = max(width, max((len(t) for t in ds.labels), default=1))
        return LabeledImages(torch.from_numpy(ds.images).to(device), encode_labels(ds.labels, alphabet, padded), ds.labels)

    def prepare(self, device: torch.device, fresh: bool, log: Callable[[str], None]) -> PreparedRun:
        config = self.config
        data, data_dir = self.read_data()
        self.alphabet = data.alphabet.symbols
        model, model_args = self._model(data, fresh, log)
        model.to(device)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        splits = self._tensors(data, device)
        meta = ckpt.make_meta(
            task="recognition", model_name=config.model, model_args=model_args, input_size=config.read_size,
            channels=model_args["in_channels"], preprocess=config.preprocess, mean=NORM_MEAN, std=NORM_STD,
            alphabet=self.alphabet, length=data.length, config=config_dict(config),
        )
        meta["parameters"] = count_parameters(model)
        meta["tta"] = config.tta  # validated during training with one view, for speed; the final scores use them all
        scored = {name: splits[name] for name in ("val", "test") if name in splits}
        start = (f"Training {config.model} ({meta['parameters']:,} parameters) on {len(splits['train'])} train / {len(splits['val'])} val images "
                 f"from {data_dir}, read at {config.read_size[0]} x {config.read_size[1]}, preprocess={config.preprocess}, "
                 f"alphabet={self.alphabet!r} "
                 f"({len(data.alphabet)} symbols), length={data.length or 'variable'}, device={device}")
        teacher = self._teacher(data, scored["val"], device, log) if config.teacher else None
        return PreparedRun(model, meta, splits["train"], scored, "val", start, teacher, self._pool(splits, device),
                           self.epoch_images(data, device))

    def epoch_images(self, data: PreparedData, device: torch.device) -> Callable[[int], LabeledImages | None] | None:
        """What gives each epoch its own training images (None: every epoch reads the same)."""
        return None

    def _model(self, data: PreparedData, fresh: bool, log: Callable[[str], None]) -> tuple[nn.Module, dict]:
        """The model, within the parameter budget, initialised as `--init` says unless resuming."""
        config = self.config
        channels = get_preprocessor(config.preprocess).channels
        model_args = {"num_classes": len(data.alphabet), "length": data.length or 1, "in_channels": channels, "head": config.head}
        model = create_model(config.model, **model_args)
        n_params = count_parameters(model)
        if n_params > config.max_params:
            raise ParameterBudgetError(
                f"model {config.model} has {n_params:,} parameters, over the budget of {config.max_params:,} (--max-params)"
            )
        check_input_width(model, config, channels, data.splits["train"].labels, log if dist.is_main() else (lambda s: None))
        if fresh:
            message = init_weights(model, config, self.alphabet)
            if dist.is_main():
                log(message)
        return model, model_args

    def _tensors(self, data: PreparedData, device: torch.device) -> dict[str, LabeledImages]:
        """Every split's images on the device, its labels encoded as wide as its longest label."""
        width = data.length or max(len(t) for t in data.splits["train"].labels)
        return {name: self.labeled(ds, data.alphabet, width, device) for name, ds in data.splits.items()}

    def _teacher(self, data: PreparedData, val: LabeledImages, device: torch.device, log: Callable[[str], None]) -> nn.Module:
        config = self.config
        teacher = load_teacher(config.teacher, device, alphabet=self.alphabet, length=data.length, head=config.head,
                               preprocess=config.preprocess, input_size=config.read_size)
        if dist.is_main():
            t_val = score_split(self, teacher, val, config.eval_batch_size)
            log(f"Distilling from {config.teacher} ({count_parameters(teacher):,} parameters, val whole-string "
                f"{t_val.sequence * 100:.2f}%), weight {config.distill_weight}, temperature {config.distill_temperature}")
        return teacher

    def _pool(self, splits: dict[str, LabeledImages], device: torch.device) -> PseudoLabelPool | None:
        config = self.config
        if not config.unlabeled:
            return None
        return PseudoLabelPool(load_unlabeled(config).to(device), self.alphabet, config.head, splits["train"].targets.shape[1],
                               config.pseudo_threshold, config.label_smoothing, config.epochs)

    def stages(self) -> list[Stage]:
        config = self.config
        return [Stage("train", config.epochs, lambda params: make_optimizer(params, config),
                      lambda optimizer, steps: make_scheduler(optimizer, config, steps))]

    def inputs(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return augment_batch(normalize_batch(batch), self.config.augment, generator, self.config.ink_curves)

    def train_scores(self, loss_sum: float, logits: torch.Tensor, split: LabeledImages, index: torch.Tensor) -> EpochStats:
        """Epoch statistics, summed over every process when training is distributed."""
        texts = [p.text for p in decode(logits.numpy(), self.alphabet, self.head)]
        truth = [split.labels[i] for i in index.tolist()]
        width = split.targets.shape[1]
        hits, totals = per_char_counts(texts, truth, width)
        seen = len(truth)
        seq = sequence_accuracy(texts, truth)
        sums = dist.all_reduce_sum([loss_sum, float(seen), seq * seen] + [float(h) for h in hits] + [float(n) for n in totals])
        loss_sum, seen_f, seq_hits = sums[0], sums[1], sums[2]
        per_char = [h / n if n else 0.0 for h, n in zip(sums[3 : 3 + width], sums[3 + width :])]
        return EpochStats(loss_sum / max(seen_f, 1), per_char, seq_hits / max(seen_f, 1), int(seen_f), texts)

    def eval_scores(self, loss: float, logits: torch.Tensor, split: LabeledImages) -> EpochStats:
        """Loss, per-character and whole-string accuracy of one split's readings."""
        width = split.targets.shape[1]
        if logits.numel() == 0:
            return EpochStats(float("nan"), [0.0] * width, 0.0, 0, [])
        texts = [p.text for p in decode(logits.numpy(), self.alphabet, self.head)]
        return EpochStats(loss, per_char_accuracy(texts, split.labels, width), sequence_accuracy(texts, split.labels), len(split), texts)

    def epoch_lines(self, epoch: int, epochs: int, stage: Stage, train: EpochStats, val: EpochStats | None, elapsed: float,
                    seconds: float) -> list[str]:
        lines = [log_line(epoch, epochs, "train", train, elapsed)]
        return lines + [log_line(epoch, epochs, "val", val, elapsed)] if val is not None else lines

    def write_history(self, path: Path, history: list[dict]) -> None:
        """metrics.csv: one row per epoch and phase, a column per character."""
        width = max((len(r["per_char_accuracy"]) for r in history), default=0)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch", "phase", "samples", "loss", "sequence_accuracy"] + [f"char{i + 1}_accuracy" for i in range(width)]
                            + ["elapsed_s", "lr"])
            for r in history:
                accs = [f"{a:.6f}" for a in r["per_char_accuracy"]] + [""] * (width - len(r["per_char_accuracy"]))
                writer.writerow([r["epoch"], r["phase"], r["samples"], f"{r['loss']:.6f}", f"{r['sequence_accuracy']:.6f}"] + accs
                                + [r["elapsed"], f"{r['lr']:.6g}"])

    def pictures(self, run_dir: Path, history: list[dict], split: str, images: LabeledImages, scores: EpochStats, board) -> None:
        """Learning curves and the symbol confusion matrix of `split` in the run folder; the misread
        images of `split` in TensorBoard."""
        from captcha.metrics import symbol_confusion
        from captcha.plots import confusion_matrix_image, learning_curves, misread_grid_image

        fmt = self.config.plot_format
        learning_curves(history, run_dir / f"learning_curves.{fmt}")
        matrix = symbol_confusion(scores.texts, images.labels, self.alphabet)
        confusion_matrix_image(matrix, list(self.alphabet), run_dir / f"confusion_matrix.{fmt}",
                               title=f"{split} split, symbol by symbol: {int(matrix.sum())} characters of readings as long as their label")
        wrong = [i for i, (text, label) in enumerate(zip(scores.texts, images.labels)) if text != label][:32]
        if board is not None and wrong:
            shown = images.images[wrong].cpu().permute(0, 2, 3, 1).numpy()
            grid = misread_grid_image([(shown[j], images.labels[i], scores.texts[i]) for j, i in enumerate(wrong)])
            board.image(f"misread/{split}", grid, history[-1]["epoch"] if history else 0)

    def final_lines(self, best_epoch: int, best_score: float, scores: dict[str, EpochStats], seconds: float, run_dir: Path) -> list[str]:
        epochs = self.config.epochs
        lines = []
        if "test" in scores:
            line = log_line(best_epoch, epochs, "test", scores["test"], seconds)
            lines.append(line.replace(f"Epoch [{best_epoch}/{epochs}]", f"Best epoch [{best_epoch}/{epochs}]"))
        views = f", {self.config.tta} views: {scores['val'].sequence * 100:.2f}%" if self.config.tta > 1 else ""
        lines.append(f"Saved the best model (epoch {best_epoch}, val whole-string {best_score * 100:.2f}%{views}) to {run_dir / ckpt.BEST}")
        return lines

