"""A test CA and the signing chains it issues, made with `cryptography` alone (not our credentials code),
and C2PA manifests read back with c2pa-python's own Reader.

The operator's chain in the tests: a root CA (the trust anchor a reader is given) that issues a
C2PA-profile signing certificate (digitalSignature, emailProtection), written as PEM files.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import c2pa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from engines.media.credentials import key_usage


@dataclass(frozen=True)
class IssuedChain:
    """PEM files of one issued chain: `chain` (signer, then CA), `key` (the signer's), `ca` (the root)."""

    chain: Path
    key: Path
    ca: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "LivePortrait tests"),
        ]
    )


def _usage(*allowed: str) -> x509.KeyUsage:
    return key_usage(**dict.fromkeys(allowed, True))


def make_chain(
    folder: Path, algorithm: str = "ES256", *, valid_days: tuple[int, int] = (-1, 365), eku: bool = True
) -> IssuedChain:
    """A fresh root CA and a signing certificate valid from/to `valid_days` (relative to now).

    Without `eku` the signing certificate has no extended key usage, which C2PA requires.
    """
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("Test root CA"))
        .issuer_name(_name("Test root CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=30))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage("key_cert_sign", "crl_sign"), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key: Any = {
        "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "PS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "Ed25519": ed25519.Ed25519PrivateKey.generate,
    }[algorithm]()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("Test operator signer"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=valid_days[0]))
        .not_valid_after(now + datetime.timedelta(days=valid_days[1]))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage("digital_signature"), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if eku:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
        )
    signer = builder.sign(ca_key, hashes.SHA256())
    pem = serialization.Encoding.PEM
    paths = IssuedChain(folder / "chain.pem", folder / "signer.key", folder / "ca.pem")
    paths.chain.write_bytes(signer.public_bytes(pem) + ca.public_bytes(pem))
    paths.key.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    paths.ca.write_bytes(ca.public_bytes(pem))
    return paths


def c2pa_store(path: Path, trust: Path | None = None) -> dict[str, Any]:
    """The manifest store of `path` as c2pa-python's Reader reports it, trusting the CA at `trust`."""
    settings = {"trust": {"user_anchors": trust.read_text()}} if trust else {}
    with c2pa.Reader(str(path), context=c2pa.Context.from_dict(settings)) as reader:
        store: dict[str, Any] = json.loads(reader.json())
    return store


def active_manifest(store: dict[str, Any]) -> dict[str, Any]:
    """The active manifest of a manifest store."""
    manifest: dict[str, Any] = store["manifests"][store["active_manifest"]]
    return manifest


def created_action(manifest: dict[str, Any]) -> dict[str, Any]:
    """The one c2pa.created action of a manifest."""
    actions = [
        action
        for assertion in manifest["assertions"]
        if assertion["label"].startswith("c2pa.actions")
        for action in assertion["data"]["actions"]
        if action["action"] == "c2pa.created"
    ]
    assert len(actions) == 1, actions
    return actions[0]
