"""Triton Python-backend model: encoded image bytes in, the ONNX model's float32 input out.

Copied by `captcha export RUN --format triton` into NAME_preprocess/1/model.py. Input "image"
(BYTES [N, 1], one encoded image per element); output the ONNX model's input tensor (FP32
[N, K, H, W]). Every image takes `captcha.imageio.decode_image`, the run's preprocessor and
`normalize`, as in training, `captcha predict` and `captcha serve`; the preprocessor, input size
and normalisation come from this model's config.pbtxt `parameters`.

Triton may hand `execute` several requests at once (dynamic batching); each is answered on its
own, so a request holding an unreadable image gets an INVALID_ARG error naming the image and the
reason while the other requests are answered as usual.
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from captcha.imageio import ImageDecodeError, decode_image
from captcha.preprocess import get_preprocessor, normalize
from serving.triton import IMAGE_INPUT, spec_from_config, triton_error


class TritonPythonModel:
    """Decode and preprocess each request's images into one float32 batch."""

    def initialize(self, args: dict[str, str]) -> None:
        self.spec = spec_from_config(json.loads(args["model_config"]))
        self.preprocessor = get_preprocessor(self.spec.preprocess)

    def execute(self, requests: list) -> list:
        return [self._answer(request) for request in requests]

    def _answer(self, request):
        images = pb_utils.get_input_tensor_by_name(request, IMAGE_INPUT)
        if images is None:
            return pb_utils.InferenceResponse(error=triton_error(pb_utils, f"no {IMAGE_INPUT!r} input in the request", "INVALID_ARG"))
        items = images.as_numpy().reshape(-1)
        h, w = self.spec.input_size
        batch = np.empty((len(items), self.spec.channels, h, w), dtype=np.float32)
        for index, item in enumerate(items):
            try:
                batch[index] = self._preprocess(item, f"image {index} of the request")
            except ImageDecodeError as exc:
                return pb_utils.InferenceResponse(error=triton_error(pb_utils, str(exc), "INVALID_ARG"))
            except Exception as exc:  # noqa: BLE001 - any other failure stays this request's error
                message = f"image {index} of the request: could not be preprocessed ({type(exc).__name__}: {exc})"
                return pb_utils.InferenceResponse(error=triton_error(pb_utils, message, "INVALID_ARG"))
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.spec.input_name, batch)])

    def _preprocess(self, item, source: str) -> np.ndarray:
        """One encoded image (bytes, as Triton hands BYTES elements) -> normalised K x H x W."""
        data = item if isinstance(item, bytes) else bytes(item)
        image = self.preprocessor(decode_image(data, source), self.spec.input_size)
        return normalize(image, self.spec.mean, self.spec.std)

    def finalize(self) -> None:
        """Nothing to release: the model holds no files or sessions."""
