"""C2PA content credentials: every output we write is signed as AI-generated (EU AI Act, art. 50).

Each manifest holds one `c2pa.created` action with the IPTC digital source type
`trainedAlgorithmicMedia`, our generator name and version, the job id, and the job's inputs as
ingredients known only by their SHA-256 (never their bytes, names or thumbnails). It is signed
with the operator's certificate chain (`CredentialsConfig`), or, when none is configured, with a
local development CA made once and named as untrusted. `load_signer` checks the chain when a
worker or the CLI starts (dates, key, algorithm, then a test signature), so a bad certificate
stops them at start and never one job at a time. `read_credentials` reads a file back.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import c2pa
import cv2
import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common import __version__
from common.content_credentials import CredentialsConfig, SigningAlgorithm
from common.errors import ErrorCode, LivePortraitError
from common.media import SNIFF_BYTES, sniff

GENERATOR = "liveportrait-service"
"""The claim generator and software agent named in every manifest (with `common.__version__`)."""

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
"""IPTC digital source type of media made by a trained model."""

JOB_ID = "org.liveportrait.job_id"
"""Parameter of the `c2pa.created` action that holds the job id."""

INPUT_SHA256 = "org.liveportrait.sha256"
"""Metadata field of an ingredient that holds the SHA-256 (hex) of that input file."""

SIGNABLE = frozenset({"video/mp4", "video/quicktime", "image/png", "image/jpeg", "image/webp"})
"""Media types we write and sign (sniffed from the file's bytes)."""

DEV_NAME = "LivePortrait local development"
"""Prefix of the development CA's and signer's names; both say `(untrusted)`."""

_ALGORITHMS: dict[SigningAlgorithm, c2pa.C2paSigningAlg] = {
    "ES256": c2pa.C2paSigningAlg.ES256,
    "PS256": c2pa.C2paSigningAlg.PS256,
    "Ed25519": c2pa.C2paSigningAlg.ED25519,
}
_KEY_TYPES: dict[SigningAlgorithm, tuple[type, str]] = {
    "ES256": (ec.EllipticCurvePrivateKey, "an EC P-256 key"),
    "PS256": (rsa.RSAPrivateKey, "an RSA key"),
    "Ed25519": (ed25519.Ed25519PrivateKey, "an Ed25519 key"),
}
_BUILDER_SETTINGS = {"builder": {"thumbnail": {"enabled": False}}}
"""No thumbnails: of an output they add nothing, and ingredients are never embedded."""


class CredentialsError(LivePortraitError):
    """Signing credentials that cannot be used, or an output that could not be signed."""

    code: ErrorCode = "signing_failed"

    def __init__(self, message: str) -> None:
        super().__init__("signing_failed", message)


# --- the signer -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContentSigner:
    """A checked signing identity (`load_signer`); signs files in place with `sign`."""

    chain_pem: bytes
    key_pem: bytes
    algorithm: SigningAlgorithm
    tsa_url: str | None
    subject: str
    """Common name of the signing certificate."""
    development: Path | None = None
    """The folder of the local development credentials in use (None: the operator's)."""
    generated: bool = False
    """Whether `load_signer` made those development credentials just now."""
    _context: c2pa.Context = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_context", c2pa.Context.from_dict(_BUILDER_SETTINGS))

    def sign(self, path: Path, *, job_id: str, inputs: Mapping[str, Path | None]) -> None:
        """Embed a signed manifest in the output at `path` (MP4, MOV, PNG, JPEG or WebP).

        `inputs` maps each role ("source", "driving") to its file (None: the job had none), recorded
        by hash only. Raises CredentialsError when the file cannot be signed, after deleting it: no
        unlabelled output is left behind.
        """
        path = Path(path)
        staged: Path | None = None
        try:
            with path.open("rb") as head:
                content_type = sniff(head.read(SNIFF_BYTES))
            if content_type not in SIGNABLE:
                raise CredentialsError(
                    f"cannot sign {path.name}: {content_type or 'unknown'} is not signable"
                )
            manifest = _manifest(path.name, content_type, job_id, inputs)
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".c2pa", dir=path.parent)
            staged = Path(name)
            with path.open("rb") as source, os.fdopen(fd, "w+b") as dest:
                self._sign(manifest, content_type, source, dest)
            os.replace(staged, path)
        except (c2pa.C2paError, OSError, CredentialsError) as exc:
            if staged is not None:
                staged.unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            if isinstance(exc, CredentialsError):
                raise
            raise CredentialsError(f"signing {path.name} failed: {_reason(exc)}") from exc

    def check(self) -> None:
        """Sign a tiny PNG in memory and read it back: what the C2PA library refuses, it refuses here."""
        _, png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
        out = io.BytesIO()
        manifest = _manifest("check.png", "image/png", "check", {})
        try:
            self._sign(manifest, "image/png", io.BytesIO(png.tobytes()), out)
            out.seek(0)
            with c2pa.Reader("image/png", out) as reader:
                state = reader.get_validation_state()
        except c2pa.C2paError as exc:
            raise CredentialsError(
                f"the C2PA library refused the signing credentials: {_reason(exc)}"
            ) from exc
        if state not in ("Valid", "Trusted"):
            raise CredentialsError(f"a test signature with these credentials does not validate ({state})")

    def _sign(self, manifest: dict[str, Any], content_type: str, source: Any, dest: Any) -> None:
        info = c2pa.C2paSignerInfo(_ALGORITHMS[self.algorithm], self.chain_pem, self.key_pem, self.tsa_url)
        with c2pa.Signer.from_info(info) as signer, c2pa.Builder(manifest, context=self._context) as builder:
            builder.sign(signer, content_type, source, dest)


