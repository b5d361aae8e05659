"""C2PA content credentials on real files, read back with c2pa-python's Reader (not our reading code)."""

import hashlib
import stat
import threading
from pathlib import Path

import av
import numpy as np
import pytest

from common import __version__
from common.content_credentials import CredentialsConfig
from engines.media import write_image, write_test_video
from engines.media.credentials import (
    GENERATOR,
    INPUT_SHA256,
    JOB_ID,
    TRAINED_ALGORITHMIC_MEDIA,
    ContentSigner,
    CredentialsError,
    development_credentials,
    load_signer,
    read_credentials,
)
from tests.signing_ca import IssuedChain, active_manifest, c2pa_store, created_action, make_chain
from tests.worker.doubles import moving_frames

JOB = "0123456789abcdef0123456789abcdef"


def decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


@pytest.fixture
def operator(tmp_path: Path) -> IssuedChain:
    return make_chain(tmp_path / "operator")


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    source = tmp_path / "portrait.png"
    write_image(source, moving_frames(1, 48)[0])
    driving = tmp_path / "driving.mp4"
    write_test_video(driving, moving_frames(3), with_audio=False)
    return {"source": source, "driving": driving}


def signer_of(chain: IssuedChain, algorithm: str = "ES256") -> ContentSigner:
    return load_signer(CredentialsConfig(cert_chain=chain.chain, private_key=chain.key, algorithm=algorithm))


def signed_video(folder: Path, signer: ContentSigner, inputs: dict[str, Path]) -> Path:
    out = folder / "output.mp4"
    write_test_video(out, moving_frames(6))
    signer.sign(out, job_id=JOB, inputs=inputs)
    return out


