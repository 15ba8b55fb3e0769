"""A recognition run's data, ready to train on: every split found, checked and decoded, the label
length and alphabet inferred; the built-in generated set; pools of unlabeled images.

`prepare_data` reads its settings from any object with the attributes of `DataSettings`
(`captcha.train_config.TrainConfig` has them), so the data layer needs nothing from training.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from captcha import distributed as dist
from captcha.alphabet import Alphabet
from captcha.constants import DEFAULT_DATA_DIRNAME
from captcha.data import (LAYOUT_HINT, SKIP_BAD_HINT, DataError, Dataset, EncodedImages, Sample, check_labels, default_cache_dir,
                          length_spread, load_images, load_splits, split_samples)
from captcha.imageio import list_images


class DataSettings(Protocol):
    """The settings that decide how a labeled folder is read for training."""

    seed: int
    preprocess: str
    read_size: tuple[int, int]  # (height, width) every image is resized to
    cache_dir: str | None
    head: str
    length: int | None
    alphabet: str | None
    skip_bad: bool


class UnlabeledSettings(Protocol):
    unlabeled: str | None
    preprocess: str
    read_size: tuple[int, int]  # (height, width) every image is resized to
    cache_dir: str | None
    skip_bad: bool


@dataclass
class PreparedData:
    alphabet: Alphabet
    length: int | None
    splits: dict[str, Dataset]


def default_data_dir(cache_dir: str | None = None) -> Path:
    """The built-in generated set: created once (4000/1000/3000, course style) and reused."""
    from captcha.generate import GeneratorConfig, generate_dataset

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    folder = root / DEFAULT_DATA_DIRNAME
    marker = folder / ".complete"
    if not marker.exists():
        if dist.is_main():
            print(f"Generating the built-in CAPTCHA set once in {folder} ...", flush=True)
            generate_dataset(folder, GeneratorConfig())
            marker.write_text("ok\n")
        dist.barrier()
    return folder


def infer_length(labels: list[str]) -> int:
    """The most common label length; labels of other lengths are then reported as bad data."""
    if not labels:
        raise DataError([("<train split>", "no training images found")], "no data")
    return Counter(len(t) for t in labels).most_common(1)[0][0]


def prepare_data(settings: DataSettings, data_dir: Path) -> PreparedData:
    """Find, check and decode every split; one DataError lists every bad file of every split.

    The label length and alphabet are inferred from the training images that decode (unless
    given), so a file left out by `--skip-bad` adds no symbol; a split left empty by it is refused."""
    problems: list[tuple[str, str]] = []
    encoded = _decode_splits(settings, data_dir, problems)
    train_labels = [s.label for s in encoded["train"].samples]
    if not train_labels:
        raise DataError(sorted(problems), f"no readable training images in {data_dir}", hint=None)
    length = None if settings.head == "ctc" else (settings.length or infer_length(train_labels))
    alphabet = Alphabet(settings.alphabet) if settings.alphabet else Alphabet.from_labels(t for t in train_labels if length is None or len(t) == length)
    splits = {split: _checked_split(enc, alphabet, length, problems) for split, enc in encoded.items()}
    if problems:
        _report_problems(settings, data_dir, problems, train_labels, length)
    for split in ("train", "val"):
        if not len(splits[split]):
            raise DataError(sorted(problems), f"no usable {split} images left in {data_dir} after leaving out the bad files (--skip-bad)", hint=None)
    return PreparedData(alphabet, length, splits)


def _decode_splits(settings: DataSettings, data_dir: Path, problems: list[tuple[str, str]]) -> dict[str, EncodedImages]:
    """Every split's images decoded; a folder without val/ gives a seeded tenth of train to it."""
    samples = load_splits(data_dir, seed=settings.seed, problems=problems)
    if not samples["train"]:
        raise DataError(problems or [(str(data_dir), "no labeled images found")], f"no training data in {data_dir}", hint=LAYOUT_HINT)
    if not samples["val"]:
        parts = split_samples(samples["train"], settings.seed, val_fraction=0.1, test_fraction=0.0)
        samples["train"], samples["val"] = parts["train"], parts["val"]
    encoded = {split: load_images(items, settings.preprocess, settings.read_size, settings.cache_dir) for split, items in samples.items()}
    for enc in encoded.values():
        problems += enc.problems
    return encoded


def _checked_split(enc: EncodedImages, alphabet: Alphabet, length: int | None, problems: list[tuple[str, str]]) -> Dataset:
    """The images whose labels fit the alphabet and length; the others are added to `problems`."""
    bad = check_labels(enc.samples, alphabet, length)
    problems += bad
    bad_paths = {p for p, _ in bad}
    keep = [i for i, s in enumerate(enc.samples) if str(s.path) not in bad_paths]
    images = enc.images if len(keep) == len(enc.samples) else enc.images[keep]
    return Dataset(images, [enc.samples[i].label for i in keep], [enc.samples[i].path for i in keep])


def _report_problems(settings: DataSettings, data_dir: Path, problems: list[tuple[str, str]], train_labels: list[str],
                     length: int | None) -> None:
    """Raise one DataError naming every bad file, or with `skip_bad` print it as a warning; a set
    whose labels vary in length is pointed to `--head ctc`."""
    spread = length_spread(train_labels, length) if length is not None and not settings.length else None
    varying = f"The training labels vary in length ({spread} characters), but the {settings.head} head reads {length} characters"
    header = f"bad data in {data_dir}" + (" (labels of several lengths: see the last line)" if spread else "")
    hint = (f"{varying}. For variable-length CAPTCHAs train with --head ctc; to keep only the {length}-character labels, "
            f"pass --skip-bad (or --length N for another length).") if spread else SKIP_BAD_HINT
    error = DataError(sorted(problems), header, hint=hint)
    if not settings.skip_bad:
        raise error
    if dist.is_main():
        print("WARNING: " + str(error).splitlines()[0] + " (left out, --skip-bad):")
        for path, reason in sorted(problems)[:50]:
            print(f"  {path}: {reason}")
        if spread:
            print(f"WARNING: {varying}: every label of another length is left out; --head ctc reads them all.")


def load_unlabeled(settings: UnlabeledSettings) -> torch.Tensor:
    """Every image under `settings.unlabeled` (any depth; names and labels.csv are ignored),
    decoded and preprocessed like the labeled ones: uint8 N x K x H x W."""
    folder = Path(settings.unlabeled)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (--unlabeled)")
    samples = [Sample(p, "") for p in list_images(folder, recursive=True)]
    if not samples:
        raise DataError([(str(folder), "no images found")], "no unlabeled images (--unlabeled)")
    encoded = load_images(samples, settings.preprocess, settings.read_size, settings.cache_dir)
    if encoded.problems:
        error = DataError(sorted(encoded.problems), f"bad images in {folder}")
        if not settings.skip_bad:
            raise error
        if dist.is_main():
            print("WARNING: " + str(error).splitlines()[0] + " (left out, --skip-bad)")
    return torch.from_numpy(encoded.images)
