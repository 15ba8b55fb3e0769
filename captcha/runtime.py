"""What training and inference both do with a model: pick the device, normalise a uint8 batch,
read logits without gradients, and measure the loss of logits against encoded labels.

Training (`captcha.train`) and inference (`captcha.inference`, `captcha.classify.evaluate`) import
these from here, so neither depends on the other.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from captcha import distributed as dist
from captcha.alphabet import Alphabet
from captcha.constants import NORM_MEAN, NORM_STD
from captcha.tta import views_read

DEVICES = ("auto", "cpu", "cuda")

# Images a forward pass carries when reading without gradients, test-time views counted (five
# views of 6 images are a pass of 30): a few dozen keep a CPU's activations in cache, while a GPU
# wants large passes (docs/recipe-choices.md has the measurement).
EVAL_IMAGES_PER_PASS = {"cpu": 32, "cuda": 512}


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when a GPU is there, else the CPU; `cuda` without a GPU is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but no CUDA GPU is available")
    return torch.device(name)


def bf16_pays(device: torch.device) -> bool:
    """Whether bf16 autocast speeds training on `device`: on CUDA, and on a CPU with native bf16
    arithmetic (AVX512-BF16 or AMX), where oneDNN runs convolutions in it; elsewhere bf16 is
    emulated and slower than float32."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    native = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and check() for check in native)


def fast_optimizer(kind: type[torch.optim.Optimizer], params: list[torch.nn.Parameter], **settings) -> torch.optim.Optimizer:
    """An optimizer of class `kind` whose step is one fused kernel where torch has one for these
    parameters (no per-parameter host work, no read of the step count), else the multi-tensor
    (foreach) form; never the per-parameter loop, which reads every parameter's step count."""
    try:
        return kind(params, **settings, fused=True)
    except (RuntimeError, TypeError, ValueError):  # an older torch, or a device or dtype without the fused kernel
        return kind(params, **settings, foreach=True)


def normalize_batch(x: torch.Tensor, mean: float = NORM_MEAN, std: float = NORM_STD) -> torch.Tensor:
    """uint8 batch -> float, the same arithmetic as `captcha.preprocess.normalize`."""
    return (x.float() * (1.0 / 255.0) - mean) / std


def encode_labels(labels: list[str], alphabet: Alphabet, width: int) -> torch.Tensor:
    """Labels as class indices, padded with -1 to `width` (variable-length CTC labels)."""
    out = torch.full((len(labels), width), -1, dtype=torch.long)
    for i, text in enumerate(labels):
        out[i, : len(text)] = torch.tensor(alphabet.encode(text), dtype=torch.long)
    return out


def loss_fn(logits: torch.Tensor, targets: torch.Tensor, head: str, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over heads, or CTC loss for a CTC head (targets padded with -1)."""
    if head == "ctc":
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # T x B x C+1
        lengths = (targets >= 0).sum(1)
        flat = targets[targets >= 0] + 1  # class 0 is the blank
        input_lengths = torch.full((logits.shape[0],), logits.shape[1], dtype=torch.long)
        return F.ctc_loss(log_probs, flat, input_lengths, lengths, blank=0, zero_infinity=True)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), label_smoothing=label_smoothing)


def eval_batch(model: nn.Module, device: torch.device | None = None) -> int:
    """Images per forward pass for reading with `model` on `device` (default: where it is):
    `EVAL_IMAGES_PER_PASS` for the device, shared among the model's test-time views."""
    device = device or next(model.parameters()).device
    return max(1, EVAL_IMAGES_PER_PASS.get(device.type, EVAL_IMAGES_PER_PASS["cuda"]) // views_read(model))


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int | None = None, mean: float = NORM_MEAN,
                   std: float = NORM_STD) -> torch.Tensor:
    """Logits for uint8 images N x K x H x W, `batch_size` at a time (default `eval_batch`), on
    the model's device. Eval mode: the result does not depend on the batch size."""
    model.eval()
    device = next(model.parameters()).device
    batch_size = batch_size or eval_batch(model, device)
    starts = tqdm(range(0, images.shape[0], batch_size), desc="reading", unit="batch", leave=False, disable=None if dist.is_main() else True)
    outs = [model(normalize_batch(images[i : i + batch_size].to(device), mean, std)).float().cpu() for i in starts]
    return torch.cat(outs) if outs else torch.zeros(0)
