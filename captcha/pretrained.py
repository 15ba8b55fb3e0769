"""Shipped synthetic pre-training weights, and copying them into a model for a new alphabet.

Each model declares its shipped files where it is registered (`register_model(weights=...)`):
compact weights (float16) in `captcha/weights/` that `captcha pretrain` learned from the
generator's pre-training styles (`captcha.generate.MIX`), with a 62-symbol alphabet. `captcha
train` starts from them by default when they match its model, preprocessor and head (`--init
pretrained`); `--init none` trains from scratch.

Transfer is by name and by symbol: backbone tensors are copied as they are, and each output row
of a classifier is copied from the row of the same symbol, so a user's alphabet (any subset of the
62 symbols, in any order) starts with everything the pre-training learned about its symbols.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
import torch.nn as nn

from captcha import checkpoint as ckpt
from captcha.models import shipped_weights

PRETRAIN_ALPHABET = string.digits + string.ascii_lowercase + string.ascii_uppercase
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
PRETRAINED = "pretrained"  # `--init` value: the shipped weights for this model, preprocessor and head
SCRATCH = "none"  # `--init` value: random initialisation


def weights_name(model: str, preprocess: str, head: str) -> str:
    return f"{model}-{preprocess}-{head}.pt"


def find_pretrained(model: str, preprocess: str, head: str) -> Path | None:
    """The shipped weights declared for this combination; else those of the same model and
    preprocessor with another head (the backbone and the per-symbol classifier rows still
    transfer); else None."""
    declared = [w for _, w in shipped_weights(model) if w.preprocess == preprocess and (WEIGHTS_DIR / w.file).exists()]
    ranked = sorted(declared, key=lambda w: (w.head != head, w.file))  # this head first, then by file name
    return WEIGHTS_DIR / ranked[0].file if ranked else None


def list_pretrained() -> list[str]:
    """The declared weights files that are shipped, by name without `.pt`."""
    return sorted(Path(w.file).stem for _, w in shipped_weights() if (WEIGHTS_DIR / w.file).exists())


def save_compact(checkpoint_path: str | Path, out: str | Path, extra_meta: dict | None = None) -> Path:
    """Write a checkpoint's weights as float16 with its meta (half the size of float32), plus
    `extra_meta` (what the weights were pre-trained on: fonts, images seen)."""
    source = ckpt.load_checkpoint(checkpoint_path)
    state = {k: v.half() if v.is_floating_point() else v for k, v in source["model_state"].items()}
    meta = dict(source["meta"])
    meta.pop("config", None)  # paths of the pre-training machine; the metrics say what it reached
    meta.update(extra_meta or {})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"meta": meta, "model_state": state}, out)
    return out


_CLASSIFIER_PREFIXES = ("head.classifier.", "head.heads.")  # tensors whose first axis is the symbols


def _class_rows(symbols: str, offset: int) -> dict[str, int]:
    return {ch: i + offset for i, ch in enumerate(symbols)}


def transfer_weights(model: nn.Module, source: str | Path, alphabet: str, head: str) -> int:
    """Copy what fits from checkpoint `source` into `model`; returns how many tensors were filled.

    - a class dimension (first axis = the source's alphabet, plus a blank row for a CTC head):
      copied row by row for every symbol both alphabets share, whatever either head is; new
      symbols (and a new CTC blank) keep their random rows;
    - otherwise same name and shape: copied;
    - another first-axis mismatch (e.g. attention queries for a longer label): the shared rows.
    """
    saved = ckpt.load_checkpoint(source)
    src_state, src_meta = saved["model_state"], saved["meta"]
    src_alphabet = src_meta.get("alphabet") or ""
    offset = 1 if head == "ctc" else 0  # the CTC blank is row 0
    src_offset = 1 if src_meta.get("head") == "ctc" else 0
    src_rows, dst_rows = _class_rows(src_alphabet, src_offset), _class_rows(alphabet, offset)
    own = model.state_dict()
    filled = {}
    for name, target in own.items():
        value = src_state.get(name)
        if value is None or value.ndim != target.ndim:
            continue
        value = value.to(target.dtype)
        if value.ndim == 0 or value.shape[1:] != target.shape[1:]:
            if value.shape == target.shape:
                filled[name] = value
            continue
        new = target.clone()
        if name.startswith(_CLASSIFIER_PREFIXES) and value.shape[0] == len(src_alphabet) + src_offset and target.shape[0] == len(alphabet) + offset:
            # Checked before an equal shape: the same number of symbols may come in another order.
            if offset and src_offset:
                new[0] = value[0]
            for ch, row in dst_rows.items():
                if ch in src_rows:
                    new[row] = value[src_rows[ch]]
        elif value.shape == target.shape:
            new = value
        else:
            n = min(value.shape[0], target.shape[0])
            new[:n] = value[:n]
        filled[name] = new
    model.load_state_dict(filled, strict=False)
    return len(filled)
