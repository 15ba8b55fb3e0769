"""Triton Python-backend model: logits in, text and confidences out.

Copied by `captcha export RUN --format triton` into NAME_postprocess/1/model.py. Input the ONNX
model's logits (FP32 [N, W, C]); outputs "text" (BYTES [N, 1]), "confidence" (FP32 [N, 1]) and
"char_confidences" (FP32 [N, W], padded with `serving.triton.CHAR_CONFIDENCE_PAD` past the end
of the text). Decoding is `captcha.decoding.decode` with the alphabet (or class names), head and
label smoothing from this model's config.pbtxt `parameters`: the same call `captcha predict` and
`captcha serve` make, so a classifier answers with its class name and probability.
"""

from __future__ import annotations

import json

import triton_python_backend_utils as pb_utils

from captcha.decoding import decode
from serving.triton import output_arrays, spec_from_config, triton_error


class TritonPythonModel:
    """Decode each request's logits into text and confidences."""

    def initialize(self, args: dict[str, str]) -> None:
        self.spec = spec_from_config(json.loads(args["model_config"]))

    def execute(self, requests: list) -> list:
        return [self._answer(request) for request in requests]

    def _answer(self, request):
        logits = pb_utils.get_input_tensor_by_name(request, self.spec.output_name)
        if logits is None:
            return pb_utils.InferenceResponse(error=triton_error(pb_utils, f"no {self.spec.output_name!r} input in the request", "INVALID_ARG"))
        try:
            values = logits.as_numpy()
            predictions = decode(values, self.spec.labels, self.spec.head, self.spec.label_smoothing)
            arrays = output_arrays(predictions, values.shape[1])
        except Exception as exc:  # noqa: BLE001 - a request that cannot be decoded fails alone
            return pb_utils.InferenceResponse(error=triton_error(pb_utils, f"could not decode the logits ({type(exc).__name__}: {exc})", "INTERNAL"))
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, array) for name, array in arrays.items()])

    def finalize(self) -> None:
        """Nothing to release: the model holds no files or sessions."""
