#!/usr/bin/env sh
# Regenerate serving/_proto/ from protos/ (needs grpcio-tools).
set -eu
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m serving.gen_protos "$@"
