"""TensorBoard logging for `captcha train --tensorboard`, through `torch.utils.tensorboard`.

Per epoch: each phase's loss, whole-string and per-character accuracy, and the learning rate;
at the end: the misread images of the test split as a picture, and the run's settings beside
its final scores (TensorBoard's HPARAMS tab). TensorBoard is an optional extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

EXTRA = 'pip install "captchakit[tensorboard]"'


def check_available() -> None:
    """Raise a one-line error naming the extra when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ValueError(f"--tensorboard needs the tensorboard package: {EXTRA}") from None


class TensorBoardLog:
    """One run's event files in `folder`."""

    def __init__(self, folder: str | Path):
        check_available()
        from torch.utils.tensorboard import SummaryWriter

        self.folder = Path(folder)
        self.writer = SummaryWriter(log_dir=str(self.folder))

    def epoch(self, rows: list[dict]) -> None:
        """One epoch's history rows (one per phase, as `fit` keeps them)."""
        for row in rows:
            step, phase = row["epoch"], row["phase"]
            self.writer.add_scalar(f"loss/{phase}", row["loss"], step)
            self.writer.add_scalar(f"whole_string_accuracy/{phase}", row["sequence_accuracy"], step)
            for i, value in enumerate(row["per_char_accuracy"]):
                self.writer.add_scalar(f"char_accuracy/{phase}_{i + 1}", value, step)
        if rows and "lr" in rows[0]:
            self.writer.add_scalar("learning_rate", rows[0]["lr"], rows[0]["epoch"])
        self.writer.flush()

    def image(self, tag: str, bgr: np.ndarray, step: int) -> None:
        """An OpenCV picture (H x W x 3, BGR)."""
        self.writer.add_image(tag, np.ascontiguousarray(bgr[:, :, ::-1]), step, dataformats="HWC")

    def finish(self, settings: dict[str, Any], scores: dict[str, float]) -> None:
        """The run's settings beside its final scores, then close the files."""
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in settings.items()}
        self.writer.add_hparams(hparams, {f"hparam/{k}": v for k, v in scores.items()}, run_name=".")
        self.writer.close()
