"""Distillation (`--teacher RUN`): the student learns from a trained run's per-character distributions."""

from __future__ import annotations

import json

import pytest
import torch

from captcha.cli import build_parser
from captcha.distill import TeacherMismatchError, distillation_loss, load_teacher
from captcha.train import TrainConfig, fit

QUIET = {"log": lambda s: None}


def test_distillation_loss_is_zero_only_when_the_student_matches_the_teacher():
    teacher = torch.randn(8, 4, 10)
    assert distillation_loss(teacher.clone(), teacher, temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.zeros(8, 4, 10, requires_grad=True)
    loss = distillation_loss(student, teacher, temperature=2.0)
    assert loss.item() > 0.01
    loss.backward()
    # One gradient step moves the student's distributions towards the teacher's.
    with torch.no_grad():
        assert distillation_loss(student - 1.0 * student.grad, teacher, 2.0) < loss


def test_teacher_must_read_the_same_task(trained_run):
    from captcha.checkpoint import load_checkpoint

    size = tuple(load_checkpoint(trained_run / "best.pt")["meta"]["input_size"])  # the default model's reading size
    ok = dict(alphabet="27bx", length=2, head="attention", preprocess="gray", input_size=size)
    teacher = load_teacher(trained_run, torch.device("cpu"), **ok)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    for field, value in (("alphabet", "27bxy"), ("length", 3), ("preprocess", "denoise"), ("input_size", (60, 160))):
        with pytest.raises(TeacherMismatchError, match=field):
            load_teacher(trained_run, torch.device("cpu"), **{**ok, field: value})
    with pytest.raises(TeacherMismatchError, match=f"train the student with --input-size {size[0]} {size[1]}"):
        load_teacher(trained_run, torch.device("cpu"), **{**ok, "input_size": (60, 160)})  # the error says how to match
    with pytest.raises(TeacherMismatchError, match="ctc"):
        load_teacher(trained_run, torch.device("cpu"), **{**ok, "head": "ctc"})


def test_a_student_learns_from_the_teacher_alone(trained_run, easy_data, tmp_path):
    """With --distill-weight 1 the labels play no part in the loss: all the student knows comes
    from the teacher, yet it reads the test images far above chance (6.25% whole-string)."""
    out = tmp_path / "student"
    config = TrainConfig(data=str(easy_data), out=str(out), epochs=8, lr=5e-3, init="none", cache_dir=str(tmp_path / "c"),
                         teacher=str(trained_run), distill_weight=1.0)
    lines: list[str] = []
    result = fit(config, log=lines.append)
    assert any(line.startswith(f"Distilling from {trained_run}") and "val whole-string" in line for line in lines)
    assert result.test["sequence_accuracy"] > 0.3
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test"]["sequence_accuracy"] == result.test["sequence_accuracy"]


def test_cli_flags_reach_the_config():
    from captcha.cli import _train_config

    args = build_parser().parse_args(["train", "--teacher", "runs/big", "--distill-weight", "0.7", "--distill-temperature", "3"])
    config = _train_config(args)
    assert (config.teacher, config.distill_weight, config.distill_temperature) == ("runs/big", 0.7, 3.0)
    with pytest.raises(ValueError, match="distill-weight"):
        TrainConfig(teacher="x", distill_weight=0.0)
