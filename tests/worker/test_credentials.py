"""Content credentials on service results: a real worker (FakeAnimator's real MP4s) behind the gateway,
results read back with c2pa-python's Reader; the worker refuses bad certificates at start."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engines.media.credentials import JOB_ID, TRAINED_ALGORITHMIC_MEDIA, CredentialsError
from engines.request import AnimateRequest
from service.client import Client
from service.settings import Settings
from tests.signing_ca import active_manifest, c2pa_store, created_action, make_chain
from tests.worker.doubles import FakeAnimator, FakeResult, fake_engine, running_worker, write_inputs
from worker.worker import build_worker

API_KEY = "credentials-key"


@pytest.fixture
def service(
    make_settings: Callable[..., Settings], gateway_server: Callable[[Settings], str]
) -> Callable[..., tuple[Settings, str]]:
    """`service(**settings)`: settings with an API key and a gateway serving them."""

    def start(**overrides: Any) -> tuple[Settings, str]:
        settings = make_settings(api_keys=[hashlib.sha256(API_KEY.encode()).hexdigest()], **overrides)
        return settings, gateway_server(settings)

    return start


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.e2e
def test_a_job_result_is_signed_with_the_operator_chain(service, tmp_path):
    chain = make_chain(tmp_path / "operator")
    settings, url = service(c2pa_cert_chain=chain.chain, c2pa_private_key=chain.key)
    source, driving = write_inputs(tmp_path)
    with running_worker(settings, fake_engine()), Client(url, API_KEY) as client:
        job = client.wait(client.submit(source, driving).id, timeout=60, poll_s=0.05)
        assert job.status == "succeeded", job
        client.download(job.id, tmp_path / "result.mp4")
    assert job.result is not None and job.result.content_credentials
    assert [p.name for p in (settings.local_storage_dir / "results").rglob("*.mp4")] == ["output.mp4"]

    store = c2pa_store(tmp_path / "result.mp4", trust=chain.ca)
    assert store["validation_state"] == "Trusted", store.get("validation_status")
    manifest = active_manifest(store)
    created = created_action(manifest)
    assert created["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert created["parameters"][JOB_ID] == job.id
    assert {i["title"]: i["metadata"]["org.liveportrait.sha256"] for i in manifest["ingredients"]} == {
        "source": sha256(source),
        "driving": sha256(driving),
    }


@pytest.mark.e2e
def test_with_no_certificate_configured_the_worker_signs_with_the_development_ca(service, tmp_path):
    settings, url = service(c2pa_dev_dir=tmp_path / "dev")
    assert settings.c2pa_cert_chain is None
    source, driving = write_inputs(tmp_path)
    with running_worker(settings, fake_engine()), Client(url, API_KEY) as client:
        job = client.wait(client.submit(source, driving).id, timeout=60, poll_s=0.05)
        client.download(job.id, tmp_path / "result.mp4")
    assert job.result is not None and job.result.content_credentials
    store = c2pa_store(tmp_path / "result.mp4")
    assert store["validation_state"] == "Valid"
    assert [s["code"] for s in store["validation_status"]] == ["signingCredential.untrusted"]
    assert active_manifest(store)["signature_info"]["common_name"].endswith("(untrusted)")
    dev_ca = tmp_path / "dev" / "es256" / "ca.pem"
    assert c2pa_store(tmp_path / "result.mp4", trust=dev_ca)["validation_state"] == "Trusted"


def test_an_expired_certificate_stops_the_worker_at_start(make_settings, tmp_path):
    expired = make_chain(tmp_path / "expired", valid_days=(-60, -1))
    settings = make_settings(c2pa_cert_chain=expired.chain, c2pa_private_key=expired.key)
    with pytest.raises(CredentialsError, match=r"Test operator signer.* expired on \d{4}-\d\d-\d\d"):
        build_worker(settings, fake_engine())


class MatroskaAnimator(FakeAnimator):
    """FakeAnimator writing Matroska instead of MP4: a real video that C2PA cannot carry."""

    def animate(self, request: AnimateRequest) -> FakeResult:
        return super().animate(dataclasses.replace(request, output=Path(request.output).with_suffix(".mkv")))


@pytest.mark.e2e
def test_an_output_that_cannot_be_signed_fails_the_job_and_ships_nothing(service, tmp_path):
    settings, url = service()
    source, driving = write_inputs(tmp_path)
    with running_worker(settings, fake_engine(MatroskaAnimator())), Client(url, API_KEY) as client:
        job = client.wait(client.submit(source, driving).id, timeout=60, poll_s=0.05)
    assert job.status == "failed" and job.error is not None and job.result is None
    assert job.error.code == "signing_failed"
    assert "video/x-matroska is not signable" in job.error.message
    assert not list((settings.local_storage_dir / "results").rglob("*")), "no unlabelled result is stored"
