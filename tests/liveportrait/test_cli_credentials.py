"""`liveportrait animate` signs its output (synthetic weights, 2 frames), read back with c2pa-python's
Reader; `liveportrait verify` reports the credentials, and a tampered file as invalid."""

import hashlib
from pathlib import Path

import pytest

from common import __version__
from engines.demo import write_demo_inputs
from engines.media.credentials import GENERATOR, TRAINED_ALGORITHMIC_MEDIA
from liveportrait.cli import main
from tests.signing_ca import active_manifest, c2pa_store, created_action, make_chain


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engines.weights import write_synthetic_bundle

    return write_synthetic_bundle(tmp_path_factory.mktemp("weights"), seed=0)


def animate(folder: Path, weights: Path) -> tuple[Path, Path, Path]:
    """(source, driving, output) of a 2-frame `liveportrait animate` on CPU."""
    source, driving = write_demo_inputs(folder, n_frames=2)
    out = folder / "out.mp4"
    args = [
        "animate",
        str(source),
        str(driving),
        "-o",
        str(out),
        "--weights",
        str(weights),
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    return source, driving, out


def test_animate_signs_with_the_operator_chain_and_verify_reads_it(tmp_path, weights, monkeypatch, capsys):
    chain = make_chain(tmp_path / "operator")
    monkeypatch.setenv("LIVEPORTRAIT_C2PA_CERT_CHAIN", str(chain.chain))
    monkeypatch.setenv("LIVEPORTRAIT_C2PA_PRIVATE_KEY", str(chain.key))
    source, driving, out = animate(tmp_path, weights)
    assert "content credentials signed by Test operator signer" in capsys.readouterr().out

    store = c2pa_store(out, trust=chain.ca)
    assert store["validation_state"] == "Trusted", store.get("validation_status")
    manifest = active_manifest(store)
    created = created_action(manifest)
    assert created["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert created["softwareAgent"] == {"name": GENERATOR, "version": __version__}
    assert {i["title"]: i["metadata"]["org.liveportrait.sha256"] for i in manifest["ingredients"]} == {
        "source": hashlib.sha256(source.read_bytes()).hexdigest(),
        "driving": hashlib.sha256(driving.read_bytes()).hexdigest(),
    }

    assert main(["verify", str(out), "--trust", str(chain.ca)]) == 0
    report = capsys.readouterr().out
    assert f"content credentials of {GENERATOR} {__version__}" in report
    assert f"digital source type: {TRAINED_ALGORITHMIC_MEDIA}" in report
    assert "validation: Trusted" in report and "signed by: Test operator signer" in report

    data = bytearray(out.read_bytes())
    data[data.index(b"mdat") + 64] ^= 0xFF
    out.write_bytes(bytes(data))
    assert main(["verify", str(out), "--trust", str(chain.ca)]) == 1
    assert "validation: Invalid (assertion.bmffHash.mismatch)" in capsys.readouterr().out
    assert main(["verify", str(driving)]) == 1
    assert "no content credentials" in capsys.readouterr().out


def test_without_a_certificate_the_cli_makes_and_announces_a_development_ca(
    tmp_path, weights, monkeypatch, capsys
):
    """The notice comes with the making (ContentSigner.generated): once; later runs reuse the CA silently
    (tests/engines/media/test_credentials.py)."""
    monkeypatch.setenv("LIVEPORTRAIT_C2PA_DEV_DIR", str(tmp_path / "dev"))
    _, _, out = animate(tmp_path, weights)
    assert "a local development CA was made" in capsys.readouterr().err

    store = c2pa_store(out)
    assert store["validation_state"] == "Valid"
    assert [s["code"] for s in store["validation_status"]] == ["signingCredential.untrusted"]
    assert active_manifest(store)["signature_info"]["common_name"].endswith("(untrusted)")
    assert main(["verify", str(out)]) == 0
    assert "validation: Valid (signingCredential.untrusted)" in capsys.readouterr().out
