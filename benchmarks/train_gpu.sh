#!/usr/bin/env bash
# Issue #36's table on the GPU benchmark machine (one NVIDIA H200; /work/shared/docs/gpu.md): the
# naive loop, the course recipe (resnet18_mod, denoise, 25 epochs) and the default recipe, two
# interleaved rounds, then the operators and host synchronisations in one training step with
# CUDA's own events. Targets: default recipe at most 15 s of training, course recipe at most 5 s,
# at least 4x faster than the naive loop. Bounded to 290 s; the tables come last.
#
#   bash benchmarks/train_gpu.sh                                  # on the GPU machine, from the repository root
#   bash benchmarks/train_gpu.sh --device cpu --epochs 1 --repeat 1   # a check on any CPU
#
# Arguments go to benchmarks/train_speed.py and override its settings here. The machine has every
# package training needs (torch, torchvision, opencv, ...); the built-in generated set is drawn
# there on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DEVICE=cuda
for ((i = 1; i <= $#; i++)); do
  if [[ "${!i}" == "--device" ]]; then j=$((i + 1)); DEVICE="${!j}"; fi
done
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
timeout 60 "$PYTHON" benchmarks/step_profile.py --device "$DEVICE" --batch-size 64 --ema 0.999
exec timeout 230 "$PYTHON" benchmarks/train_speed.py --device cuda --rows naive course default --repeat 2 "$@"
