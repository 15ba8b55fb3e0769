"""Triton Inference Server models that serve an exported captchakit model from image bytes.

`captcha export RUN --format triton` (`captcha.export_triton`) writes a Triton model repository
whose ensemble chains three models: a Python-backend preprocess model (`preprocess_model.py`:
encoded image bytes in, the ONNX model's normalised float32 input out), the ONNX model itself,
and a Python-backend postprocess model (`postprocess_model.py`: logits in, text and confidences
out). Their sources are copied into the repository as `1/model.py`; inside Triton they import
`triton_python_backend_utils`, this module, `serving.model` and the training code's own
`captcha.imageio`, `captcha.preprocess` and `captcha.decoding` (none of which imports torch), so
Triton reads an image exactly as `captcha predict` and `captcha serve` do.

This module holds what both sides share: the tensor names of the ensemble, the padding of
`char_confidences`, how a model's facts are read back from its config.pbtxt `parameters` (the
ONNX file's metadata_props, copied verbatim at export), and the output arrays. It needs neither
Triton nor torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from captcha.decoding import Prediction
from serving.model import ModelSpec

IMAGE_INPUT = "image"  # BYTES [N, 1]: one encoded image (PNG, JPEG, GIF, ...) per element
TEXT_OUTPUT = "text"  # BYTES [N, 1]: the UTF-8 text, or the class name of a classifier
CONFIDENCE_OUTPUT = "confidence"  # FP32 [N, 1]: probability that the whole text is right
CHAR_CONFIDENCES_OUTPUT = "char_confidences"  # FP32 [N, W]: one per character, then padding
# Value of the `char_confidences` entries past the end of the text: W is the model's number of
# output positions (its length, a CTC head's time steps, 1 for a classifier), and a CTC reading
# can be shorter; no probability is negative, so a client keeps the entries >= 0.
CHAR_CONFIDENCE_PAD = -1.0


def spec_from_config(model_config: dict[str, Any]) -> ModelSpec:
    """The model's facts from a Triton model config (the JSON `args['model_config']` Triton
    hands `initialize`): its `parameters` hold the ONNX metadata_props, read as the server reads them."""
    parameters = model_config.get("parameters") or {}
    props = {key: value.get("string_value", "") for key, value in parameters.items()}
    return ModelSpec.from_props(props, f"{model_config.get('name', 'model')}/config.pbtxt parameters")


def output_arrays(predictions: list[Prediction], width: int) -> dict[str, np.ndarray]:
    """The ensemble's outputs for a batch of decoded predictions, keyed by tensor name."""
    text = np.array([[p.text.encode("utf-8")] for p in predictions], dtype=np.object_).reshape(len(predictions), 1)
    confidence = np.array([[p.confidence] for p in predictions], dtype=np.float32).reshape(len(predictions), 1)
    chars = np.full((len(predictions), width), CHAR_CONFIDENCE_PAD, dtype=np.float32)
    for row, prediction in zip(chars, predictions):
        row[: len(prediction.char_confidences)] = prediction.char_confidences
    return {TEXT_OUTPUT: text, CONFIDENCE_OUTPUT: confidence, CHAR_CONFIDENCES_OUTPUT: chars}


def triton_error(pb_utils, message: str, code: str):
    """A `pb_utils.TritonError` with the named code (e.g. "INVALID_ARG"); Triton releases before
    23.09 take a message only, and then report the error as INTERNAL."""
    value = getattr(pb_utils.TritonError, code, None)
    return pb_utils.TritonError(message) if value is None else pb_utils.TritonError(message, value)
