"""The deployment files against real schemas and linters, not only our own field checks.

- Kubernetes objects (the base, and the overlays as `kubectl kustomize` renders them) against the
  official JSON schemas, strict (unknown fields refused), of the oldest and newest Kubernetes release
  the kubernetes-validate package ships offline.
- KEDA objects: no registry we reach ships KEDA's CRD schema (PyPI's cloudcoil-models-keda has
  generated classes that accept unknown fields, npm's @kubernetes-models/keda compiled validators
  only), so only the part of a ScaledObject that is a Kubernetes type, the HPA behaviour KEDA hands to
  the HorizontalPodAutoscaler it creates, is checked against Kubernetes's schema; the rest is covered
  by test_manifests.py's checks.
- The Dockerfiles with hadolint and the shell scripts with shellcheck (both from PyPI, dev extra).
"""

import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
from kubernetes_validate import utils as kubernetes_schemas
from referencing import Registry, Resource

from tests.deploy.test_manifests import DEPLOY, GATEWAY, OVERLAYS, ROOT, rendered

KUBERNETES_VERSIONS = (kubernetes_schemas.all_versions()[0], kubernetes_schemas.latest_version())
KEDA_API_GROUP = "keda.sh/"
HPA_BEHAVIOR = "io.k8s.api.autoscaling.v2.HorizontalPodAutoscalerBehavior"
DOCKERFILES = [ROOT / "Dockerfile", *sorted(DEPLOY.rglob("*Dockerfile"))]
SHELL_SCRIPTS = sorted(DEPLOY.rglob("*.sh"))


def tool(name: str) -> str:
    """A linter installed with the dev extra: beside this Python, or on PATH."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return found


def kubernetes_objects(target: str) -> list[dict]:
    return [o for o in rendered(target) if not o["apiVersion"].startswith(KEDA_API_GROUP)]


def hpa_behavior_validator(version: str) -> jsonschema.protocols.Validator:
    """Kubernetes's own schema of HorizontalPodAutoscalerBehavior (autoscaling/v2), strict."""
    definitions = kubernetes_schemas.schema_contents(
        f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version
    )
    schema = {"$ref": f"{definitions['$id']}#/$defs/{HPA_BEHAVIOR}"}
    registry = Resource.from_contents(definitions) @ Registry()
    return jsonschema.Draft202012Validator(schema, registry=registry)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("target", ["base", *OVERLAYS])
def test_kubernetes_objects_match_the_official_schemas(target: str, version: str):
    objects = kubernetes_objects(target)
    assert objects
    for document in objects:
        name = f"{document['kind']}/{document['metadata']['name']}"
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{target} {name} (Kubernetes {version}): {error.message} at {list(error.path)}")


def test_the_official_schemas_refuse_a_misspelt_field():
    (deployment,) = [
        o for o in kubernetes_objects("base") if (o["kind"], o["metadata"]["name"]) == ("Deployment", GATEWAY)
    ]
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("target", ["base", *OVERLAYS])
def test_keda_hpa_behavior_matches_the_kubernetes_schema(target: str, version: str):
    validator = hpa_behavior_validator(version)
    scaled = [o for o in rendered(target) if o["kind"] == "ScaledObject"]
    assert scaled
    for document in scaled:
        behavior = document["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        errors = [f"{e.message} at {list(e.path)}" for e in validator.iter_errors(behavior)]
        assert not errors, (target, document["metadata"]["name"], errors)
        assert list(validator.iter_errors({"scaleDown": {"policies": [{"type": "Pods"}]}}))


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_is_hadolint_clean(path: Path):
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_script_is_shellcheck_clean(path: Path):
    result = subprocess.run([tool("shellcheck"), str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