def test_a_signed_mp4_is_labelled_ai_generated_and_chains_to_the_operator_ca(tmp_path, operator, inputs):
    out = tmp_path / "output.mp4"
    write_test_video(out, moving_frames(6))
    unsigned = decoded(out)
    signer_of(operator).sign(out, job_id=JOB, inputs=inputs)

    store = c2pa_store(out, trust=operator.ca)
    assert store["validation_state"] == "Trusted", store.get("validation_status")
    manifest = active_manifest(store)
    assert manifest["claim_generator_info"][0]["name"] == GENERATOR
    assert manifest["signature_info"]["common_name"] == "Test operator signer"
    created = created_action(manifest)
    assert created["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert created["softwareAgent"] == {"name": GENERATOR, "version": __version__}
    assert created["parameters"][JOB_ID] == JOB
    assert len(created["parameters"]["ingredients"]) == 2
    ingredients = {i["title"]: i for i in manifest["ingredients"]}
    assert {role: i["metadata"][INPUT_SHA256] for role, i in ingredients.items()} == {
        role: hashlib.sha256(path.read_bytes()).hexdigest() for role, path in inputs.items()
    }
    assert all(
        set(i) <= {"title", "format", "relationship", "metadata", "label", "instance_id"}
        for i in ingredients.values()
    ), "inputs are known by hash only: no thumbnail, no data"
    assert "thumbnail" not in manifest
    # the pictures (and the audio track) are untouched
    assert all(np.array_equal(a, b) for a, b in zip(decoded(out), unsigned, strict=True))
    with av.open(str(out)) as container:
        assert len(container.streams.audio) == 1


def test_without_the_trust_anchor_the_signature_is_valid_but_untrusted(tmp_path, operator, inputs):
    out = signed_video(tmp_path, signer_of(operator), inputs)
    store = c2pa_store(out)
    assert store["validation_state"] == "Valid"
    assert [s["code"] for s in store["validation_status"]] == ["signingCredential.untrusted"]


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_stills_are_signed(tmp_path, operator, inputs, suffix):
    out = tmp_path / f"still{suffix}"
    write_image(out, moving_frames(1)[0])
    signer_of(operator).sign(out, job_id=JOB, inputs={"source": inputs["source"]})
    store = c2pa_store(out, trust=operator.ca)
    assert store["validation_state"] == "Trusted", store.get("validation_status")
    assert created_action(active_manifest(store))["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA


@pytest.mark.parametrize("algorithm", ["PS256", "Ed25519"])
def test_other_algorithms_sign(tmp_path, inputs, algorithm):
    chain = make_chain(tmp_path / algorithm, algorithm)
    out = signed_video(tmp_path, signer_of(chain, algorithm), inputs)
    assert c2pa_store(out, trust=chain.ca)["validation_state"] == "Trusted"


def test_a_tampered_file_fails_validation(tmp_path, operator, inputs):
    out = signed_video(tmp_path, signer_of(operator), inputs)
    data = bytearray(out.read_bytes())
    mdat = data.index(b"mdat")
    data[mdat + 64] ^= 0xFF  # one byte of the coded pictures
    out.write_bytes(bytes(data))
    store = c2pa_store(out, trust=operator.ca)
    assert store["validation_state"] == "Invalid"
    assert "assertion.bmffHash.mismatch" in [s["code"] for s in store["validation_status"]]
    found = read_credentials(out, operator.ca)
    assert found is not None and found.ours and found.state == "Invalid"


def test_read_credentials_reports_ours_and_none_on_an_unsigned_file(tmp_path, operator, inputs):
    out = signed_video(tmp_path, signer_of(operator), inputs)
    found = read_credentials(out, operator.ca)
    assert found is not None and found.ours
    assert (found.state, found.job_id, found.signer) == ("Trusted", JOB, "Test operator signer")
    assert found.inputs == {role: hashlib.sha256(p.read_bytes()).hexdigest() for role, p in inputs.items()}
    assert read_credentials(inputs["driving"]) is None


def test_without_a_certificate_a_development_ca_is_made_once(tmp_path, inputs):
    config = CredentialsConfig(dev_dir=tmp_path / "dev")
    first = load_signer(config)
    assert first.generated and first.development == tmp_path / "dev"
    assert "untrusted" in first.subject
    folder = tmp_path / "dev" / "es256"
    assert stat.S_IMODE((folder / "signer.key").stat().st_mode) == 0o600
    again = load_signer(config)
    assert not again.generated and again.chain_pem == first.chain_pem

    out = signed_video(tmp_path, again, inputs)
    store = c2pa_store(out)
    assert store["validation_state"] == "Valid"
    assert [s["code"] for s in store["validation_status"]] == ["signingCredential.untrusted"]
    assert "untrusted" in active_manifest(store)["signature_info"]["issuer"]
    assert c2pa_store(out, trust=folder / "ca.pem")["validation_state"] == "Trusted"


def test_concurrent_first_uses_agree_on_one_development_ca(tmp_path):
    start = threading.Barrier(4)
    results: list[tuple[Path, Path, bool]] = []

    def make() -> None:
        start.wait()
        results.append(development_credentials(tmp_path, "ES256"))

    threads = [threading.Thread(target=make) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(made for _, _, made in results) == 1
    assert {(chain, key) for chain, key, _ in results} == {
        (tmp_path / "es256" / "chain.pem", tmp_path / "es256" / "signer.key")
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["es256"], "no staging folder is left"
    assert load_signer(CredentialsConfig(dev_dir=tmp_path)).subject.endswith("(untrusted)")


def test_bad_credentials_are_refused_at_load(tmp_path, operator):
    expired = make_chain(tmp_path / "expired", valid_days=(-30, -1))
    early = make_chain(tmp_path / "early", valid_days=(1, 30))
    other = make_chain(tmp_path / "other")
    (tmp_path / "garbage.pem").write_text("not a certificate")
    cases = {
        "expired on": CredentialsConfig(cert_chain=expired.chain, private_key=expired.key),
        "is not valid before": CredentialsConfig(cert_chain=early.chain, private_key=early.key),
        "does not belong to the first certificate": CredentialsConfig(
            cert_chain=operator.chain, private_key=other.key
        ),
        "PS256 needs an RSA key": CredentialsConfig(
            cert_chain=operator.chain, private_key=operator.key, algorithm="PS256"
        ),
        "set both": CredentialsConfig(cert_chain=operator.chain),
        "cannot read the signing private key": CredentialsConfig(
            cert_chain=operator.chain, private_key=tmp_path / "absent.key"
        ),
        "is not a PEM certificate chain": CredentialsConfig(
            cert_chain=tmp_path / "garbage.pem", private_key=operator.key
        ),
        "cannot make development credentials": CredentialsConfig(dev_dir=tmp_path / "garbage.pem" / "dev"),
    }
    for message, config in cases.items():
        with pytest.raises(CredentialsError, match=message) as refused:
            load_signer(config)
        assert refused.value.code == "signing_failed"


def test_what_only_the_c2pa_library_checks_is_refused_at_load_too(tmp_path):
    no_eku = make_chain(tmp_path / "no-eku", eku=False)
    with pytest.raises(CredentialsError, match="the C2PA library refused the signing credentials"):
        load_signer(CredentialsConfig(cert_chain=no_eku.chain, private_key=no_eku.key))


def test_an_output_that_cannot_be_signed_fails_and_is_deleted(tmp_path, operator, inputs):
    out = tmp_path / "output.mp4"
    out.write_bytes(b"not a video at all")
    with pytest.raises(CredentialsError, match="is not signable"):
        signer_of(operator).sign(out, job_id=JOB, inputs=inputs)
    assert not out.exists()
    assert list(tmp_path.glob(".output.mp4.*")) == [], "no staged copy is left"
