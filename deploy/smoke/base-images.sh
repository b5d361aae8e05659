#!/usr/bin/env bash
# The images the smoke run needs besides our own: the Python base of our Dockerfile and the Redis, S3
# and load-balancer images of docker-compose.yml. Each public image is used when it is present or can
# be pulled; otherwise (no registry reachable) a local stand-in is built from
# deploy/smoke/standins.Dockerfile on a Debian bookworm rootfs made with debootstrap (root needed).
# Stand-ins already built are reused. Prints the choice as shell assignments for deploy/smoke.sh:
#
#   PYTHON_IMAGE=...  LIVEPORTRAIT_REDIS_IMAGE=...  LIVEPORTRAIT_S3_IMAGE=...  LIVEPORTRAIT_LB_IMAGE=...
#
# Environment: DOCKER (client, default docker), LIVEPORTRAIT_SMOKE_STANDINS=1 (skip the pulls),
# DEBIAN_MIRROR (default http://deb.debian.org/debian), ROOTFS_DIR (debootstrap target, default under
# /var/tmp). Progress goes to stderr.
set -euo pipefail
shopt -s inherit_errexit

DOCKER=${DOCKER:-docker}
HERE=$(cd "$(dirname "$0")" && pwd)
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOTFS_DIR=${ROOTFS_DIR:-/var/tmp/liveportrait-smoke-rootfs}
LOCAL=liveportrait-local
DEBIAN_IMAGE=$LOCAL/debian:bookworm

# variable, public image (the default of the Dockerfile or compose file), stand-in target
IMAGES=(
  "PYTHON_IMAGE python:3.11-slim-bookworm python"
  "LIVEPORTRAIT_REDIS_IMAGE redis:8.2-alpine redis"
  "LIVEPORTRAIT_S3_IMAGE chrislusf/seaweedfs:3.99 seaweedfs"
  "LIVEPORTRAIT_LB_IMAGE nginx:1.28-alpine nginx"
)

log() { echo "base-images: $*" >&2; }

present() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

pullable() {
  [[ ${LIVEPORTRAIT_SMOKE_STANDINS:-0} != 1 ]] && timeout 120 "$DOCKER" pull -q "$1" >/dev/null 2>&1
}

debian_image() {
  present "$DEBIAN_IMAGE" && return
  command -v debootstrap >/dev/null || { log "debootstrap is needed (apt-get install debootstrap)"; exit 1; }
  log "debootstrap bookworm into $ROOTFS_DIR"
  rm -rf "$ROOTFS_DIR"
  debootstrap --variant=minbase bookworm "$ROOTFS_DIR" "$DEBIAN_MIRROR" >&2
  # The host's own CAs (a TLS-inspecting proxy's, say) join the bundle where ca-certificates is installed.
  mkdir -p "$ROOTFS_DIR/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$ROOTFS_DIR/usr/local/share/ca-certificates/" 2>/dev/null || true
  # As Debian's slim images: no package cache, no translations, no docs, man pages or locales.
  cat >"$ROOTFS_DIR/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
APT
  printf 'path-exclude %s\n' '/usr/share/doc/*' '/usr/share/man/*' '/usr/share/locale/*' '/usr/share/info/*' \
    >"$ROOTFS_DIR/etc/dpkg/dpkg.cfg.d/docker"
  rm -rf "$ROOTFS_DIR"/var/cache/apt/*.bin "$ROOTFS_DIR"/var/cache/apt/archives/*.deb \
    "$ROOTFS_DIR"/var/lib/apt/lists/* "$ROOTFS_DIR"/usr/share/{doc,man,locale,info}/*
  tar -C "$ROOTFS_DIR" -c . | "$DOCKER" import -c 'CMD ["bash"]' - "$DEBIAN_IMAGE" >&2
  rm -rf "$ROOTFS_DIR"
}

standin() {
  local target=$1 image=$LOCAL/$1:bookworm
  if ! present "$image"; then
    debian_image
    log "building stand-in $image"
    DOCKER_BUILDKIT=1 "$DOCKER" build --network host --target "$target" \
      --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" -t "$image" -f "$HERE/standins.Dockerfile" "$HERE" >&2
  fi
  echo "$image"
}

for entry in "${IMAGES[@]}"; do
  read -r variable public target <<<"$entry"
  if present "$public" || pullable "$public"; then
    log "$variable: $public"
    echo "$variable=$public"
  else
    image=$(standin "$target")
    log "$variable: $image (stand-in for $public)"
    echo "$variable=$image"
  fi
done
