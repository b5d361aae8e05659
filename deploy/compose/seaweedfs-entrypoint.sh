#!/bin/sh
# SeaweedFS for docker compose: one process with master, volume server, filer and the S3 gateway.
# The S3 identity comes from S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY (the same values the services get
# as LIVEPORTRAIT_S3_*), written to a config file at start so the credentials live in one place.
# Keys must be plain (letters, digits, '-', '_'): they are pasted into JSON as they are.
set -eu

: "${S3_ACCESS_KEY_ID:?S3_ACCESS_KEY_ID is required}"
: "${S3_SECRET_ACCESS_KEY:?S3_SECRET_ACCESS_KEY is required}"

case "${S3_ACCESS_KEY_ID}${S3_SECRET_ACCESS_KEY}" in
  *[!A-Za-z0-9_-]*)
    echo "S3 keys may hold only letters, digits, '-' and '_'" >&2
    exit 1
    ;;
esac

config=/tmp/s3.json
umask 077
cat >"$config" <<EOF
{
  "identities": [
    {
      "name": "liveportrait",
      "credentials": [{"accessKey": "${S3_ACCESS_KEY_ID}", "secretKey": "${S3_SECRET_ACCESS_KEY}"}],
      "actions": ["Admin", "Read", "Write", "List", "Tagging"]
    }
  ]
}
EOF

exec weed server \
  -dir=/data \
  -ip.bind=0.0.0.0 \
  -master.volumeSizeLimitMB=1024 \
  -volume.max=0 \
  -s3 \
  -s3.port=8333 \
  -s3.config="$config"
