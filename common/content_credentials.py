"""How outputs are signed with C2PA content credentials: one typed config, built from Settings by the
worker and the CLI and turned into a signer by `engines.media.credentials.load_signer`."""

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SigningAlgorithm = Literal["ES256", "PS256", "Ed25519"]


class CredentialsConfig(BaseModel):
    """The operator's signing identity; with none, a local development one (untrusted) is made once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cert_chain: Path | None = Field(
        None,
        description="PEM certificate chain that signs the outputs' C2PA manifests: the signing "
        "certificate first, then its intermediates (unset: a local development CA, untrusted).",
    )
    private_key: Path | None = Field(
        None, description="PEM private key (unencrypted) of the signing certificate."
    )
    algorithm: SigningAlgorithm = Field(
        "ES256", description="Signature algorithm: ES256 (EC P-256 key), PS256 (RSA key) or Ed25519."
    )
    tsa_url: str | None = Field(
        None, description="RFC 3161 timestamp authority contacted on every signature (unset: none)."
    )
    dev_dir: Path | None = Field(
        None,
        description="Where the local development CA and signing certificate are kept when no chain is "
        "configured (default: liveportrait/c2pa-dev in the user's cache directory).",
    )


def credentials_default(name: str) -> Any:
    """The default of CredentialsConfig field `name`, for the settings that expose it."""
    return CredentialsConfig.model_fields[name].default
