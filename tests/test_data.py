import errno
import os
import shutil

import cv2
import numpy as np
import pytest

import captcha.data
from captcha.alphabet import Alphabet, LabelError
from captcha.data import DataError, load_images, load_splits, scan_folder
from captcha.recognition_data import prepare_data
from captcha.train import TrainConfig


def _write(path, seed=0):
    img = np.random.default_rng(seed).integers(0, 255, (50, 130, 3), dtype=np.uint8)
    cv2.imwrite(str(path), img)


def test_labels_from_file_names(tmp_path):
    _write(tmp_path / "ab12_0001.png")
    _write(tmp_path / "cd34.jpg")
    labels = sorted(s.label for s in scan_folder(tmp_path))
    assert labels == ["ab12", "cd34"]


def test_labels_csv_wins_over_file_names(tmp_path):
    _write(tmp_path / "img1.png")
    _write(tmp_path / "img2.png")
    (tmp_path / "labels.csv").write_text("filename,label\nimg1.png,AAAA\nimg2.png,BBBB\n")
    assert {s.label for s in scan_folder(tmp_path)} == {"AAAA", "BBBB"}


def test_labels_csv_naming_a_missing_file_is_reported(tmp_path):
    (tmp_path / "labels.csv").write_text("filename,label\nghost.png,AAAA\n")
    with pytest.raises(DataError, match="ghost.png"):
        scan_folder(tmp_path)


def test_flat_folder_gets_a_seeded_split(tmp_path):
    for i in range(50):
        _write(tmp_path / f"ab{i % 10}x_{i}.png", i)
    a, b = load_splits(tmp_path, seed=1), load_splits(tmp_path, seed=1)
    assert [s.path for s in a["train"]] == [s.path for s in b["train"]]
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (40, 5, 5)


def test_alphabet_encodes_and_names_unknown_symbols():
    alphabet = Alphabet.from_labels(["ba", "ca"])
    assert alphabet.symbols == "abc" and alphabet.encode("cab") == [2, 0, 1]
    with pytest.raises(LabelError, match="'z'"):
        alphabet.encode("az")


def test_every_bad_file_is_listed_before_training(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / "train" / "labels.csv").unlink()
    (data / "train" / "corrupt_0001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    _write(data / "train" / "abc_0002.png")  # wrong length
    _write(data / "train" / "2Z45_0003.png")  # Z outside the given alphabet
    (data / "val" / "labels.csv").unlink()
    (data / "val" / "5555_truncated.png").write_bytes(cv2.imencode(".png", np.zeros((50, 130, 3), np.uint8))[1].tobytes()[:40])
    config = TrainConfig(data=str(data), alphabet="2345678bcdefgmnpwxy", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError) as info:
        prepare_data(config, data)
    message = str(info.value)
    for name in ("abc_0002.png", "2Z45_0003.png", "5555_truncated.png"):
        assert name in message
    assert "expected 4" in message and "outside the alphabet" in message and "not a readable image" in message
    assert "corrupt_0001.png" in message  # 'corrupt' has 7 characters: a length problem
    assert "--skip-bad" in message

    config.skip_bad = True
    prepared = prepare_data(config, data)
    assert len(prepared.splits["train"]) == 120 and len(prepared.splits["val"]) == 40


def test_cache_is_reused_and_rebuilt_when_a_file_changes(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data / "val", data)
    samples = scan_folder(data)
    cache = tmp_path / "cache"
    first = load_images(samples, "denoise", (50, 130), cache)
    assert len(list(cache.glob("*.npz"))) == 1
    again = load_images(samples, "denoise", (50, 130), cache)
    assert np.array_equal(first.images, again.images)
    _write(samples[0].path, seed=99)
    changed = load_images(samples, "denoise", (50, 130), cache)
    assert len(list(cache.glob("*.npz"))) == 2
    assert not np.array_equal(first.images[0], changed.images[0])
    assert np.array_equal(first.images[1:], changed.images[1:])


def test_a_set_with_undecodable_files_is_cached_with_its_problems(tiny_data, tmp_path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(tiny_data / "val", data)
    (data / "2345_bad.png").write_bytes(b"not an image")
    with open(data / "labels.csv", "a") as f:
        f.write("2345_bad.png,2345\n")
    samples = scan_folder(data)
    cache = tmp_path / "cache"
    first = load_images(samples, "denoise", (50, 130), cache)
    assert [p for p, _ in first.problems] == [str(data / "2345_bad.png")] and len(first.samples) == len(samples) - 1
    assert len(list(cache.glob("*.npz"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the set is cached")

    monkeypatch.setattr(captcha.data, "decode_image", no_decoding)
    again = load_images(samples, "denoise", (50, 130), cache)  # --skip-bad reruns: no decoding, same report
    assert again.problems == first.problems
    assert [s.path for s in again.samples] == [s.path for s in first.samples]
    assert np.array_equal(first.images, again.images)


def test_a_variable_length_set_points_to_the_ctc_head(tmp_path, capsys):
    data = tmp_path / "varlen"
    for split, count in (("train", 40), ("val", 10)):
        (data / split).mkdir(parents=True)
        for i in range(count):
            _write(data / split / f"{'ab12c'[: 3 + i % 3]}_{i}.png", i)  # lengths 3, 4, 5 in turn
    config = TrainConfig(data=str(data), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError) as info:
        prepare_data(config, data)
    message = str(info.value)
    assert "vary in length (14 with 3, 13 with 4, 13 with 5 characters)" in message
    assert "--head ctc" in message and "reads 3 characters" in message

    config.skip_bad = True  # keeps only the most common length, and says what that costs
    prepared = prepare_data(config, data)
    assert prepared.length == 3 and len(prepared.splits["train"]) == 14
    assert "--head ctc reads them all" in capsys.readouterr().out

    config.skip_bad, config.head = False, "ctc"  # the CTC head takes them all
    prepared = prepare_data(config, data)
    assert prepared.length is None and len(prepared.splits["train"]) == 40


def test_a_cache_that_cannot_be_written_is_a_note_and_leaves_no_partial_file(tiny_data, tmp_path, monkeypatch, capsys):
    samples = scan_folder(tiny_data / "val")[:5]
    (tmp_path / "not_a_folder").write_text("x")
    encoded = load_images(samples, "denoise", (50, 130), tmp_path / "not_a_folder" / "cache")  # the folder cannot be made
    assert len(encoded.samples) == 5 and "could not write the decoded-image cache" in capsys.readouterr().err
    cache = tmp_path / "cache"

    def disk_full(file, **arrays):
        with open(file, "wb") as f:
            f.write(b"PK\x03\x04 half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", disk_full)
    encoded = load_images(samples, "denoise", (50, 130), cache)
    assert len(encoded.samples) == 5 and "No space left on device" in capsys.readouterr().err
    assert not list(cache.iterdir())  # the partial file is removed
