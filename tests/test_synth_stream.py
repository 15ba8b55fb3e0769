"""The synthetic stream: batches drawn in worker processes, the same for any worker count, restartable."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from captcha.generate import GeneratorConfig, generate_dataset
from captcha.imageio import read_image
from captcha.parallel import ordered_map
from captcha.synth_stream import stream_batches

CONFIG = GeneratorConfig(alphabet="abc123XYZ", styles=("mix",), seed=4)


def _concat(batches):
    batches = list(batches)
    return np.concatenate([b.images for b in batches]), [t for b in batches for t in b.labels], [b.start for b in batches]


def test_batches_have_the_training_layout_and_are_the_same_for_one_or_two_workers():
    one = list(stream_batches(CONFIG, 4, preprocess="gray", input_size=(32, 96), stop=10))
    two = list(stream_batches(CONFIG, 4, preprocess="gray", input_size=(32, 96), stop=10, workers=2))
    assert [b.start for b in one] == [0, 4, 8] and [len(b.labels) for b in one] == [4, 4, 2]
    assert one[0].images.shape == (4, 1, 32, 96) and one[0].images.dtype == np.uint8 and one[0].images.flags.c_contiguous
    for a, b in zip(one, two, strict=True):
        assert a.start == b.start and a.labels == b.labels and np.array_equal(a.images, b.images)
    assert all(len(t) == 4 and set(t) <= set(CONFIG.alphabet) for b in one for t in b.labels)
    rgb = next(iter(stream_batches(CONFIG, 3, preprocess="original", stop=3)))
    assert rgb.images.shape == (3, 3, 50, 130)


def test_a_restarted_stream_continues_with_the_same_images_whatever_the_batch_size():
    images, labels, _ = _concat(stream_batches(CONFIG, 5, stop=12))
    later, later_labels, starts = _concat(stream_batches(CONFIG, 3, start=7, stop=12))
    assert starts == [7, 10] and later_labels == labels[7:]
    assert np.array_equal(later, images[7:])
    assert images.shape == (12, 50, 130, 3)  # raw: the drawn BGR pixels


def test_an_endless_stream_stops_when_closed():
    stream = stream_batches(CONFIG, 2, workers=2, ahead=2)
    first = list(itertools.islice(stream, 3))
    stream.close()  # cancels the batches in flight and stops the workers
    assert [b.start for b in first] == [0, 2, 4]


def test_the_stream_draws_the_files_captcha_generate_writes(tmp_path):
    generate_dataset(tmp_path, GeneratorConfig(alphabet=CONFIG.alphabet, styles=("mix",), seed=4, splits={"train": 0, "val": 5}))
    val = next(iter(stream_batches(CONFIG, 5, split=1, stop=5)))
    for i, (label, image) in enumerate(zip(val.labels, val.images)):
        assert np.array_equal(read_image(tmp_path / "val" / f"{label}_{i:05d}.png"), image)


def test_bad_settings_fail_before_anything_is_drawn():
    with pytest.raises(ValueError, match="batch_size"):
        stream_batches(CONFIG, 0)
    with pytest.raises(ValueError, match="start"):
        stream_batches(CONFIG, 4, start=5, stop=2)
    with pytest.raises(ValueError, match="unknown preprocessor"):
        stream_batches(CONFIG, 4, preprocess="nope")
    with pytest.raises(ValueError, match="unknown style"):
        stream_batches(GeneratorConfig(styles=("nope",)), 4)
    with pytest.raises(ValueError, match="workers"):
        ordered_map(divmod, [(1, 2)], workers=0)
    assert list(ordered_map(divmod, [(7, 2), (9, 4)], workers=2)) == [(3, 1), (2, 1)]
