"""One-shot init for docker compose: create the service's S3 bucket and give it its lifecycle rules.

    python create_bucket.py [LIFECYCLE_JSON]

Reads the same LIVEPORTRAIT_ settings, through the same S3 client, as the gateway and the worker, so
it creates exactly the bucket they use. Idempotent: a bucket that already exists is left as it is, and
the lifecycle rules (deploy/s3/lifecycle.json: expire `results/`, `inputs/`, `uploads/`, abort
incomplete multipart uploads) are put again, under the store's key prefix (LIVEPORTRAIT_S3_PREFIX).
Retries while the store starts.
"""

import json
import sys
import time
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError, EndpointConnectionError

from service.settings import Settings, get_settings
from service.storage import S3Store

DAY_S = 24 * 3600
RESULTS = "results/"


def ensure_bucket(client: Any, bucket: str, region: str) -> bool:
    """Create `bucket` unless it exists; return True when it was created."""
    try:
        client.head_bucket(Bucket=bucket)
        return False
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
    if region == "us-east-1":
        client.create_bucket(Bucket=bucket)
    else:
        client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    return True


def lifecycle_rules(path: Path, key_prefix: str) -> list[dict]:
    """The rules of a lifecycle file (the S3 API's JSON), their prefixes under the store's `key_prefix`."""
    rules = json.loads(path.read_text())["Rules"]
    for rule in rules:
        rule["Filter"]["Prefix"] = key_prefix + rule["Filter"]["Prefix"]
    return rules


def check_retention(rules: list[dict], key_prefix: str, settings: Settings) -> None:
    """ValueError when results would expire while their jobs still point at them (`result_ttl_s`)."""
    (results,) = [rule for rule in rules if rule["Filter"]["Prefix"] == key_prefix + RESULTS]
    if results["Expiration"]["Days"] * DAY_S < settings.result_ttl_s:
        raise ValueError(
            f"results expire after {results['Expiration']['Days']} days, before their jobs "
            f"(LIVEPORTRAIT_RESULT_TTL_S={settings.result_ttl_s}): raise the rule's Days"
        )


def put_lifecycle(client: Any, bucket: str, rules: list[dict]) -> None:
    """Replace the bucket's lifecycle configuration with `rules`."""
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})


def main(lifecycle: Path | None = None, attempts: int = 30, delay_s: float = 2.0) -> int:
    """Create the bucket and put the lifecycle rules, retrying while the store is unreachable.

    Returns the process exit status.
    """
    settings = get_settings()
    store = S3Store(settings)
    prefix = store.prefix
    rules = lifecycle_rules(lifecycle, prefix) if lifecycle is not None else []
    if rules:
        try:
            check_retention(rules, prefix, settings)
        except ValueError as error:
            print(f"{lifecycle}: {error}", file=sys.stderr)
            return 1
    client = store.client
    for attempt in range(1, attempts + 1):
        try:
            created = ensure_bucket(client, settings.s3_bucket, settings.s3_region)
        except EndpointConnectionError as error:
            print(f"attempt {attempt}/{attempts}: {error}", file=sys.stderr)
            time.sleep(delay_s)
            continue
        print(f"bucket {settings.s3_bucket}: {'created' if created else 'already exists'}")
        if rules:
            put_lifecycle(client, settings.s3_bucket, rules)
            print(f"bucket {settings.s3_bucket}: lifecycle rules {', '.join(rule['ID'] for rule in rules)}")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
