"""Image classifiers in the model registry: `mlp`, `cnn`, `resnet18_cls`, `resnet50`.

Every classifier is `Recognizer(backbone, head)` with one head, so it returns logits [B, 1, K] and
shares training, export and serving with the CAPTCHA recognizers. The backbone starts with a
`ChannelNormalize` layer holding per-channel mean/std (ImageNet's for RGB), so the checkpoint's
meta normalisation is the plain x / 255 (mean 0, std 1) that every consumer already applies.

`resnet18` is taken by the CAPTCHA recognizer, hence `resnet18_cls`. ImageNet weights are not a
model argument: `load_pretrained` loads them after construction, so rebuilding a trained model
from its checkpoint never needs the weights file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torchvision.models as tvm

from captcha.models._heads import PooledHeads, Recognizer
from captcha.models._registry import register_model

# A classifier's checkpoint normalisation: pixels / 255; the per-channel mean/std live in the model.
META_MEAN, META_STD = 0.0, 1.0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ACTIVATIONS = ("relu", "sigmoid", "softmax")
TOPS = ("fc", "keras")
CLASSIFIERS = ("mlp", "cnn", "resnet18_cls", "resnet50")

_TORCHVISION = {
    "resnet18_cls": (tvm.resnet18, tvm.ResNet18_Weights),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights),
}


class ExportableAdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """`nn.AdaptiveAvgPool2d` that also exports to ONNX when the input size is not a multiple of
    the output size (R2's CNN pools 7 x 7 features to 4 x 4): under export each output cell is
    the mean of the same window PyTorch averages (rows floor(i H / n) to ceil((i + 1) H / n)),
    written out for the traced size; otherwise the built-in operator runs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():
            return super().forward(x)
        out_h, out_w = (self.output_size, self.output_size) if isinstance(self.output_size, int) else self.output_size
        with warnings.catch_warnings():  # the traced sizes are fixed by design: only the batch axis is dynamic
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            h, w = int(x.shape[-2]), int(x.shape[-1])
        out_h, out_w = out_h or h, out_w or w

        def windows(size: int, n: int) -> list[tuple[int, int]]:
            return [((i * size) // n, -((-(i + 1) * size) // n)) for i in range(n)]

        rows = [torch.cat([x[..., r0:r1, c0:c1].mean(dim=(-2, -1), keepdim=True) for c0, c1 in windows(w, out_w)], dim=-1)
                for r0, r1 in windows(h, out_h)]
        return torch.cat(rows, dim=-2)


class ChannelNormalize(nn.Module):
    """(x - mean_c) / std_c on a [B, C, H, W] batch in [0, 1]; part of the model, hence exported."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Softmax1d(nn.Softmax):
    """Softmax over features, usable as a hidden activation (R2 shows why it is a bad one)."""

    def __init__(self):
        super().__init__(dim=1)


def _activation(name: str) -> nn.Module:
    layers = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "softmax": Softmax1d}
    if name not in layers:
        raise ValueError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}")
    return layers[name]()


def _norm_args(in_channels: int, mean: Sequence[float] | None, std: Sequence[float] | None) -> tuple[list[float], list[float]]:
    """Per-channel mean/std: given ones, ImageNet's for RGB, 0.5/0.5 otherwise."""
    if mean is None:
        mean = IMAGENET_MEAN if in_channels == 3 else (0.5,) * in_channels
    if std is None:
        std = IMAGENET_STD if in_channels == 3 else (0.5,) * in_channels
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"mean/std need {in_channels} values each, got {len(mean)} and {len(std)}")
    return list(mean), list(std)


class FeatureBody(nn.Module):
    """Normalisation followed by a feature extractor; `out_features` is the feature width."""

    def __init__(self, normalize: ChannelNormalize, features: nn.Module, out_features: int):
        super().__init__()
        self.normalize = normalize
        self.features = features
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.normalize(x))


class KerasTop(nn.Module):
    """The Keras-style top of R3's recipe A: (GAP done by the body) Dense(1024, ReLU), Dense(K)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 1024):
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.hidden(features)).unsqueeze(1)


def _top(kind: str, in_features: int, num_classes: int) -> nn.Module:
    if kind == "fc":
        return PooledHeads(in_features, num_classes, 1)
    if kind == "keras":
        return KerasTop(in_features, num_classes)
    raise ValueError(f"unknown top {kind!r}; choose from {', '.join(TOPS)}")


def _check_length(length: int) -> None:
    if length != 1:
        raise ValueError("a classifier has exactly one head (length=1)")


@register_model(name="mlp", task="classification")
def mlp(
    num_classes: int,
    length: int = 1,
    in_channels: int = 1,
    input_size: Sequence[int] = (28, 28),
    hidden: Sequence[int] = (256, 128),
    activation: str = "relu",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Recognizer:
    """Flatten, then dense layers with a chosen hidden activation (R2's baseline)."""
    _check_length(length)
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_channels * int(input_size[0]) * int(input_size[1])
    for units in hidden:
        layers += [nn.Linear(width, units), _activation(activation)]
        width = units
    body = FeatureBody(ChannelNormalize(*_norm_args(in_channels, mean, std)), nn.Sequential(*layers), width)
    return Recognizer(body, PooledHeads(width, num_classes, 1))


@register_model(name="cnn", task="classification")
def cnn(
    num_classes: int,
    length: int = 1,
    in_channels: int = 1,
    widths: Sequence[int] = (32, 64),
    dense: int = 128,
    activation: str = "relu",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Recognizer:
    """Small CNN: conv-ReLU-pool blocks, 4x4 adaptive pooling, one dense layer (R2's CNN)."""
    _check_length(length)
    layers: list[nn.Module] = []
    channels = in_channels
    for w in widths:
        layers += [nn.Conv2d(channels, w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        channels = w
    layers += [ExportableAdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(channels * 16, dense), _activation(activation)]
    body = FeatureBody(ChannelNormalize(*_norm_args(in_channels, mean, std)), nn.Sequential(*layers), dense)
    return Recognizer(body, PooledHeads(dense, num_classes, 1))


def _torchvision_classifier(name: str, num_classes: int, in_channels: int, top: str, mean, std) -> Recognizer:
    build, _ = _TORCHVISION[name]
    net = build(weights=None)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    out_features = net.fc.in_features
    net.fc = nn.Identity()  # the body ends with global average pooling: features [B, F]
    body = FeatureBody(ChannelNormalize(*_norm_args(in_channels, mean, std)), net, out_features)
    return Recognizer(body, _top(top, out_features, num_classes))


@register_model(name="resnet18_cls", task="classification")
def resnet18_cls(
    num_classes: int, length: int = 1, in_channels: int = 3, top: str = "fc",
    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
) -> Recognizer:
    """torchvision ResNet18 with its fc replaced (`top="fc"`) or the Keras-style top."""
    _check_length(length)
    return _torchvision_classifier("resnet18_cls", num_classes, in_channels, top, mean, std)


@register_model(name="resnet50", task="classification")
def resnet50(
    num_classes: int, length: int = 1, in_channels: int = 3, top: str = "fc",
    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
) -> Recognizer:
    """torchvision ResNet50 with its fc replaced (`top="fc"`) or the Keras-style top."""
    _check_length(length)
    return _torchvision_classifier("resnet50", num_classes, in_channels, top, mean, std)


def _weights_from_cache_dir(model_name: str, folder: Path) -> dict[str, torch.Tensor]:
    """torchvision's own loader (`WeightsEnum.get_state_dict`) reading a torch hub cache dir.

    The file must already be there (`<dir>/checkpoints/<file>` or `<dir>/<file>`): checked
    first so that nothing is ever downloaded.
    """
    _, enum = _TORCHVISION[model_name]
    tried = []
    for weights in enum:
        filename = os.path.basename(weights.url)
        for hub_dir in (folder, folder / "hub"):
            tried.append(str(hub_dir / "checkpoints" / filename))
            if (hub_dir / "checkpoints" / filename).is_file():
                previous = torch.hub.get_dir()
                torch.hub.set_dir(str(hub_dir))
                try:
                    return weights.get_state_dict(progress=False, check_hash=False)
                finally:
                    torch.hub.set_dir(previous)
        if (folder / filename).is_file():
            return torch.load(folder / filename, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder}: no {model_name} ImageNet weights found (looked for {', '.join(tried)})")


def load_pretrained(model: Recognizer, model_name: str, path: str | Path) -> list[str]:
    """Load ImageNet weights into a torchvision classifier's body; returns the keys left out.

    `path` is a plain state-dict file (`torch.save(net.state_dict())`, e.g. a downloaded
    `resnet50-11ad3fa6.pth`) or a torch hub cache dir. The original 1000-class fc and any key
    whose shape does not fit (a stem for other channel counts) are skipped, by name.
    """
    if model_name not in _TORCHVISION:
        raise ValueError(f"--weights needs one of {', '.join(_TORCHVISION)}, not {model_name!r}")
    path = Path(path)
    if path.is_dir():
        state = _weights_from_cache_dir(model_name, path)
    elif path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - pickle, zip and OS errors all mean "not a weights file"
            raise ValueError(f"{path}: not a weights file (a state dict saved with torch.save): {type(exc).__name__}") from exc
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    else:
        raise FileNotFoundError(f"{path}: no such weights file or torch cache dir")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict of tensors (is it a {model_name} state dict?)")
    net = model.backbone.features
    own = net.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    # Only the ImageNet fc (replaced by our head) and a stem for other channel counts may be left out.
    # (Older torchvision files carry no batch-norm step counters: those start at 0.)
    unfilled = sorted(k for k in own if k not in fitting and k != "conv1.weight" and not k.endswith("num_batches_tracked"))
    if not fitting or unfilled:
        example = ", ".join(unfilled[:3]) or "all"
        raise ValueError(f"{path}: does not fit {model_name}: {len(unfilled) or len(own)} of its {len(own)} tensors would stay "
                         f"unfilled ({example}...); is it a {model_name} state dict?")
    net.load_state_dict(fitting, strict=False)
    return sorted(set(state) - set(fitting))


def penultimate_layer(model: Recognizer) -> nn.Linear:
    """The last Linear layer of the head: its input is the penultimate-layer feature vector."""
    linears = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model's head has no linear layer")
    return linears[-1]
