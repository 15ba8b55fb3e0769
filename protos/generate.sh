#!/usr/bin/env sh
# Regenerate serving/_proto/ from protos/ with the pinned grpcio-tools (serving/gen_protos.py's
# GRPCIO_TOOLS), installed into a throwaway virtual environment; needs PyPI and a Python that
# grpcio-tools 1.64 has wheels for (3.8 to 3.12): PYTHON=python3.12 protos/generate.sh
set -eu
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
venv="$(mktemp -d)"
trap 'rm -rf "$venv"' EXIT
"$python" -m venv "$venv"
tools="$(PYTHONPATH=. "$python" -c 'from serving.gen_protos import GRPCIO_TOOLS; print(GRPCIO_TOOLS)')"
"$venv/bin/python" -m pip install -q --only-binary=:all: "$tools"
"$venv/bin/python" -m serving.gen_protos "$@"
