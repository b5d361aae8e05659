# syntax=docker/dockerfile:1.7
#
# Two final targets:
#   docker build --target gateway -t liveportrait-gateway .   (python:3.11-slim, no torch)
#   docker build --target worker  -t liveportrait-worker  .   (CUDA base, torch with CUDA, TensorRT)
#
# The worker's base is NVIDIA's `base` flavour (driver compatibility settings and cudart only): the torch
# and TensorRT wheels carry their own CUDA user-space libraries, so a `runtime` or `cudnn` flavour would
# ship them twice. TORCH_INDEX_URL and CUDA_IMAGE go together (cu130 wheels need a CUDA 13 driver, >= 580);
# a CPU-only worker: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu --build-arg WORKER_EXTRAS=worker

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.9.26

FROM ${UV_IMAGE} AS uv

# ---------------------------------------------------------------------------------------------------------
# gateway: FastAPI + RQ client + boto3; the service package never imports torch.
FROM ${PYTHON_IMAGE} AS gateway-build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml ./
COPY common ./common
COPY liveportrait ./liveportrait
COPY service ./service
COPY engines ./engines
COPY worker ./worker
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install ".[gateway]"

FROM ${PYTHON_IMAGE} AS gateway
LABEL org.opencontainers.image.title="liveportrait-gateway" \
      org.opencontainers.image.description="LivePortrait animation service: REST gateway" \
      org.opencontainers.image.licenses="MIT"
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 liveportrait \
    && useradd --system --uid 10001 --gid liveportrait --create-home --home-dir /home/liveportrait \
       --shell /usr/sbin/nologin liveportrait
COPY --from=gateway-build /opt/venv /opt/venv
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/liveportrait-healthcheck
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LIVEPORTRAIT_HOST=0.0.0.0 \
    LIVEPORTRAIT_PORT=8000
USER 10001:10001
WORKDIR /home/liveportrait
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["liveportrait-healthcheck", "gateway"]
ENTRYPOINT ["tini", "--"]
CMD ["liveportrait", "gateway"]

# ---------------------------------------------------------------------------------------------------------
# worker: torch (CUDA build from the PyTorch index that matches CUDA_IMAGE), onnxruntime, TensorRT,
# PyAV (bundles its own FFmpeg libraries) and opencv-python-headless. Python 3.11 is a standalone build
# installed by uv, as the Ubuntu base ships another version.
FROM ${CUDA_IMAGE} AS worker-build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
ARG WORKER_EXTRAS=worker,tensorrt
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN uv python install 3.11 \
    && uv venv --seed --python 3.11 /opt/venv
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml ./
COPY common ./common
COPY liveportrait ./liveportrait
COPY service ./service
COPY engines ./engines
COPY worker ./worker
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install ".[${WORKER_EXTRAS}]" \
    && /opt/venv/bin/python -c "import torch, av, cv2, onnxruntime; print('torch', torch.__version__)"

FROM ${CUDA_IMAGE} AS worker
LABEL org.opencontainers.image.title="liveportrait-worker" \
      org.opencontainers.image.description="LivePortrait animation service: GPU worker (one process per GPU)" \
      org.opencontainers.image.licenses="MIT"
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 liveportrait \
    && useradd --system --uid 10001 --gid liveportrait --create-home --home-dir /home/liveportrait \
       --shell /usr/sbin/nologin liveportrait \
    && mkdir -p /weights /var/cache/liveportrait/engines \
    && chown 10001:10001 /weights /var/cache/liveportrait/engines
COPY --from=worker-build /opt/python /opt/python
COPY --from=worker-build /opt/venv /opt/venv
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/liveportrait-healthcheck
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LIVEPORTRAIT_WEIGHTS_DIR=/weights \
    LIVEPORTRAIT_ENGINE_CACHE_DIR=/var/cache/liveportrait/engines
VOLUME ["/weights", "/var/cache/liveportrait/engines"]
USER 10001:10001
WORKDIR /home/liveportrait
# Loading the engines (and building TensorRT engines on a cold cache) happens before the worker registers.
HEALTHCHECK --interval=30s --timeout=10s --start-period=15m --retries=3 \
    CMD ["liveportrait-healthcheck", "worker"]
ENTRYPOINT ["tini", "--"]
CMD ["liveportrait", "worker"]
