"""The artifact contract: a checkpoint holds the weights and every fact needed to use them.

`best.pt` = {"meta": {...}, "model_state": state_dict}. The meta carries the architecture and
its arguments, the task, alphabet or class names, label length, input size, channels,
preprocessor, normalisation, test-time views (`tta`), training config, metrics and library versions. Loading rebuilds the
model from the meta alone: no flag can disagree with it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import io
import os
import platform
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

import captcha
from captcha.models import create_model
from captcha.tta import read_views

FORMAT_VERSION = 1
BEST = "best.pt"
LAST = "last.pt"


def library_versions() -> dict[str, str]:
    import cv2
    import numpy as np
    import torchvision

    return {
        "captchakit": captcha.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def make_meta(
    *,
    task: str,
    model_name: str,
    model_args: dict[str, Any],
    input_size: tuple[int, int],
    channels: int,
    preprocess: str,
    mean: float,
    std: float,
    alphabet: str | None = None,
    length: int | None = None,
    class_names: list[str] | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "task": task,
        "model": {"name": model_name, "args": dict(model_args)},
        "head": model_args.get("head", "fixed"),
        "alphabet": alphabet,
        "length": length,
        "class_names": class_names,
        "input_size": list(input_size),
        "channels": channels,
        "preprocess": preprocess,
        "normalization": {"mean": mean, "std": std},
        "config": config or {},
        "metrics": {},
        "versions": library_versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def build_model(meta: dict[str, Any]) -> nn.Module:
    """The model the meta describes, reading `meta["tta"]` shifted views in eval mode (1 if absent)."""
    model = create_model(meta["model"]["name"], **meta["model"]["args"])
    read_views(model, meta.get("tta", 1))
    return model


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any], **extra: Any) -> Path:
    """Write atomically, so an interruption never leaves a half-written checkpoint, and a write
    that fails (a full disk) leaves the previous checkpoint as it was."""
    path = Path(path)
    state = {"meta": meta, "model_state": _unwrap(model).state_dict(), **extra}
    buffer = io.BytesIO()
    torch.save(state, buffer)  # serialised first: torch's own file writer reports no errno or file name
    write_atomically(path, buffer.getbuffer())
    return path


class CheckpointSaveError(RuntimeError):
    """A checkpoint that could not be written; the message names it and says why."""


def write_atomically(path: Path, data: bytes | memoryview) -> None:
    """`data` to `<path stem>.tmp`, flushed to disk, then renamed over `path`. On failure the
    partial file is removed, `path` is untouched, and CheckpointSaveError names both."""
    tmp = path.with_suffix(".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        why = f"the disk is full ({exc.strerror})" if full else f"{exc.strerror or exc}"
        kept = f"the previous {path} is kept" if path.exists() else "no earlier one was there"
        raise CheckpointSaveError(f"{path}: not saved, {why} while writing {tmp}; {kept}"
                                  + (". Free some space and run again." if full else "")) from exc


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DistributedDataParallel
    return getattr(model, "_orig_mod", model)  # torch.compile


class CheckpointError(ValueError):
    """A file that is not a readable captchakit checkpoint; the message names it."""


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory means its best.pt; a file is taken as it is."""
    path = Path(path)
    if path.is_dir():
        if not (path / BEST).exists() and (path / LAST).exists():
            raise FileNotFoundError(f"{path}: no {BEST} yet, only {LAST} (an interrupted run?): continue it with "
                                    f"`captcha train --resume --out {path}`, or name {path / LAST} to use it as it is")
        path = path / BEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint here (train one with `captcha train --out DIR` or `captcha classify train --out DIR`)")
    return path


def read_checkpoint_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """torch.load of a checkpoint file, with a truncated, corrupt or foreign file refused by name."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and OS errors all mean "unreadable"
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or "meta" not in state or "model_state" not in state:
        raise CheckpointError(f"{path}: not a captchakit checkpoint (no 'meta' and 'model_state'; train one with `captcha train`)")
    return state


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return read_checkpoint_file(resolve_checkpoint(path), map_location)


def load_model(path: str | Path, device: str | torch.device = "cpu", channels_last: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a checkpoint's meta and load its weights; returns (model.eval(), meta).

    `channels_last` lays the weights out as training does (NHWC), which a CPU reads faster than
    PyTorch's default layout (benchmarks/eval_speed.py; docs/recipe-choices.md). Export asks for
    the default layout, which the ONNX graph is traced in."""
    ckpt = load_checkpoint(path, map_location=device)
    model = build_model(ckpt["meta"])
    model.load_state_dict(ckpt["model_state"])
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(device, memory_format=layout).eval(), ckpt["meta"]
