"""Write a Triton model repository whose ensemble takes encoded image bytes and returns text.

`captcha export RUN --format triton --out REPO --name NAME` writes four models (docs/triton.md):

    REPO/NAME/                    ensemble: BYTES "image" -> "text", "confidence", "char_confidences"
    REPO/NAME_preprocess/         Python backend (serving/triton/preprocess_model.py as 1/model.py)
    REPO/NAME_onnx/               ONNX Runtime: 1/model.onnx, exported and verified by `export_onnx`
    REPO/NAME_postprocess/        Python backend (serving/triton/postprocess_model.py as 1/model.py)

The Python models learn the model's facts (preprocessor, input size, normalisation, alphabet or
class names, head, label smoothing) from their config.pbtxt `parameters`: the ONNX file's
metadata_props read back from the exported file and copied verbatim, so the file stays the one
source. Every model declares `max_batch_size` and batch-less dims; all but the ensemble batch
requests dynamically. The folders are built beside the repository and moved into place only
when all four are written, so a failed export leaves an earlier one as it was.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from captcha.export import ExportResult, export_onnx
from serving.triton import CHAR_CONFIDENCES_OUTPUT, CONFIDENCE_OUTPUT, IMAGE_INPUT, TEXT_OUTPUT

# Modules whose sources become the Python models' 1/model.py, found without importing them
# (they import triton_python_backend_utils, which exists only inside Triton).
PYTHON_MODELS = {"preprocess": "serving.triton.preprocess_model", "postprocess": "serving.triton.postprocess_model"}
DEFAULT_MAX_BATCH_SIZE = 64
QUEUE_DELAY_US = 2000  # how long a dynamic batcher waits to fill a batch
LEFT_OUT_PROPS = ("metrics",)  # training scores: metadata, not facts a served model needs


@dataclass
class TritonExport:
    """What `export_triton` wrote: the ensemble clients call, every model folder, the ONNX check."""

    ensemble: Path
    models: list[Path]
    onnx: ExportResult


def pbtxt_string(value: str) -> str:
    """`value` as a protobuf text-format string literal: printable ASCII as is, every other
    byte of its UTF-8 as an octal escape (read back identically by Triton and by protobuf)."""
    out = []
    for byte in value.encode("utf-8"):
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _tensor_list(field: str, tensors: list[tuple[str, str, list[int]]]) -> str:
    """An `input [...]` or `output [...]` block of (name, data type, dims) entries."""
    items = [
        f"  {{\n    name: {pbtxt_string(name)}\n    data_type: {data_type}\n    dims: [ {', '.join(str(d) for d in dims)} ]\n  }}"
        for name, data_type, dims in tensors
    ]
    return f"{field} [\n" + ",\n".join(items) + "\n]\n"


def _header(name: str, engine: str, max_batch_size: int) -> str:
    return f"name: {pbtxt_string(name)}\n{engine}\nmax_batch_size: {max_batch_size}\n"


def _batching(kind: str) -> str:
    return (f"dynamic_batching {{\n  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n}}\n"
            f"instance_group [\n  {{\n    kind: {kind}\n    count: 1\n  }}\n]\n")


def _parameters(props: dict[str, str]) -> str:
    return "".join(f"parameters {{\n  key: {pbtxt_string(k)}\n  value: {{ string_value: {pbtxt_string(v)} }}\n}}\n" for k, v in props.items())


def _image_shape(props: dict[str, str]) -> list[int]:
    h, w = json.loads(props["input_size"])
    return [int(props["channels"]), int(h), int(w)]


def preprocess_config(name: str, props: dict[str, str], max_batch_size: int) -> str:
    """BYTES "image" [1] -> the ONNX input [K, H, W], on CPU, the facts as parameters."""
    return (_header(name, 'backend: "python"', max_batch_size)
            + _tensor_list("input", [(IMAGE_INPUT, "TYPE_STRING", [1])])
            + _tensor_list("output", [(props["input_name"], "TYPE_FP32", _image_shape(props))])
            + _batching("KIND_CPU") + _parameters(props))


def onnx_config(name: str, props: dict[str, str], output_shape: list[int], max_batch_size: int) -> str:
    """The exported model on ONNX Runtime (on a GPU when Triton has one: KIND_AUTO)."""
    return (_header(name, 'platform: "onnxruntime_onnx"', max_batch_size)
            + _tensor_list("input", [(props["input_name"], "TYPE_FP32", _image_shape(props))])
            + _tensor_list("output", [(props["output_name"], "TYPE_FP32", output_shape)])
            + _batching("KIND_AUTO"))


def _answer_tensors(output_shape: list[int]) -> list[tuple[str, str, list[int]]]:
    # One char_confidences entry per output position of the model: its characters, a CTC
    # head's time steps (the most characters it can read) or a classifier's single head.
    return [(TEXT_OUTPUT, "TYPE_STRING", [1]), (CONFIDENCE_OUTPUT, "TYPE_FP32", [1]),
            (CHAR_CONFIDENCES_OUTPUT, "TYPE_FP32", [output_shape[0]])]


def postprocess_config(name: str, props: dict[str, str], output_shape: list[int], max_batch_size: int) -> str:
    """Logits -> text, confidence, char_confidences, on CPU, the facts as parameters."""
    return (_header(name, 'backend: "python"', max_batch_size)
            + _tensor_list("input", [(props["output_name"], "TYPE_FP32", output_shape)])
            + _tensor_list("output", _answer_tensors(output_shape))
            + _batching("KIND_CPU") + _parameters(props))


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    maps = [f"      input_map {{\n        key: {pbtxt_string(k)}\n        value: {pbtxt_string(v)}\n      }}" for k, v in inputs.items()]
    maps += [f"      output_map {{\n        key: {pbtxt_string(k)}\n        value: {pbtxt_string(v)}\n      }}" for k, v in outputs.items()]
    return f"    {{\n      model_name: {pbtxt_string(model)}\n      model_version: -1\n" + "\n".join(maps) + "\n    }"


def ensemble_config(name: str, names: dict[str, str], props: dict[str, str], output_shape: list[int], max_batch_size: int) -> str:
    """The model clients call: image bytes through preprocess, the ONNX model and postprocess."""
    images, logits = props["input_name"], props["output_name"]
    answers = [tensor for tensor, _, _ in _answer_tensors(output_shape)]
    steps = [
        _step(names["preprocess"], {IMAGE_INPUT: IMAGE_INPUT}, {images: images}),
        _step(names["onnx"], {images: images}, {logits: logits}),
        _step(names["postprocess"], {logits: logits}, {t: t for t in answers}),
    ]
    return (_header(name, 'platform: "ensemble"', max_batch_size)
            + _tensor_list("input", [(IMAGE_INPUT, "TYPE_STRING", [1])])
            + _tensor_list("output", _answer_tensors(output_shape))
            + "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}\n")


def _read_props(onnx_path: Path) -> dict[str, str]:
    """The exported file's metadata_props, the facts every model of the repository is written from."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props if p.key not in LEFT_OUT_PROPS}


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"--name {name!r}: a Triton model name is one folder name of letters, digits, '_', '-' and '.', e.g. captcha")


