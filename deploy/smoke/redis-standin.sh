#!/bin/sh
# Entrypoint of the Redis stand-in (standins.Dockerfile): like the public image, whose build turns
# protected mode off, `redis-server ...` accepts clients from the other containers without a password
# (the compose network is the boundary). Other commands run as given.
set -eu
if [ "${1:-}" = redis-server ]; then
  shift
  # after the given arguments: a config file or --version must come first
  exec redis-server "$@" --protected-mode no
fi
exec "$@"
