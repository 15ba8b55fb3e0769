"""Export a trained run to ONNX, with every fact a server needs inside the file.

The ONNX graph takes the *normalised* float32 batch [B, K, H, W] (input "images") and returns
the raw logits (output "logits"; with test-time views, `captcha.tta`, the graph reads each image
at its shifts and returns the log of the averaged probabilities); decoding, preprocessing and normalisation stay in Python
(`captcha.preprocess`, `captcha.decoding`) so the server runs the very same code as training.
The checkpoint's meta goes into `metadata_props`, so an .onnx file alone is enough to serve.

Export checks itself: ONNX Runtime and torch must predict the same characters on real CAPTCHA
images, and the largest logit difference is reported. `quantize="int8"` writes the int8 form
for CPU serving instead (`captcha.quantize`, calibrated on the run's training images); its check
reports how many readings the int8 model shares with torch and refuses one that shares fewer
than `MIN_INT8_AGREEMENT` of them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import captcha
from captcha.imageio import list_images
from captcha.decoding import label_smoothing_of
from captcha.quantize import QUANTIZATIONS

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 17
FORMATS = ("onnx", "triton")
CALIBRATION_IMAGES = 256  # training images an int8 export measures its activation ranges on
MIN_INT8_AGREEMENT = 0.9  # share of the check's readings an int8 export must share with torch
VERIFY_SEED, CALIBRATION_SEED = 1234, 4321  # generated images for a run without data: the check never reads the calibration's


@dataclass
class ExportResult:
    """What `export_onnx` wrote and how closely ONNX Runtime matched torch."""

    path: Path
    verified_images: int
    max_abs_diff: float
    agree: bool  # every check image read alike
    output_shape: list[int]  # per sample, without the batch axis
    agreeing: int = 0  # check images whose reading ONNX Runtime and torch share
    quantization: str | None = None


def metadata_from_meta(meta: dict[str, Any]) -> dict[str, str]:
    """Checkpoint meta -> ONNX metadata_props (all values strings; structured ones as JSON)."""
    norm = meta.get("normalization") or {}
    props = {
        "captchakit.format": "1",
        "task": meta["task"],
        "head": meta.get("head", "fixed"),
        "length": "" if meta.get("length") is None else str(int(meta["length"])),
        "input_size": json.dumps([int(x) for x in meta["input_size"]]),
        "channels": str(int(meta["channels"])),
        "preprocess": meta["preprocess"],
        "normalization": json.dumps({"mean": float(norm.get("mean", 0.5)), "std": float(norm.get("std", 0.5))}),
        "model_name": meta["model"]["name"],
        "model_args": json.dumps(meta["model"].get("args", {})),
        "tta": str(int(meta.get("tta", 1))),  # test-time views, already inside the graph
        "label_smoothing": repr(label_smoothing_of(meta)),  # decoding rescales confidences by it
        "captchakit_version": captcha.__version__,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
    }
    if meta.get("alphabet") is not None:
        props["alphabet"] = json.dumps(meta["alphabet"])
    if meta.get("class_names") is not None:
        props["class_names"] = json.dumps(list(meta["class_names"]))
    metrics = meta.get("metrics") or {}
    if metrics:
        props["metrics"] = json.dumps(metrics, default=str)
    if meta.get("quantization"):
        props["quantization"] = json.dumps(meta["quantization"])
    return props


def _torch_export(model, dummy, path: Path, opset: int) -> None:
    """Legacy TorchScript exporter: robust for these small CNN/GRU models, dynamic batch axis."""
    import torch

    with torch.no_grad():
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def _write_metadata(path: Path, meta: dict[str, Any]) -> None:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata_from_meta(meta).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "captchakit"
    proto.producer_version = captcha.__version__
    proto.doc_string = f"captchakit {meta['task']} model {meta['model']['name']} ({meta.get('head', 'fixed')} head)"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def _image_files(folder: Path) -> list[Path]:
    return list_images(folder)


def _class_tree_files(folder: Path, count: int) -> list[Path]:
    """Up to `count` images of an ImageFolder split (`folder/<class>/*`), taken round-robin over the
    classes so every class is checked, not just the first one alphabetically."""
    per_class = [
        list_images(sub, recursive=True)
        for sub in sorted(folder.iterdir()) if sub.is_dir() and not sub.name.startswith(".")
    ]
    out: list[Path] = []
    for row in range(max((len(files) for files in per_class), default=0)):
        out += [files[row] for files in per_class if row < len(files)]
        if len(out) >= count:
            break
    return out[:count]


def _mnist_images(root: Path, count: int, workdir: Path) -> list[Path]:
    """The first `count` MNIST test (else train) images written as PNGs, so they take the same
    decode + preprocess path as every served image."""
    from captcha.classify.data import first_mnist_images
    from captcha.imageio import write_image

    images = first_mnist_images(root, count)
    if images is None:
        return []
    workdir.mkdir(parents=True, exist_ok=True)
    paths = [workdir / f"mnist_{i:05d}.png" for i in range(len(images))]
    for path, image in zip(paths, images):
        write_image(path, image)
    return paths


def verification_images(meta: dict[str, Any], count: int, workdir: Path,
                        splits: tuple[str, ...] = ("test", "val", "train", "."), seed: int = VERIFY_SEED) -> list[Path]:
    """Up to `count` real images: the run's own data (the first of `splits` that has images), else
    freshly generated CAPTCHAs (drawn from `seed`).

    Recognition data is a flat folder of labelled files; classification data is an ImageFolder
    tree (`split/<class>/<image>`, images then taken from every class) or MNIST IDX files
    (written out as PNGs).
    """
    data = (meta.get("config") or {}).get("data")
    if data and Path(data).is_dir():
        root = Path(data)
        for sub in splits:
            folder = root / sub
            if folder.is_dir():
                files = _image_files(folder)
                if not files and meta["task"] == "classification":
                    files = _class_tree_files(folder, count)
                if files:
                    return files[:count]
        if meta["task"] == "classification":
            files = _mnist_images(root, count, workdir / "mnist")
            if files:
                return files
    if meta["task"] != "recognition":
        where = f"{data} holds no images" if data and Path(data).is_dir() else f"the run's data folder ({data}) is not there"
        raise ValueError(f"cannot verify the export: {where} and classifiers have no generator; --no-verify skips the check")
    from captcha.generate import GeneratorConfig, generate_dataset

    length = meta.get("length") or 4
    generate_dataset(
        workdir,
        GeneratorConfig(alphabet=meta["alphabet"], length=length, size=tuple(meta["input_size"]), splits={"test": count}, seed=seed),
    )
    return _image_files(workdir / "test")


def _model_inputs(meta: dict[str, Any], images: list[Path]) -> np.ndarray:
    """The images as the model reads them: preprocessed and normalised, float32 N x K x H x W."""
    from captcha.imageio import read_image
    from captcha.preprocess import get_preprocessor, normalize

    pre = get_preprocessor(meta["preprocess"])
    norm = meta["normalization"]
    size = tuple(meta["input_size"])
    return np.stack([normalize(pre(read_image(p), size), norm["mean"], norm["std"]) for p in images])


def _verify(path: Path, model, meta: dict[str, Any], images: list[Path]) -> tuple[float, int]:
    """Run torch and ONNX Runtime (CPU) on the same images; (max |logit diff|, images read alike)."""
    import onnxruntime as ort
    import torch

    from captcha.decoding import decode

    batch = _model_inputs(meta, images)
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).float().numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
    labels = meta["alphabet"] if meta["task"] == "recognition" else meta["class_names"]
    head = meta.get("head", "fixed")
    alike = sum(a.text == b.text for a, b in zip(decode(expected, labels, head), decode(got, labels, head)))
    return float(np.abs(expected - got).max()), alike


def export_onnx(
    run: str | Path,
    out: str | Path | None = None,
    verify_images: int | list[str | Path] = 32,
    opset: int = DEFAULT_OPSET,
    log=print,
    tta: int | None = None,
    quantize: str | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
    min_agreement: float = MIN_INT8_AGREEMENT,
) -> ExportResult:
    """Export `run` (a run directory or .pt) to ONNX and verify it against torch.

    `verify_images` is a number of images to take from the run's data (or to generate), an
    explicit list of image paths, or 0 to skip the check. `tta` overrides the run's number of
    test-time views in the graph (1: one view, five times less work per image). `quantize="int8"`
    writes the int8 form (default file RUN_DIR/model.int8.onnx), its ranges measured on
    `calibration_images` of the run's training images. Raises RuntimeError when ONNX Runtime and
    torch disagree on any predicted character (for int8: read fewer than `min_agreement` of the
    check's images alike).
    """
    import torch

    from captcha.checkpoint import load_model, resolve_checkpoint
    from captcha.tta import read_views

    _check_settings(out, verify_images, opset, quantize, calibration_images)
    checkpoint = resolve_checkpoint(run)
    model, meta = load_model(checkpoint, "cpu", channels_last=False)
    if tta is not None:
        read_views(model, tta)
        meta = {**meta, "tta": tta}
    out_path = Path(out) if out else checkpoint.parent / ("model.int8.onnx" if quantize else "model.onnx")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    h, w = meta["input_size"]
    dummy = torch.zeros(2, int(meta["channels"]), int(h), int(w))
    with torch.no_grad():
        output_shape = list(model(dummy).shape[1:])
    diff, agreeing, count = 0.0, 0, 0
    try:
        if quantize:
            meta = {**meta, "quantization": _quantize(model, dummy, meta, out_path, opset, calibration_images)}
        else:
            _torch_export(model, dummy, out_path, opset)
        _write_metadata(out_path, meta)
        if verify_images:
            diff, agreeing, count = _check(out_path, model, meta, verify_images, min_agreement if quantize else 1.0, log)
    except BaseException:
        out_path.unlink(missing_ok=True)  # an unverified file is not left where a server would pick it up
        raise
    return ExportResult(out_path, count, diff, agreeing == count, [int(x) for x in output_shape], agreeing, quantize)


def _check_settings(out, verify_images, opset: int, quantize: str | None, calibration_images: int) -> None:
    """Refuse settings no export can use, naming the flag."""
    try:  # torch's own range, from a private module: where a torch lacks it, torch checks the opset itself
        from torch.onnx._constants import ONNX_MIN_OPSET, ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    except ImportError:
        ONNX_MIN_OPSET, ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET = 1, 10**6
    if not ONNX_MIN_OPSET <= opset <= ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET:
        raise ValueError(f"--opset {opset}: this torch exports opsets {ONNX_MIN_OPSET} to {ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET}")
    if isinstance(verify_images, int) and verify_images < 0:
        raise ValueError(f"--verify-images must be 0 or more, not {verify_images}")
    if out is not None and Path(out).is_dir():
        raise ValueError(f"--out {out}: a folder; name the .onnx file to write (e.g. {Path(out) / 'model.onnx'})")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"--quantize takes {' or '.join(QUANTIZATIONS)}, not {quantize!r}")
    if quantize and calibration_images < 1:
        raise ValueError(f"--calibration-images must be at least 1, not {calibration_images}")


def _check(path: Path, model, meta: dict[str, Any], verify_images: int | list[str | Path], min_agreement: float, log) -> tuple[float, int, int]:
    """Verify the written file against torch on the run's images (or the given ones); raise when
    the two read fewer than `min_agreement` of them alike. Returns (max |logit diff|, alike, images)."""
    with tempfile.TemporaryDirectory() as tmp:
        images = [Path(p) for p in verify_images] if isinstance(verify_images, list) else verification_images(meta, int(verify_images), Path(tmp))
        diff, agreeing = _verify(path, model, meta, images)
    count = len(images)
    quantized = bool(meta.get("quantization"))
    kind = "ONNX Runtime (int8)" if quantized else "ONNX Runtime"
    said = "agree on every prediction" if agreeing == count else f"read {agreeing} of {count} images alike"
    log(f"Verified {path} on {count} images: {kind} and torch {said}; max abs logit difference {diff:.3g}")
    if agreeing < min_agreement * count:
        raise RuntimeError(f"{path}: {kind} and torch predict different text on {count - agreeing} of {count} images "
                           f"(max abs logit difference {diff:.3g})" + (f"; an int8 file must read at least {min_agreement:.0%} "
                           "of them alike: export the float model instead" if quantized else ""))
    return diff, agreeing, count


def _quantize(model, dummy, meta: dict[str, Any], out_path: Path, opset: int, calibration_images: int) -> dict[str, Any]:
    """Export the float model to a scratch file and write its int8 form to `out_path`; returns
    what the file's metadata says of the quantization."""
    from captcha.quantize import quantize_int8

    with tempfile.TemporaryDirectory() as tmp:
        float_path = Path(tmp) / "float.onnx"
        _torch_export(model, dummy, float_path, opset)
        images = verification_images(meta, calibration_images, Path(tmp) / "calibration", splits=("train", "val", "test", "."),
                                     seed=CALIBRATION_SEED)
        return quantize_int8(float_path, out_path, _model_inputs(meta, images), INPUT_NAME)


def _cmd_export(args: argparse.Namespace) -> int:
    count = 0 if args.no_verify else args.verify_images
    if args.format == "triton":
        from captcha.export_triton import export_triton

        written = export_triton(args.run, Path(args.out or "model_repository"), args.name, verify_images=count, opset=args.opset, tta=args.tta,
                                quantize=args.quantize, calibration_images=args.calibration_images)
        print(f"Wrote the Triton ensemble {written.ensemble} (BYTES \"image\" in; \"text\", \"confidence\", \"char_confidences\" out) "
              f"and its models {', '.join(p.name for p in written.models[1:])} (docs/triton.md)")
        return 0
    result = export_onnx(args.run, args.out, verify_images=count, opset=args.opset, tta=args.tta, quantize=args.quantize,
                         calibration_images=args.calibration_images)
    print(f"Wrote {result.path} (input {INPUT_NAME!r} float32 [B, ...], output {OUTPUT_NAME!r} {['B', *result.output_shape]}"
          f"{', int8 for the CPU provider' if result.quantization else ''})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `captcha export`."""
    from captcha.tta import TTA_VIEWS

    p = subparsers.add_parser("export", help="export a trained run to ONNX (or a Triton model repository)")
    p.add_argument("run", help="run directory or checkpoint")
    p.add_argument("--out", help="output .onnx file (default RUN_DIR/model.onnx); with --format triton, the repository folder (default model_repository)")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="onnx: one .onnx file; triton: a Triton model repository "
                   "whose ensemble takes encoded image bytes and returns text and confidences (docs/triton.md)")
    p.add_argument("--name", default="captcha", help="with --format triton, the ensemble's model name (its models are NAME_preprocess, NAME_onnx, NAME_postprocess)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--verify-images", type=int, default=32, help="images to check ONNX Runtime against torch on")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs torch check")
    p.add_argument("--tta", type=int, choices=sorted(TTA_VIEWS), help="test-time views in the graph (default: the run's, see "
                   "captcha train --tta); 1 does a fifth of the model work per image of 5")
    p.add_argument("--quantize", choices=QUANTIZATIONS, help="int8: the int8 form for serving on a CPU (default file "
                   "RUN_DIR/model.int8.onnx), calibrated on the run's training images; the check then reports how many readings "
                   "it shares with the float model (docs/serving.md)")
    p.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES, help="with --quantize, training images "
                   "the activation ranges are measured on (default %(default)s)")
    p.set_defaults(func=_cmd_export)
