# Two final targets (BuildKit: Docker >= 20.10, the default builder since 23.0), both on the Python base:
#   docker build --target gateway -t liveportrait-gateway .      no torch
#   docker build --target worker  -t liveportrait-worker .       torch 2.13.0+cu130 and TensorRT (GPU)
#   docker build --target worker  -t liveportrait-worker-cpu \
#       --build-arg TORCH_VARIANT=cpu --build-arg WORKER_EXTRAS=worker .   torch 2.13.0+cpu
#
# PYTHON_IMAGE is a build argument whose default is the public image; deploy/smoke.sh passes a local stand-in
# where no registry is reachable. The GPU worker needs no CUDA base image: PyTorch's CUDA wheels and
# TensorRT's bring the CUDA user-space libraries (runtime, cuBLAS, cuDNN, ...) as wheels, and the NVIDIA
# Container Toolkit mounts the driver from the host. TORCH_VARIANT picks torch's build: cu130 needs a driver
# >= 580 (CUDA 13); docs/deploy.md lists the others.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG TORCH_VERSION=2.13.0
# The service user of every image: numeric, so Kubernetes can check runAsNonRoot (deploy/base).
ARG APP_UID=10001

# ---------------------------------------------------------------------------------------------------------
# Sources. The gateway installs only common, service and liveportrait: it never imports the engines or the
# worker (tests/test_architecture.py), and has no torch.
FROM scratch AS gateway-source
COPY pyproject.toml /src/
COPY common /src/common
COPY liveportrait /src/liveportrait
COPY service /src/service

FROM gateway-source AS worker-source
COPY engines /src/engines
COPY worker /src/worker

# ---------------------------------------------------------------------------------------------------------
# Builds: a virtual environment in /opt/venv, copied whole into the image.
FROM ${PYTHON_IMAGE} AS venv
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src

FROM venv AS gateway-build
COPY --from=gateway-source /src ./
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install ".[gateway]" \
    && /opt/venv/bin/python -c "import importlib.util as u; assert u.find_spec('torch') is None" \
    && /opt/venv/bin/pip uninstall --yes pip setuptools

# torch first, from the index of its build (TORCH_VARIANT: cu130, cu128, cu126 or cpu; TORCH_INDEX_URL may
# name any index that holds torch==TORCH_VERSION and its dependencies: deploy/smoke.sh serves a local
# wheelhouse on the build host's loopback, built with --network host), then the worker's packages. A CPU
# variant must get a torch without CUDA, a CUDA variant one with it.
FROM venv AS worker-build
ARG TORCH_VERSION
ARG TORCH_VARIANT=cu130
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
ARG WORKER_EXTRAS=worker,tensorrt
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY --from=worker-source /src ./
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install ".[${WORKER_EXTRAS}]" \
    && /opt/venv/bin/python -c "import torch, av, cv2, onnxruntime; \
assert (torch.version.cuda is None) == ('${TORCH_VARIANT}' == 'cpu'), torch.__version__; print('torch', torch.__version__)"

# ---------------------------------------------------------------------------------------------------------
# What both images run on: the service user, tini as PID 1, the health probe.
FROM ${PYTHON_IMAGE} AS runtime
ARG APP_UID
LABEL org.opencontainers.image.licenses="MIT"
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid "${APP_UID}" liveportrait \
    && useradd --system --uid "${APP_UID}" --gid liveportrait --create-home --home-dir /home/liveportrait \
       --shell /usr/sbin/nologin liveportrait
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/liveportrait-healthcheck
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /home/liveportrait
ENTRYPOINT ["tini", "--"]

# ---------------------------------------------------------------------------------------------------------
# gateway: FastAPI + RQ client + boto3.
FROM runtime AS gateway
ARG APP_UID
LABEL org.opencontainers.image.title="liveportrait-gateway" \
      org.opencontainers.image.description="LivePortrait animation service: REST gateway"
COPY --from=gateway-build /opt/venv /opt/venv
ENV LIVEPORTRAIT_HOST=0.0.0.0 \
    LIVEPORTRAIT_PORT=8000
USER ${APP_UID}:${APP_UID}
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["liveportrait-healthcheck", "gateway"]
CMD ["liveportrait", "gateway"]

# ---------------------------------------------------------------------------------------------------------
# worker: one process per GPU (or on the CPU with TORCH_VARIANT=cpu): torch, onnxruntime, TensorRT (the
# tensorrt extra), PyAV (bundles its own FFmpeg libraries) and opencv-python-headless. The device is
# LIVEPORTRAIT_DEVICE (auto: CUDA when torch sees a GPU).
FROM runtime AS worker
ARG APP_UID
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
LABEL org.opencontainers.image.title="liveportrait-worker" \
      org.opencontainers.image.description="LivePortrait animation service: worker (one process per GPU)"
# jemalloc as the allocator (LD_PRELOAD below): a worker's RSS stays flat over long jobs
# (docs/benchmarks.md, "Memory"); /usr/local/lib/libjemalloc.so.2 is the same path on every architecture.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates libjemalloc2 \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s "$(dpkg -L libjemalloc2 | grep '/libjemalloc\.so\.2$')" /usr/local/lib/libjemalloc.so.2 \
    && install -d -o "${APP_UID}" -g "${APP_UID}" /weights /var/cache/liveportrait/engines
COPY --from=worker-build /opt/venv /opt/venv
# NVIDIA_DRIVER_CAPABILITIES: what the NVIDIA Container Toolkit mounts from the host driver (CUDA and
# nvidia-smi), as NVIDIA's CUDA images set it.
ENV LD_PRELOAD=/usr/local/lib/libjemalloc.so.2 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LIVEPORTRAIT_WEIGHTS_DIR=/weights \
    LIVEPORTRAIT_ENGINE_CACHE_DIR=/var/cache/liveportrait/engines
VOLUME ["/weights", "/var/cache/liveportrait/engines"]
USER ${APP_UID}:${APP_UID}
# Loading the engines (and building TensorRT engines on a cold cache) happens before the worker registers.
HEALTHCHECK --interval=30s --timeout=10s --start-period=15m --retries=3 \
    CMD ["liveportrait-healthcheck", "worker"]
CMD ["liveportrait", "worker"]
