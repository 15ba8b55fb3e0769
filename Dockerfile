# GPU serving image for captchakit: `captcha serve` on ONNX Runtime (CUDA, falls back to CPU).
#   docker build -t captchakit-serve .
#   docker run --gpus all -p 50051:50051 -p 9090:9090 -v $PWD/models:/models:ro \
#       -e CAPTCHA_TOKEN=change-me captchakit-serve /models/captcha.onnx --metrics-port 9090
# The serving set only (requirements/serve.txt: no PyTorch), see docs/install.md. A plain base: the
# CUDA and cuDNN libraries come with onnxruntime-gpu's [cuda,cudnn] wheels, which it loads through
# onnxruntime.preload_dlls, so they always match the ONNX Runtime that pip picks; `docker run
# --gpus all` (NVIDIA Container Toolkit) adds the driver.
FROM ubuntu:24.04

ENV DEBIAN_FRONTEND=noninteractive \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

WORKDIR /src
# Dependencies first, in their own layer: a code change does not reinstall them. A CPU-only image
# leaves out the CUDA and cuDNN wheels: --build-arg CUDA_WHEELS=
ARG CUDA_WHEELS=[cuda,cudnn]
COPY requirements/serve.txt ./requirements/
RUN pip install -r requirements/serve.txt "onnxruntime-gpu${CUDA_WHEELS}; platform_machine == 'x86_64'"
COPY pyproject.toml README.md ./
COPY captcha ./captcha
COPY serving ./serving
COPY protos ./protos
# The project itself without its training dependencies (torch, torchvision, onnx, ...); then the
# serving modules must import (stubs, protobuf and gRPC agree) or the build stops here.
RUN pip install --no-deps . && rm -rf /src \
 && cd / && python -c "import serving.server, serving.health_probe"

RUN useradd --create-home --uid 10001 captcha
USER captcha
WORKDIR /home/captcha

EXPOSE 50051 9090
# Plaintext by default; a TLS server: -e CAPTCHA_HEALTH_TLS_CA=... [-e CAPTCHA_HEALTH_TLS_NAME=...]
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "serving.health_probe", "--address", "127.0.0.1:50051"]
ENTRYPOINT ["captcha", "serve", "--host", "0.0.0.0", "--port", "50051"]
CMD ["/models/model.onnx"]
