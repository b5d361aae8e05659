"""One-shot init for docker compose: create the service's S3 bucket if it does not exist yet.

Reads the same LIVEPORTRAIT_ settings, through the same S3 client, as the gateway and the worker, so
it creates exactly the bucket they use. Idempotent: a bucket that already exists is left as it is.
Retries while the store starts.
"""

import sys
import time

from botocore.exceptions import ClientError, EndpointConnectionError

from service.settings import get_settings
from service.storage import make_s3_client


def ensure_bucket(client, bucket: str, region: str) -> bool:
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


def main(attempts: int = 30, delay_s: float = 2.0) -> int:
    """Create the bucket, retrying while the store is unreachable; return the process exit status."""
    settings = get_settings()
    client = make_s3_client(settings)
    for attempt in range(1, attempts + 1):
        try:
            created = ensure_bucket(client, settings.s3_bucket, settings.s3_region)
        except EndpointConnectionError as error:
            print(f"attempt {attempt}/{attempts}: {error}", file=sys.stderr)
            time.sleep(delay_s)
            continue
        print(f"bucket {settings.s3_bucket}: {'created' if created else 'already exists'}")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