def _write_models(stage: Path, name: str, onnx: ExportResult, max_batch_size: int) -> dict[str, str]:
    """Write the four model folders under `stage` (the ONNX one already holds 1/model.onnx)."""
    props = _read_props(onnx.path)
    names = {"preprocess": f"{name}_preprocess", "onnx": f"{name}_onnx", "postprocess": f"{name}_postprocess"}
    shape = onnx.output_shape
    configs = {
        name: ensemble_config(name, names, props, shape, max_batch_size),
        names["preprocess"]: preprocess_config(names["preprocess"], props, max_batch_size),
        names["onnx"]: onnx_config(names["onnx"], props, shape, max_batch_size),
        names["postprocess"]: postprocess_config(names["postprocess"], props, shape, max_batch_size),
    }
    for model, config in configs.items():
        (stage / model / "1").mkdir(parents=True, exist_ok=True)  # the ensemble's version folder stays empty
        (stage / model / "config.pbtxt").write_text(config)
    for role, module in PYTHON_MODELS.items():
        shutil.copyfile(importlib.util.find_spec(module).origin, stage / names[role] / "1" / "model.py")
    return names


def export_triton(run: str | Path, repo: str | Path, name: str = "captcha", max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                  **kwargs: Any) -> TritonExport:
    """Export `run` into the Triton repository `repo` as the ensemble `name` and its three models.

    `kwargs` go to `export_onnx` (verify_images, opset, tta, log). Model folders of the same
    names already in `repo` are replaced; nothing else in it is touched.
    """
    _check_name(name)
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be 1 or more, not {max_batch_size}")
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise ValueError(f"--out {repo}: a file; name the Triton model repository folder to write into")
    repo.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=repo, prefix=".captchakit-export-") as tmp:
        stage = Path(tmp)
        log = kwargs.pop("log", print)
        # export_onnx reports the file it checked: name where it will be, not the staging folder
        onnx = export_onnx(run, stage / f"{name}_onnx" / "1" / "model.onnx", log=lambda line: log(line.replace(str(stage), str(repo))), **kwargs)
        names = _write_models(stage, name, onnx, max_batch_size)
        for model in (*names.values(), name):
            target = repo / model
            if target.exists():
                shutil.rmtree(target)
            (stage / model).rename(target)
    onnx = replace(onnx, path=repo / names["onnx"] / "1" / "model.onnx")
    return TritonExport(repo / name, [repo / m for m in (name, *names.values())], onnx)
