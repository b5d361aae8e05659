"""HMAC signatures of the gateway's own upload URLs (used with the local store)."""

import hashlib
import hmac
import time


class UploadSigner:
    """Sign and verify (upload id, expiry, size limit) triples."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def sign(self, upload_id: str, expires: int, max_bytes: int) -> str:
        """The hex signature of one upload grant."""
        message = f"{upload_id}:{expires}:{max_bytes}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def verify(self, upload_id: str, expires: int, max_bytes: int, signature: str) -> bool:
        """Whether `signature` grants this upload and has not expired."""
        if expires < time.time():
            return False
        return hmac.compare_digest(self.sign(upload_id, expires, max_bytes), signature)
