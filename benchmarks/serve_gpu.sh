#!/usr/bin/env bash
# The serving table of issue #37 on the GPU benchmark machine (one NVIDIA H200, 16 CPU cores):
# `captcha serve --processes 1, 8, 16`, with the CUDA provider and with the CPU provider, driven by
# 4 load-generating processes: unary, batch and stream calls at concurrency 64, images/s and
# p50/p99, plus the in-process ONNX Runtime ceilings (model alone at several batch sizes, to choose
# --max-batch on the GPU). The model is the default recipe trained briefly there, exported with one
# test-time view (--tta 1). Goals: 20,000 images/s with the batch or stream API, 10,000 with unary
# calls, unary p99 under 20 ms. Bounded to 290 s; the table comes last.
#
#   bash benchmarks/serve_gpu.sh                        # on the GPU machine, from the repository root
#   bash benchmarks/serve_gpu.sh --device cpu --processes 1 2 --seconds 0.5 --images 32   # a check on any CPU
#
# Arguments after the script's name go to benchmarks/serve_bench.py and override its settings here.
# Packages the GPU machine lacks (docs in /work/shared/docs/gpu.md): grpcio, grpcio-health-checking,
# grpcio-reflection and protobuf as cp312 wheels in an ignored .whl/ folder (installed here first),
# and onnxruntime-gpu installed with `pip install --target $ORT_GPU_DIR` (default /tmp/ortgpu),
# which goes first on PYTHONPATH (the machine's own onnxruntime is the CPU build).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
ORT_GPU_DIR=${ORT_GPU_DIR:-/tmp/ortgpu}
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps .whl/*.whl
fi
export PYTHONPATH="$PWD${ORT_GPU_DIR:+:$ORT_GPU_DIR}${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c "import onnxruntime as ort, grpc; print('onnxruntime', ort.__version__, ort.get_available_providers(), '| grpcio', grpc.__version__)"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
exec timeout 290 "$PYTHON" benchmarks/serve_bench.py --no-ddddocr --device cuda cpu --processes 1 8 16 --clients 4 \
  --concurrency 64 --modes unary batch stream --seconds 3 --images 512 --tta 1 --ceiling-batches 32 64 128 256 "$@"
