"""One served model: an ONNX Runtime session plus the facts from the file's metadata.

Images go through `captcha.imageio.decode_image`, the run's preprocessor and `normalize` -
the functions training and `captcha predict` use - so the server's predictions match theirs.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from captcha.decoding import Prediction, decode, softmax
from captcha.imageio import decode_image
from captcha.preprocess import get_preprocessor, normalize

log = logging.getLogger("captcha.serving")


def _cuda_device_present() -> bool:
    """True when the CUDA driver reports at least one GPU (checked without torch)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return lib.cuInit(0) == 0 and lib.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


def choose_providers(device: str = "auto") -> list[str]:
    """ONNX Runtime providers for `device` (auto | cpu | cuda).

    onnxruntime-gpu lists CUDA even on machines without a GPU and then logs loud errors, so CUDA
    is used only when the provider is built in *and* the driver sees a device.
    """
    import onnxruntime as ort

    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, not {device!r}")
    cuda = "CUDAExecutionProvider" in ort.get_available_providers() and device != "cpu" and _cuda_device_present()
    if device == "cuda" and not cuda:
        raise RuntimeError("--device cuda was asked for, but ONNX Runtime has no usable CUDA GPU here")
    if cuda:
        _preload_cuda_libraries(ort)
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]


def _preload_cuda_libraries(ort) -> None:
    """Load the CUDA and cuDNN libraries of the `nvidia-*` wheels that pip installs beside torch
    (`onnxruntime.preload_dlls`, ONNX Runtime 1.21+), so the CUDA provider finds them whatever
    CUDA the system has, or none (the Docker image relies on it), and without importing torch first."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # noqa: BLE001 - then ORT searches the system's library path as before
        log.warning("onnxruntime.preload_dlls failed (%s); using the system's CUDA libraries", exc)


@dataclass
class ModelSpec:
    """Everything read from an exported file's metadata_props."""

    task: str
    head: str
    labels: str | list[str]  # alphabet (recognition) or class names (classification)
    length: int | None
    input_size: tuple[int, int]
    channels: int
    preprocess: str
    mean: float
    std: float
    architecture: str
    captchakit_version: str
    input_name: str = "images"
    output_name: str = "logits"
    label_smoothing: float = 0.0  # the training value: decoding rescales confidences by it
    quantization: str = ""  # "int8" for an int8 export (`captcha export --quantize int8`), "" for a float one
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_props(cls, props: dict[str, str], source: str) -> "ModelSpec":
        if "task" not in props or "preprocess" not in props:
            raise ValueError(f"{source}: no captchakit metadata in this ONNX file (export it with `captcha export RUN_DIR`)")
        norm = json.loads(props.get("normalization", '{"mean": 0.5, "std": 0.5}'))
        labels = json.loads(props["alphabet"]) if "alphabet" in props else json.loads(props.get("class_names", "[]"))
        length = props.get("length") or ""
        return cls(
            task=props["task"],
            head=props.get("head", "fixed"),
            labels=labels,
            length=int(length) if length else None,
            input_size=tuple(json.loads(props["input_size"])),
            channels=int(props["channels"]),
            preprocess=props["preprocess"],
            mean=float(norm["mean"]),
            std=float(norm["std"]),
            architecture=props.get("model_name", ""),
            captchakit_version=props.get("captchakit_version", ""),
            label_smoothing=float(props.get("label_smoothing") or 0.0),
            input_name=props.get("input_name", "images"),
            output_name=props.get("output_name", "logits"),
            quantization=_quantization(props.get("quantization"), source),
            extra=props,
        )


def _quantization(text: str | None, source: str) -> str:
    """The quantization type an export's metadata names ("" for none), or a clear error naming the file."""
    if not text:
        return ""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise ValueError(f"{source}: its 'quantization' metadata is not what `captcha export --quantize` writes: {text[:80]!r}")
    return value["type"]


class ServedModel:
    """A loaded ONNX model: preprocess bytes, run batches, decode logits. Thread-safe.

    `provider` is the execution provider that runs it; `fallback` says why, when CUDA was chosen
    but ONNX Runtime could not start it and runs the model on the CPU instead (else None). The
    server reports both once, however many processes load the model.
    """

    def __init__(self, name: str, path: str | Path, device: str = "auto", threads: int = 0):
        import onnxruntime as ort

        self.name = name
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX model")
        self.version = hashlib.sha256(self.path.read_bytes()).hexdigest()[:12]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.log_severity_level = 3
        providers = choose_providers(device)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT's own error types: a corrupt file, a checkpoint, a text file
            raise ValueError(f"{self.path}: not a loadable ONNX model ({type(exc).__name__}: {str(exc)[:200]}); "
                             "write one with `captcha export RUN`") from exc
        self.provider = self.session.get_providers()[0]
        self.fallback = None
        if providers[0] != self.provider:
            self.fallback = (f"{providers[0]} was chosen but ONNX Runtime could not start it (see its log above); "
                             f"{self.name} runs on {self.provider}")
        self.spec = ModelSpec.from_props(dict(self.session.get_modelmeta().custom_metadata_map), str(self.path))
        self._preprocessor = get_preprocessor(self.spec.preprocess)

    def preprocess(self, data: bytes, source: str = "<request>") -> np.ndarray:
        """Encoded image -> normalised float32 K x H x W; raises ImageDecodeError on bad bytes."""
        image = self._preprocessor(decode_image(data, source), self.spec.input_size)
        return normalize(image, self.spec.mean, self.spec.std)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Normalised float32 [B, K, H, W] -> logits."""
        return self.session.run([self.spec.output_name], {self.spec.input_name: batch})[0]

    def decode(self, logits: np.ndarray) -> list[Prediction]:
        return decode(logits, self.spec.labels, self.spec.head, self.spec.label_smoothing)

    def top_k(self, logits: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """Classification: the k most probable class names per sample."""
        probs = softmax(logits.reshape(logits.shape[0], -1).astype(np.float64))
        order = np.argsort(-probs, axis=1)[:, :k]
        return [[(str(self.spec.labels[j]), float(p[j])) for j in row] for row, p in zip(order, probs)]

    def warm_up(self, max_batch: int) -> None:
        """Run batch sizes 1 and `max_batch` once so the first requests do not pay for setup."""
        h, w = self.spec.input_size
        for b in sorted({1, max(1, max_batch)}):
            self.run(np.zeros((b, self.spec.channels, h, w), np.float32))

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "task": self.spec.task,
            "head": self.spec.head,
            "labels": self.spec.labels,
            "length": self.spec.length,
            "input_size": list(self.spec.input_size),
            "channels": self.spec.channels,
            "preprocess": self.spec.preprocess,
            "architecture": self.spec.architecture,
            "captchakit_version": self.spec.captchakit_version,
            "provider": self.provider,
        }


def parse_model_args(items: list[str]) -> list[tuple[str, Path]]:
    """`a.onnx` or `name=path.onnx` -> (name, path); names must be unique."""
    out: list[tuple[str, Path]] = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).stem, item
        if not name:
            raise ValueError(f"{item!r}: empty model name")
        if any(n == name for n, _ in out):
            raise ValueError(f"model name {name!r} is used twice; name them with NAME=PATH")
        out.append((name, Path(path)))
    if not out:
        raise ValueError("no model given")
    return out