def _manifest(
    title: str, content_type: str, job_id: str, inputs: Mapping[str, Path | None]
) -> dict[str, Any]:
    given = {role: file for role, file in inputs.items() if file is not None}
    ingredients = [
        {
            "title": role,
            "format": _content_type(file) or "application/octet-stream",
            "relationship": "inputTo",
            "label": role,
            "metadata": {INPUT_SHA256: _sha256(file)},
        }
        for role, file in given.items()
    ]
    created = {
        "action": "c2pa.created",
        "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
        "softwareAgent": {"name": GENERATOR, "version": __version__},
        "parameters": {JOB_ID: job_id, "ingredientIds": list(given)},
    }
    return {
        "claim_generator_info": [{"name": GENERATOR, "version": __version__}],
        "title": title,
        "format": content_type,
        "ingredients": ingredients,
        "assertions": [{"label": "c2pa.actions.v2", "data": {"actions": [created]}}],
    }


def _content_type(path: Path) -> str | None:
    with path.open("rb") as head:
        return sniff(head.read(SNIFF_BYTES))


def _sha256(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


# --- loading and checking credentials -------------------------------------------------------------


def load_signer(config: CredentialsConfig) -> ContentSigner:
    """The signer of `config`: its chain and key checked, or the development ones (made once).

    Raises CredentialsError with the reason (a missing or unreadable file, an expired or not yet
    valid certificate, a key that is not the certificate's or not of the algorithm's type, or a
    chain the C2PA library refuses).
    """
    if (config.cert_chain is None) != (config.private_key is None):
        raise CredentialsError("set both the certificate chain and the private key, or neither")
    development, generated = None, False
    if config.cert_chain is None or config.private_key is None:
        development = config.dev_dir or default_dev_dir()
        try:
            chain_path, key_path, generated = development_credentials(development, config.algorithm)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise CredentialsError(f"cannot make development credentials in {development}: {reason}") from exc
    else:
        chain_path, key_path = config.cert_chain, config.private_key
    chain_pem, key_pem = _read(chain_path, "certificate chain"), _read(key_path, "private key")
    subject = _check(chain_pem, key_pem, config.algorithm, chain_path, key_path)
    signer = ContentSigner(
        chain_pem, key_pem, config.algorithm, config.tsa_url, subject, development, generated
    )
    signer.check()
    return signer


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CredentialsError(f"cannot read the signing {what} {path}: {exc.strerror or exc}") from exc


def _check(
    chain_pem: bytes, key_pem: bytes, algorithm: SigningAlgorithm, chain_path: Path, key_path: Path
) -> str:
    """The signing certificate's common name, once the chain and key pass the checks (see load_signer)."""
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError as exc:
        raise CredentialsError(f"{chain_path} is not a PEM certificate chain: {exc}") from exc
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CredentialsError(f"{key_path} is not an unencrypted PEM private key: {exc}") from exc
    now = datetime.datetime.now(datetime.UTC)
    for cert in chain:
        name = cert.subject.rfc4514_string()
        if cert.not_valid_after_utc <= now:
            ended = f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
            raise CredentialsError(f"the certificate {name} in {chain_path} expired on {ended}")
        if cert.not_valid_before_utc > now:
            starts = f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
            raise CredentialsError(f"the certificate {name} in {chain_path} is not valid before {starts}")
    key_type, key_name = _KEY_TYPES[algorithm]
    if not isinstance(key, key_type):
        raise CredentialsError(f"{algorithm} needs {key_name}; {key_path} holds a {type(key).__name__}")
    if key.public_key() != chain[0].public_key():
        raise CredentialsError(
            f"the private key {key_path} does not belong to the first certificate of {chain_path}"
        )
    names = chain[0].subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else chain[0].subject.rfc4514_string()


# --- local development credentials ----------------------------------------------------------------


def default_dev_dir() -> Path:
    """liveportrait/c2pa-dev in the user's cache directory ($XDG_CACHE_HOME, else ~/.cache)."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "liveportrait" / "c2pa-dev"


def development_credentials(directory: Path, algorithm: SigningAlgorithm) -> tuple[Path, Path, bool]:
    """(chain, key, made now) of the development signer in `directory`/<algorithm>, made once.

    A CA ("... CA (untrusted)") signs one signing certificate; the folder holds `chain.pem` (the
    signing certificate, then the CA), `ca.pem` (the CA alone: a trust anchor for `verify`) and
    `signer.key` (mode 0600). The CA's key is not kept. Processes that race to make them agree on
    one set: each writes a private folder and renames it into place, and the losers use the winner's.
    """
    folder = Path(directory) / algorithm.lower()
    chain, key = folder / "chain.pem", folder / "signer.key"
    if chain.is_file() and key.is_file():
        return chain, key, False
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))  # mode 0700
    try:
        _write_development_set(staging, algorithm)
        try:
            os.rename(staging, folder)
        except OSError:
            if not (chain.is_file() and key.is_file()):
                raise
            return chain, key, False
        return chain, key, True
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_development_set(folder: Path, algorithm: SigningAlgorithm) -> None:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"{DEV_NAME} CA (untrusted)")
    ca = (
        _certificate(ca_name, ca_name, ca_key.public_key(), now, days=20 * 365)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    signer_key = _new_key(algorithm)
    signer = (
        _certificate(
            _name(f"{DEV_NAME} signer (untrusted)"), ca_name, signer_key.public_key(), now, days=10 * 365
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "chain.pem").write_bytes(signer.public_bytes(pem) + ca.public_bytes(pem))
    key_bytes = signer_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(folder / "signer.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_bytes)


_PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def _new_key(algorithm: SigningAlgorithm) -> _PrivateKey:
    if algorithm == "PS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if algorithm == "Ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"{DEV_NAME} (untrusted)"),
        ]
    )


def _certificate(
    subject: x509.Name, issuer: x509.Name, public_key: Any, now: datetime.datetime, *, days: int
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def key_usage(**allowed: bool) -> x509.KeyUsage:
    """An X.509 KeyUsage allowing exactly the usages given as True."""
    usages = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    )
    return x509.KeyUsage(**{usage: allowed.get(usage, False) for usage in usages})


# --- reading credentials back ---------------------------------------------------------------------


@dataclass(frozen=True)
class ReadCredentials:
    """The active C2PA manifest of a file, as far as `verify` reports it."""

    generator: str | None
    version: str | None
    source_type: str | None
    job_id: str | None
    state: str
    """The C2PA validation state: Invalid, Valid (signature and hashes good) or Trusted (and the
    signer chains to a trust anchor given)."""
    problems: tuple[str, ...]
    """Validation status codes, e.g. signingCredential.untrusted or assertion.bmffHash.mismatch."""
    signer: str | None
    issuer: str | None
    inputs: dict[str, str] = field(default_factory=dict)
    """Role -> SHA-256 of each input recorded as an ingredient."""

    @property
    def ours(self) -> bool:
        """Whether the manifest says that our generator made this file with a trained model."""
        return self.generator == GENERATOR and self.source_type == TRAINED_ALGORITHMIC_MEDIA


def read_credentials(path: Path, trust: Path | None = None) -> ReadCredentials | None:
    """The content credentials of the file at `path` (None without any).

    `trust` is a PEM file of CA certificates to trust besides the C2PA library's own list; a
    signature from a signer they issued validates as Trusted rather than Valid.
    """
    path = Path(path)
    try:
        anchors = Path(trust).read_text() if trust else None
        settings: dict[str, Any] = {"trust": {"user_anchors": anchors}} if anchors else {}
        with path.open("rb") as stream:
            content_type = sniff(stream.read(SNIFF_BYTES))
            stream.seek(0)
            reader = c2pa.Reader.try_create(content_type, stream, None, c2pa.Context.from_dict(settings))
            if reader is None:
                return None
            with reader:
                store = json.loads(reader.json())
    except OSError as exc:
        raise LivePortraitError(
            "input_missing", f"cannot read {exc.filename}: {exc.strerror or exc}"
        ) from exc
    except c2pa.C2paError as exc:
        message = f"cannot read the content credentials of {path.name}: {_reason(exc)}"
        raise LivePortraitError("corrupt_media", message) from exc
    manifest = store.get("manifests", {}).get(store.get("active_manifest"), {})
    created = next((a for a in _actions(manifest) if str(a.get("action", "")).startswith("c2pa.created")), {})
    generator = (manifest.get("claim_generator_info") or [{}])[0]
    signature = manifest.get("signature_info", {})
    inputs = {
        str(i.get("title")): str(i.get("metadata", {}).get(INPUT_SHA256))
        for i in manifest.get("ingredients", [])
        if INPUT_SHA256 in i.get("metadata", {})
    }
    return ReadCredentials(
        generator=generator.get("name"),
        version=generator.get("version"),
        source_type=created.get("digitalSourceType"),
        job_id=(created.get("parameters") or {}).get(JOB_ID),
        state=str(store.get("validation_state", "Invalid")),
        problems=tuple(str(s.get("code")) for s in store.get("validation_status", [])),
        signer=signature.get("common_name"),
        issuer=signature.get("issuer"),
        inputs=inputs,
    )


def _actions(manifest: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    for assertion in manifest.get("assertions", []):
        if str(assertion.get("label", "")).startswith("c2pa.actions"):
            return list(assertion.get("data", {}).get("actions", []))
    return []
