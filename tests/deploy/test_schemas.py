"""The deployment files against real schemas and linters, not only our own field checks.

- Kubernetes objects (the base, and the overlays as `kubectl kustomize` renders them) against the
  official JSON schemas, strict (unknown fields refused), of the oldest and newest Kubernetes release
  the kubernetes-validate package ships offline.
- KEDA objects (ScaledObject, TriggerAuthentication) against the OpenAPI schemas of KEDA's own CRDs,
  copied into tests/deploy/keda/ (SOURCE.md: repository, path, commit), strict as well; and the HPA
  behaviour a ScaledObject hands to the HorizontalPodAutoscaler it creates against Kubernetes's schema
  of that type, whose limits KEDA's copy does not repeat.
- The Dockerfiles with hadolint and the shell scripts with shellcheck (both from PyPI, dev extra).
"""

import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from kubernetes_validate import utils as kubernetes_schemas
from referencing import Registry, Resource

from tests.deploy.test_manifests import DEPLOY, GATEWAY, OVERLAYS, ROOT, base_objects, rendered

KUBERNETES_VERSIONS = (kubernetes_schemas.all_versions()[0], kubernetes_schemas.latest_version())
KEDA_API_GROUP = "keda.sh/"
KEDA_CRDS = Path(__file__).parent / "keda"
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


def strict(schema: dict) -> dict:
    """A CRD's OpenAPI v3 schema as the API server applies it with strict field validation (kubectl's
    default): an object schema that lists its properties, and neither allows other keys nor preserves
    unknown fields, refuses a field it does not list."""
    out = dict(schema)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            out[key] = strict(schema[key])
    if "properties" in schema:
        out["properties"] = {name: strict(value) for name, value in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


def keda_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> a strict validator of that KEDA resource, from the CRDs in tests/deploy/keda."""
    validators = {}
    for path in sorted(KEDA_CRDS.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            for version in crd["spec"]["versions"]:
                key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
                validators[key] = jsonschema.Draft202012Validator(
                    strict(version["schema"]["openAPIV3Schema"])
                )
    return validators


KEDA = keda_validators()


def keda_errors(document: dict) -> list[str]:
    validator = KEDA.get((document["apiVersion"], document["kind"]))
    assert validator is not None, f"no KEDA CRD for {document['apiVersion']} {document['kind']}"
    return [f"{e.message} at {list(e.path)}" for e in validator.iter_errors(document)]


@pytest.mark.parametrize("target", ["base", *OVERLAYS])
def test_keda_objects_match_kedas_crd_schemas(target: str):
    documents = [o for o in rendered(target) if o["apiVersion"].startswith(KEDA_API_GROUP)]
    assert {d["kind"] for d in documents} == {"ScaledObject", "TriggerAuthentication"}
    for document in documents:
        assert not keda_errors(document), (target, document["kind"], keda_errors(document))


def misspell_a_spec_field(objects: dict) -> None:
    objects["ScaledObject"]["spec"]["minReplicaCont"] = objects["ScaledObject"]["spec"].pop("minReplicaCount")


def unquote_a_trigger_number(objects: dict) -> None:
    metadata = objects["ScaledObject"]["spec"]["triggers"][0]["metadata"]
    metadata["listLength"] = int(metadata["listLength"])


def namespace_an_authentication_ref(objects: dict) -> None:
    objects["ScaledObject"]["spec"]["triggers"][0]["authenticationRef"]["namespace"] = "liveportrait"


def drop_a_secret_key(objects: dict) -> None:
    del objects["TriggerAuthentication"]["spec"]["secretTargetRef"][0]["key"]


@pytest.mark.parametrize(
    "mistake",
    [misspell_a_spec_field, unquote_a_trigger_number, namespace_an_authentication_ref, drop_a_secret_key],
)
def test_keda_crd_schemas_refuse_a_wrong_field(mistake):
    objects = {o["kind"]: o for o in base_objects() if o["apiVersion"].startswith(KEDA_API_GROUP)}
    mistake(objects)
    assert any(keda_errors(document) for document in objects.values())


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
