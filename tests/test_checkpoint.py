"""Saving checkpoints: atomic, and a full disk is said in words, naming the file, losing nothing."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from captcha.checkpoint import load_checkpoint, save_checkpoint
from captcha.cli import main
from captcha.models import create_model
from captcha.train import TrainConfig, fit


def fill_the_disk_after(monkeypatch, free_bytes: int) -> None:
    """Writes to `*.tmp` files see a disk with `free_bytes` left: what fits is written, then the
    write fails with ENOSPC, as the kernel fails it on a full disk."""
    real_write, left = os.write, [free_bytes]

    def write(fd, data):
        if not os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            return real_write(fd, data)
        if left[0] == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = real_write(fd, bytes(memoryview(data)[: left[0]]))
        left[0] -= written
        return written

    monkeypatch.setattr(os, "write", write)


def _model(seed: int):
    torch.manual_seed(seed)
    return create_model("sepnet", num_classes=4, length=2, in_channels=1)


def test_a_full_disk_is_named_removes_the_partial_file_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    first = _model(0)
    save_checkpoint(path, first, {"note": "first"}, epoch=1)
    fill_the_disk_after(monkeypatch, 10_000)  # part of the checkpoint fits
    with pytest.raises(RuntimeError) as info:  # CheckpointSaveError: the CLI prints it as one line
        save_checkpoint(path, _model(1), {"note": "second"}, epoch=2)
    message = str(info.value)
    assert "the disk is full (No space left on device)" in message and str(path) in message and str(tmp_path / "last.tmp") in message
    assert f"the previous {path} is kept" in message
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no last.tmp left behind
    kept = load_checkpoint(path)
    assert kept["epoch"] == 1 and all(torch.equal(v, kept["model_state"][k]) for k, v in first.state_dict().items())
    monkeypatch.undo()
    save_checkpoint(path, _model(1), {"note": "second"}, epoch=2)  # space again: saved as usual
    assert load_checkpoint(path)["epoch"] == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_training_on_a_full_disk_stops_with_the_reason_and_resumes_afterwards(tiny_data, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    config = TrainConfig(data=str(tiny_data), out=str(run), epochs=2, cache_dir=str(tmp_path / "cache"), batch_size=128, init="none", tta=1)

    def interrupt(epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(config, on_epoch_end=interrupt, log=lambda s: None)
    before = {name: (run / name).read_bytes() for name in ("best.pt", "last.pt")}
    fill_the_disk_after(monkeypatch, 0)
    assert main(["train", "--resume", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "the disk is full" in err and ("best.pt: not saved" in err or "last.pt: not saved" in err)
    assert not list(run.glob("*.tmp"))
    assert {name: (run / name).read_bytes() for name in before} == before  # the epoch-1 checkpoints, byte for byte
    monkeypatch.undo()
    assert main(["train", "--resume", "--out", str(run)]) == 0  # space freed: the run goes on from epoch 1
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
