"""Labeled synthetic CAPTCHAs drawn on the fly by worker processes and yielded in fixed-size
batches, so that a large pre-training run never needs its images on disk.

    config = GeneratorConfig(alphabet=PRETRAIN_ALPHABET, styles=("mix",), seed=0, fonts=fonts.files)
    for batch in stream_batches(config, 256, preprocess="gray", start=resume_at, workers=0):
        images = torch.from_numpy(batch.images)  # uint8 N x K x H x W, the training layout

Image i of the stream is `captcha.generate.draw_sample(config, split, i)`: drawn from its own
seed, so the stream is the same whatever the number of workers or the batch size, and a resumed
run continues it from any image index (`start`). For a set with `mix` these are the images that
`captcha generate` writes for the same seed and split.

Batches come preprocessed by a named preprocessor (`captcha.preprocess`) into the layout in which
`captcha.train` keeps every image: one uint8 array N x K x H x W. Preprocessing is per-image CPU
work like drawing, so the workers do both and the trainer only copies bytes; uint8 also moves a
quarter of float32's bytes through the pipes. `preprocess=None` yields the drawn BGR pixels,
N x H x W x 3, as `captcha generate` writes them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from captcha.generate import MIX, GeneratorConfig, draw_sample, get_style
from captcha.parallel import ordered_map, worker_count
from captcha.preprocess import get_preprocessor


@dataclass(frozen=True)
class SyntheticBatch:
    """Images `start` .. `start + len(labels) - 1` of a stream, with their labels."""

    start: int
    images: np.ndarray  # uint8: N x K x H x W preprocessed, or N x H x W x 3 BGR when drawn raw
    labels: list[str]


def draw_batch(config: GeneratorConfig, split: int, start: int, count: int,
               preprocess: str | None = None, input_size: tuple[int, int] | None = None) -> SyntheticBatch:
    """Images `start` .. `start + count - 1` of split `split`'s stream, drawn in this process and
    preprocessed with `preprocess` at `input_size` (default: the drawn size)."""
    prep = get_preprocessor(preprocess) if preprocess else None
    size = input_size or config.size
    labels, images = [], []
    for index in range(start, start + count):
        text, image = draw_sample(config, split, index)
        labels.append(text)
        images.append(prep(image, size).transpose(2, 0, 1) if prep else image)
    return SyntheticBatch(start, np.ascontiguousarray(np.stack(images)), labels)


def stream_batches(config: GeneratorConfig, batch_size: int, *, preprocess: str | None = None,
                   input_size: tuple[int, int] | None = None, split: int = 0, start: int = 0,
                   stop: int | None = None, workers: int = 1, ahead: int | None = None) -> Iterator[SyntheticBatch]:
    """Batches of `batch_size` images of split `split`'s stream, from image `start` on, until image
    `stop` (excluded; the last batch may be shorter) or without end. `workers` processes draw them
    (1: this process; 0: one per core), at most `ahead` batches ahead of the consumer (default: two per worker);
    the batches are the same whatever `workers`. Settings are checked before anything is drawn."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    if start < 0 or (stop is not None and stop < start):
        raise ValueError(f"the stream runs from image {start} to image {stop}: start must be 0 or more and stop not below it")
    if preprocess:
        get_preprocessor(preprocess)  # an unknown name fails here, not in a worker
    for name in config.styles:
        if name != MIX:
            get_style(name)
    starts = itertools.count(start, batch_size) if stop is None else range(start, stop, batch_size)
    tasks = ((config, split, s, batch_size if stop is None else min(batch_size, stop - s), preprocess, input_size) for s in starts)
    return ordered_map(draw_batch, tasks, worker_count(workers), ahead)
