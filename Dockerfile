# Three final targets (BuildKit: Docker >= 20.10, the default builder since 23.0):
#   docker build --target gateway    -t liveportrait-gateway .     python:3.11-slim, no torch
#   docker build --target worker     -t liveportrait-worker .      CUDA 13.0 base, torch 2.13.0+cu130, TensorRT
#   docker build --target worker-cpu -t liveportrait-worker-cpu .  python:3.11-slim, torch 2.13.0+cpu
#
# Base images are build arguments whose defaults are the public images; deploy/smoke.sh passes local
# stand-ins where no registry is reachable. The GPU worker's base is NVIDIA's `base` flavour (driver
# compatibility settings and cudart only): the torch and TensorRT wheels carry their own CUDA user-space
# libraries, so a `runtime` or `cudnn` flavour would ship them twice. TORCH_INDEX_URL and CUDA_IMAGE go
# together (cu130 wheels need a CUDA 13 driver, >= 580; docs/deploy.md lists the other pairs).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.9.26
ARG TORCH_VERSION=2.13.0
# The service user of every image: numeric, so Kubernetes can check runAsNonRoot (deploy/base).
ARG APP_UID=10001

FROM ${UV_IMAGE} AS uv

# ---------------------------------------------------------------------------------------------------------
# gateway: FastAPI + RQ client + boto3. Only common, service and liveportrait are installed: the gateway
# never imports the engines or the worker (tests/test_architecture.py), and has no torch.
FROM ${PYTHON_IMAGE} AS gateway-build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml ./
COPY common ./common
COPY liveportrait ./liveportrait
COPY service ./service
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install ".[gateway]" \
    && /opt/venv/bin/python -c "import importlib.util as u; assert u.find_spec('torch') is None" \
    && /opt/venv/bin/pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE} AS gateway
ARG APP_UID
LABEL org.opencontainers.image.title="liveportrait-gateway" \
      org.opencontainers.image.description="LivePortrait animation service: REST gateway" \
      org.opencontainers.image.licenses="MIT"
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid "${APP_UID}" liveportrait \
    && useradd --system --uid "${APP_UID}" --gid liveportrait --create-home --home-dir /home/liveportrait \
       --shell /usr/sbin/nologin liveportrait
COPY --from=gateway-build /opt/venv /opt/venv
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/liveportrait-healthcheck
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LIVEPORTRAIT_HOST=0.0.0.0 \
    LIVEPORTRAIT_PORT=8000
USER ${APP_UID}:${APP_UID}
WORKDIR /home/liveportrait
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["liveportrait-healthcheck", "gateway"]
ENTRYPOINT ["tini", "--"]
CMD ["liveportrait", "gateway"]

# ---------------------------------------------------------------------------------------------------------
# worker (GPU): torch from the PyTorch index that matches CUDA_IMAGE, onnxruntime, TensorRT, PyAV (bundles
# its own FFmpeg libraries) and opencv-python-headless. Python 3.11 is a standalone build installed by uv,
# as the Ubuntu base ships another version.
FROM ${CUDA_IMAGE} AS worker-build
ARG TORCH_VERSION
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
ARG APP_UID
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
LABEL org.opencontainers.image.title="liveportrait-worker" \
      org.opencontainers.image.description="LivePortrait animation service: GPU worker (one process per GPU)" \
      org.opencontainers.image.licenses="MIT"
# jemalloc as the allocator (LD_PRELOAD below): a worker's RSS stays flat over long jobs
# (docs/benchmarks.md, "Memory"); /usr/local/lib/libjemalloc.so.2 is the same path on every architecture.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       ca-certificates tini libjemalloc2 \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s "$(dpkg -L libjemalloc2 | grep '/libjemalloc\.so\.2$')" /usr/local/lib/libjemalloc.so.2 \
    && groupadd --system --gid "${APP_UID}" liveportrait \
    && useradd --system --uid "${APP_UID}" --gid liveportrait --create-home --home-dir /home/liveportrait \
       --shell /usr/sbin/nologin liveportrait \
    && install -d -o "${APP_UID}" -g "${APP_UID}" /weights /var/cache/liveportrait/engines
COPY --from=worker-build /opt/python /opt/python
COPY --from=worker-build /opt/venv /opt/venv
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/liveportrait-healthcheck
ENV PATH=/opt/venv/bin:${PATH} \
    LD_PRELOAD=/usr/local/lib/libjemalloc.so.2 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LIVEPORTRAIT_WEIGHTS_DIR=/weights \
    LIVEPORTRAIT_ENGINE_CACHE_DIR=/var/cache/liveportrait/engines
VOLUME ["/weights", "/var/cache/liveportrait/engines"]
USER ${APP_UID}:${APP_UID}
WORKDIR /home/liveportrait
# Loading the engines (and building TensorRT engines on a cold cache) happens before the worker registers.
HEALTHCHECK --interval=30s --timeout=10s --start-period=15m --retries=3 \
    CMD ["liveportrait-healthcheck", "worker"]
ENTRYPOINT ["tini", "--"]
CMD ["liveportrait", "worker"]

# ---------------------------------------------------------------------------------------------------------
# worker-cpu: the same worker on the Python base, with PyTorch's CPU build (no CUDA libraries) and no
# TensorRT. TORCH_INDEX_URL may name any index that holds torch==TORCH_VERSION and its dependencies
# (deploy/smoke.sh serves a local wheelhouse on the build host's loopback: build with --network host).
FROM ${PYTHON_IMAGE} AS worker-cpu-build
ARG TORCH_VERSION
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
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
    /opt/venv/bin/pip install ".[worker]" \
    && /opt/venv/bin/python -c "import torch, av, cv2, onnxruntime; assert torch.version.cuda is None; print('torch', torch.__version__)"

FROM ${PYTHON_IMAGE} AS worker-cpu
ARG APP_UID
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
LABEL org.opencontainers.image.title="liveportrait-worker-cpu" \
      org.opencontainers.image.description="LivePortrait animation service: CPU worker" \
      org.opencontainers.image.licenses="MIT"
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tini libjemalloc2 \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s "$(dpkg -L libjemalloc2 | grep '/libjemalloc\.so\.2$')" /usr/local/lib/libjemalloc.so.2 \
    && groupadd --system --gid "${APP_UID}" liveportrait \
    && useradd --system --uid "${APP_UID}" --gid liveportrait --create-home --home-dir /home/liveportrait \
       --shell /usr/sbin/nologin liveportrait \
    && install -d -o "${APP_UID}" -g "${APP_UID}" /weights /var/cache/liveportrait/engines
COPY --from=worker-cpu-build /opt/venv /opt/venv
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/liveportrait-healthcheck
ENV PATH=/opt/venv/bin:${PATH} \
    LD_PRELOAD=/usr/local/lib/libjemalloc.so.2 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LIVEPORTRAIT_DEVICE=cpu \
    LIVEPORTRAIT_WEIGHTS_DIR=/weights \
    LIVEPORTRAIT_ENGINE_CACHE_DIR=/var/cache/liveportrait/engines
VOLUME ["/weights", "/var/cache/liveportrait/engines"]
USER ${APP_UID}:${APP_UID}
WORKDIR /home/liveportrait
HEALTHCHECK --interval=30s --timeout=10s --start-period=5m --retries=3 \
    CMD ["liveportrait-healthcheck", "worker"]
ENTRYPOINT ["tini", "--"]
CMD ["liveportrait", "worker"]
