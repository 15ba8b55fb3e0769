"""Pseudo-labeling (`--unlabeled DIR`): confident readings of unlabeled images join training."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn as nn

from captcha import pseudo_labels
from captcha.checkpoint import load_checkpoint
from captcha.data import DataError
from captcha.recognition_data import load_unlabeled
from captcha.pseudo_labels import pseudo_label
from captcha.train import TrainConfig, fit


class _FixedLogits(nn.Module):
    """Returns preset logits, one row per input image, whatever the image."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: x.shape[0]]


def test_only_readings_confident_in_every_character_are_kept():
    sure, unsure = 10.0, 0.5
    logits = torch.zeros(3, 2, 3)  # 3 images, 2 characters, alphabet "abc"
    logits[0, 0, 1] = logits[0, 1, 2] = sure  # "bc", both characters sure
    logits[1, 0, 0] = sure  # "a?", second character a near tie
    logits[1, 1, 2] = unsure
    logits[2, 0, 2] = logits[2, 1, 0] = sure  # "ca"
    images = torch.arange(3, dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 1, 4, 4).clone()
    kept, targets = pseudo_label(_FixedLogits(logits), images, "abc", "attention", width=2, threshold=0.9)
    assert kept[:, 0, 0, 0].tolist() == [0, 2]  # the right images, in order
    assert targets.tolist() == [[1, 2], [2, 0]]


def test_the_threshold_follows_label_smoothing():
    # A head trained with smoothing 0.2 over "abc" is at its surest at 0.8 + 0.2/3 = 0.867, not 1:
    # logits at that optimum must pass the default 0.95, which no raw probability here reaches.
    surest = 0.8 + 0.2 / 3
    logits = torch.full((2, 2, 3), ((1 - surest) / 2)).log()
    logits[0, 0, 1] = logits[0, 1, 2] = logits[1, 0, 0] = torch.tensor(surest).log()  # "bc" sure; "a?" a tie
    logits[1, 1, :] = torch.tensor(1 / 3).log()
    images = torch.arange(2, dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 1, 4, 4).clone()
    model = _FixedLogits(logits)
    assert len(pseudo_label(model, images, "abc", "attention", width=2, threshold=0.95)[0]) == 0
    kept, targets = pseudo_label(model, images, "abc", "attention", width=2, threshold=0.95, label_smoothing=0.2)
    assert kept[:, 0, 0, 0].tolist() == [0] and targets.tolist() == [[1, 2]]


def test_unlabeled_folder_errors_name_the_folder_and_the_bad_file(tmp_path, easy_data):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_unlabeled(TrainConfig(unlabeled=str(tmp_path / "nope")))
    folder = tmp_path / "unlabeled" / "deeper"
    folder.mkdir(parents=True)
    for p in sorted((easy_data / "test").glob("*.png"))[:3]:
        shutil.copy(p, folder / f"img{p.stem[-3:]}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png"):
        load_unlabeled(TrainConfig(unlabeled=str(tmp_path / "unlabeled"), cache_dir=str(tmp_path / "c")))
    images = load_unlabeled(TrainConfig(unlabeled=str(tmp_path / "unlabeled"), cache_dir=str(tmp_path / "c"), skip_bad=True))
    assert images.shape == (3, 1, *TrainConfig().read_size) and images.dtype == torch.uint8  # the default model's reading size


def test_training_with_unlabeled_images_adds_pseudo_labels(trained_run, easy_data, tmp_path):
    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    for i, p in enumerate(sorted((easy_data / "test").glob("*.png"))):
        shutil.copy(p, unlabeled / f"{i}.png")  # no label in the name
    messages: list[str] = []
    result = fit(TrainConfig(data=str(easy_data), out=str(tmp_path / "run"), epochs=3, init=str(trained_run),
                             unlabeled=str(unlabeled), cache_dir=str(tmp_path / "c")), log=messages.append)
    counts = [int(m.split(": ")[1].split(" of ")[0]) for m in messages if m.startswith("Pseudo-labels for epoch")]
    # the default threshold (0.95) under the default label smoothing (0.2): a raw 0.95 lies above the
    # 0.8 + 0.2 / K that a smoothed head is trained towards, so without the rescaling none would pass;
    # with it the fine-tuned start reads some of the 100 images confidently, and more at the next refresh
    assert counts and counts[0] > 0 and max(counts) >= 10, messages
    assert result.test["sequence_accuracy"] > 0.4


def test_an_interrupted_run_with_pseudo_labels_resumes_to_the_same_result(trained_run, easy_data, tmp_path, monkeypatch):
    monkeypatch.setattr(pseudo_labels, "PSEUDO_REFRESHES", 2)  # 6 epochs: the pool is labeled at epochs 3 and 5
    from captcha.generate import GeneratorConfig, generate_dataset

    data = tmp_path / "data"  # a quarter of easy_data's size, the same kind of CAPTCHA: three short runs
    generate_dataset(data, GeneratorConfig(alphabet="27bx", length=2, splits={"train": 128, "val": 32, "test": 32}, seed=9))
    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    for i, p in enumerate(sorted((easy_data / "test").glob("*.png"))[:40]):
        shutil.copy(p, unlabeled / f"{i}.png")
    base = dict(data=str(data), epochs=6, init=str(trained_run), unlabeled=str(unlabeled), cache_dir=str(tmp_path / "c"),
                batch_size=32, tta=1, pseudo_threshold=0.5)
    whole: list[str] = []
    fit(TrainConfig(out=str(tmp_path / "whole"), **base), log=whole.append)

    def interrupt(epoch, row):
        if epoch == 3:  # resumed at 4, where the pool must be the one of epoch 3, not a new one
            raise KeyboardInterrupt

    cut: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        fit(TrainConfig(out=str(tmp_path / "cut"), **base), on_epoch_end=interrupt, log=cut.append)
    fit(TrainConfig(out=str(tmp_path / "cut"), resume=True, **base), log=cut.append)
    pools = lambda log: [m.split(" read with")[0] for m in log if m.startswith("Pseudo-labels")]  # noqa: E731
    assert pools(cut) == pools(whole) and [m.split(":")[0] for m in pools(whole)] == ["Pseudo-labels for epoch 3", "Pseudo-labels for epoch 5"]
    a, b = load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    assert [(r["epoch"], r["phase"]) for r in a["history"]] == [(r["epoch"], r["phase"]) for r in b["history"]]
    assert [r["loss"] for r in a["history"]] == pytest.approx([r["loss"] for r in b["history"]], abs=1e-5)
    for key, value in a["model_state"].items():
        assert torch.allclose(value.float(), b["model_state"][key].float(), atol=1e-5), key
