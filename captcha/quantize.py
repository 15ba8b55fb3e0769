"""int8 ONNX models for serving on a CPU: ONNX Runtime's static quantization, calibrated on the
run's own images.

    quantize_int8(Path("model.float.onnx"), Path("model.int8.onnx"), calibration)  # N x K x H x W float32

Weights become int8 (one scale per output channel) and activations uint8, with ranges measured
by running `calibration` (normalised images, as the server feeds them) through the float model.
The file keeps ONNX's QDQ form (QuantizeLinear / DequantizeLinear pairs around each operator), so
it stays a plain ONNX model with the same float32 input and output: ONNX Runtime's CPU provider
fuses the pairs into integer kernels when it loads it, and a server, a client and `captcha.tta`
views see no difference but speed and a small change in some readings (`captcha export`
reports how many readings change). The GPU providers run such a file no faster; serve the float
export there.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

INT8 = "int8"
QUANTIZATIONS = (INT8,)
CALIBRATION_BATCH = 32  # images a calibration run reads at once


def quantize_int8(src: Path, out: Path, calibration: np.ndarray, input_name: str = "images") -> dict:
    """Write `out`, the int8 form of the float ONNX model `src`, its activation ranges measured on
    `calibration` (float32 N x K x H x W, normalised as the model reads). Metadata is not copied;
    returns what the file's metadata should say of the quantization."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration.ndim != 4 or not len(calibration):
        raise ValueError(f"calibration takes a batch of images N x K x H x W, not an array of shape {calibration.shape}")

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration[i : i + CALIBRATION_BATCH] for i in range(0, len(calibration), CALIBRATION_BATCH))

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared))  # shapes inferred and graph folded, as ONNX Runtime advises before quantizing
        quantize_static(str(prepared), str(out), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return {"type": INT8, "format": "QDQ", "weights": "int8 per channel", "activations": "uint8", "calibration_images": len(calibration)}
