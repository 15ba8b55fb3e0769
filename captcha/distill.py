"""Knowledge distillation: a large trained run (the teacher) guides the compact student.

The teacher sees the same normalised, augmented batch as the student (it runs in eval mode,
without gradients), and the student learns from a mix of the true labels and the teacher's
softened per-character distributions:

    loss = (1 - w) * cross-entropy(student, labels) + w * T^2 * KL(teacher_T || student_T)

(Hinton et al., 2015). The teacher is any checkpoint with per-character heads (`fixed` or
`attention`) trained on the same alphabet, length, preprocessor and input size; its size is not
limited by `--max-params`, since it is only used while training.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from captcha import checkpoint as ckpt
from captcha.tta import read_views


class TeacherMismatchError(ValueError):
    """The teacher checkpoint cannot guide this student; the message names the field."""


def load_teacher(
    path: str | Path, device: torch.device, *, alphabet: str, length: int | None, head: str,
    preprocess: str, input_size: tuple[int, int],
) -> nn.Module:
    """The teacher model (eval mode, frozen) after checking that it reads the same task as the student."""
    if head == "ctc":
        raise TeacherMismatchError("--teacher: distillation needs per-character heads; the student has --head ctc")
    model, meta = ckpt.load_model(path, device)
    where = ckpt.resolve_checkpoint(path)
    expected = {
        "head": ("fixed or attention", meta.get("head") in ("fixed", "attention")),
        "alphabet": (repr(alphabet), meta.get("alphabet") == alphabet),
        "length": (length, meta.get("length") == length),
        "preprocess": (preprocess, meta.get("preprocess") == preprocess),
        "input_size": (list(input_size), list(meta.get("input_size") or []) == list(input_size)),
    }
    for name, (want, ok) in expected.items():
        if not ok:
            got = repr(meta.get(name)) if name == "alphabet" else meta.get(name)
            hint = f" (train the student with --input-size {got[0]} {got[1]})" if name == "input_size" and got else ""
            raise TeacherMismatchError(f"--teacher {where}: {name} is {got}, the student needs {want}{hint}")
    for p in model.parameters():
        p.requires_grad_(False)
    read_views(model, 1)  # the teacher reads every training batch: test-time views would multiply that work
    return model.eval()


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over images and characters."""
    classes = student_logits.shape[-1]
    s = F.log_softmax(student_logits.float().reshape(-1, classes) / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float().reshape(-1, classes) / temperature, dim=-1)
    return F.kl_div(s, t, reduction="batchmean", log_target=True) * temperature**2
