"""Static checks of the deployment files: Dockerfile, .dockerignore, docker-compose.yml and deploy/.

Every file is parsed with pyyaml (or read as text) and checked against the code it deploys: the
Settings class, RQ's Redis key format, the packages pyproject.toml installs. The base is checked as
written; the overlays are checked after `kubectl kustomize` renders them, where kubectl is installed.
"""

import copy
import hashlib
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from rq import Queue

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "base"
OVERLAYS = sorted(path.name for path in (DEPLOY / "overlays").iterdir() if path.is_dir())
KUSTOMIZE_TREES = (BASE, DEPLOY / "overlays")
DEPLOY_YAML = sorted(p for tree in KUSTOMIZE_TREES for p in [*tree.rglob("*.yaml"), *tree.rglob("*.yml")])

GPU = "nvidia.com/gpu"
GATEWAY = "liveportrait-gateway"
WORKER = "liveportrait-worker"
CONFIGMAP = "liveportrait-config"
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
CLUSTER_SCOPED = ("Namespace",)
QUEUE_KEY_PREFIX = Queue.redis_queue_namespace_prefix
QUEUE_PREFIX = Settings.model_fields["queue_prefix"].default
QUEUES = tuple(f"{QUEUE_PREFIX}-{level}" for level in ("high", "default", "low"))


# --------------------------------------------------------------------------------------------------
# loading


def yaml_documents(path: Path) -> list[dict]:
    with path.open() as stream:
        return [document for document in yaml.safe_load_all(stream) if document is not None]


def kustomization(directory: Path) -> dict:
    (document,) = yaml_documents(directory / "kustomization.yaml")
    return document


def base_objects() -> list[dict]:
    """The base's objects as kustomize emits them (namespace applied), read with pyyaml alone."""
    spec = kustomization(BASE)
    objects = []
    for resource in spec["resources"]:
        for document in yaml_documents(BASE / resource):
            document = copy.deepcopy(document)
            if document["kind"] not in CLUSTER_SCOPED:
                document["metadata"]["namespace"] = spec["namespace"]
            objects.append(document)
    return objects


def kustomize(directory: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: overlays are rendered with `kubectl kustomize`")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], check=True, capture_output=True, text=True, timeout=120
    )
    return [document for document in yaml.safe_load_all(result.stdout) if document is not None]


def rendered(target: str) -> list[dict]:
    return base_objects() if target == "base" else kustomize(DEPLOY / "overlays" / target)


@pytest.fixture(scope="module", params=["base", *OVERLAYS])
def objects(request) -> list[dict]:
    return rendered(request.param)


def find(objects: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]


def one(objects: list[dict], kind: str, name: str) -> dict:
    (found,) = find(objects, kind, name)
    return found


def workloads(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def template_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def config(objects: list[dict]) -> dict:
    return one(objects, "ConfigMap", CONFIGMAP)["data"]


def job_timeout_s(objects: list[dict]) -> int:
    return int(config(objects)["LIVEPORTRAIT_JOB_TIMEOUT_S"])


def setting_name(variable: str) -> str:
    assert variable.startswith("LIVEPORTRAIT_"), variable
    return variable.removeprefix("LIVEPORTRAIT_").lower()


def load_settings(monkeypatch: pytest.MonkeyPatch, variables: dict) -> Settings:
    """Settings read from exactly these LIVEPORTRAIT_ variables, as the processes will read them."""
    for name in Settings.model_fields:
        monkeypatch.delenv(f"LIVEPORTRAIT_{name.upper()}", raising=False)
    for variable, value in variables.items():
        assert setting_name(variable) in Settings.model_fields, f"{variable} is not a setting"
        monkeypatch.setenv(variable, str(value))
    return Settings()


# --------------------------------------------------------------------------------------------------
# kustomize tree, pyyaml only


@pytest.mark.parametrize("path", DEPLOY_YAML, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_document_has_api_version_kind_and_name(path: Path):
    documents = yaml_documents(path)
    assert documents, f"{path} is empty"
    for document in documents:
        assert isinstance(document, dict)
        assert document.get("apiVersion") and document.get("kind"), path
        if document["kind"] != "Kustomization":
            metadata = document.get("metadata", {})
            assert metadata.get("name"), f"{path}: {document['kind']} without a name"
            assert set(metadata) <= {"name", "namespace", "labels", "annotations"}, path


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("kustomization.yaml")), ids=lambda p: p.parent.name)
def test_kustomization_references_exist(path: Path):
    spec = kustomization(path.parent)
    for resource in spec.get("resources", []):
        target = (path.parent / resource).resolve()
        assert target.is_file() or (target / "kustomization.yaml").is_file(), resource
    for patch in spec.get("patches", []):
        assert (path.parent / patch["path"]).is_file(), patch


def test_base_lists_every_manifest_in_its_directory():
    listed = set(kustomization(BASE)["resources"])
    present = {path.name for path in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_on_the_base_and_patches_its_objects(overlay: str):
    directory = DEPLOY / "overlays" / overlay
    spec = kustomization(directory)
    assert [(directory / r).resolve() for r in spec["resources"]] == [BASE.resolve()]
    known = {(o["kind"], o["metadata"]["name"]) for o in base_objects()}
    for patch in spec["patches"]:
        for document in yaml_documents(directory / patch["path"]):
            assert (document["kind"], document["metadata"]["name"]) in known, patch
    images = {image["name"]: image for image in spec["images"]}
    assert set(images) == {image["name"] for image in kustomization(BASE)["images"]}
    assert all(image.get("newTag") for image in images.values())


def test_secret_holds_only_marked_placeholders():
    secret = one(base_objects(), "Secret", "liveportrait-secrets")["stringData"]
    placeholder_digest = hashlib.sha256(b"CHANGE-ME").hexdigest()
    assert json.loads(secret.pop("LIVEPORTRAIT_API_KEYS")) == [placeholder_digest]
    assert secret
    for key, value in secret.items():
        assert "CHANGE-ME" in value, f"{key} holds something other than a marked placeholder"


def test_prod_drops_the_placeholder_secret():
    directory = DEPLOY / "overlays" / "prod"
    patches = [d for p in kustomization(directory)["patches"] for d in yaml_documents(directory / p["path"])]
    assert [p["metadata"]["name"] for p in patches if p.get("$patch") == "delete"] == ["liveportrait-secrets"]
    assert not find(kustomize(directory), "Secret")


def test_settings_read_from_configmap_and_secret(monkeypatch: pytest.MonkeyPatch):
    objects = base_objects()
    secret = one(objects, "Secret", "liveportrait-secrets")["stringData"]
    variables = config(objects) | {k: v for k, v in secret.items() if k.startswith("LIVEPORTRAIT_")}
    settings = load_settings(monkeypatch, variables)
    assert settings.queue_prefix == QUEUE_PREFIX
    assert settings.storage_backend == "s3"
    assert settings.job_timeout_s == job_timeout_s(objects)


# --------------------------------------------------------------------------------------------------
# rendered objects: the base, and each overlay through kustomize


def test_one_namespace(objects):
    namespaces = {o["metadata"].get("namespace") for o in objects if o["kind"] not in CLUSTER_SCOPED}
    assert len(namespaces) == 1 and None not in namespaces


def test_workloads_select_their_pods_and_probe_their_containers(objects):
    for workload in workloads(objects):
        name = workload["metadata"]["name"]
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selects(selector, template_labels(workload)), name
        others = [w for w in workloads(objects) if w is not workload]
        assert not any(selects(selector, template_labels(w)) for w in others), f"{name} selects others"
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in spec["containers"]:
            assert container.get("image"), name
            assert "readinessProbe" in container, name
            assert "livenessProbe" in container or "startupProbe" in container, name
            assert container["resources"]["requests"], name


def test_services_reach_container_ports(objects):
    for service in find(objects, "Service"):
        targets = [w for w in workloads(objects) if selects(service["spec"]["selector"], template_labels(w))]
        assert len(targets) == 1, service["metadata"]["name"]
        ports = [p for c in pod_spec(targets[0])["containers"] for p in c.get("ports", [])]
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert any(target in (p.get("name"), p["containerPort"]) for p in ports), port


def test_gateway_serves_http_with_health_routes(objects):
    (container,) = pod_spec(one(objects, "Deployment", GATEWAY))["containers"]
    (port,) = container["ports"]
    assert str(port["containerPort"]) == config(objects)["LIVEPORTRAIT_PORT"]
    assert config(objects)["LIVEPORTRAIT_HOST"] == "0.0.0.0"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_hpa_targets_the_gateway_deployment(objects):
    (hpa,) = find(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert target["kind"] == "Deployment" and target["name"] == GATEWAY
    deployment = one(objects, "Deployment", target["name"])
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    if any(m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"] if m["type"] == "Resource"):
        assert all(c["resources"]["requests"].get("cpu") for c in pod_spec(deployment)["containers"])


def test_pdb_selects_the_gateway_pods(objects):
    (pdb,) = find(objects, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"])
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert [w["metadata"]["name"] for w in workloads(objects) if selects(selector, template_labels(w))] == [
        GATEWAY
    ]


def test_worker_requests_a_gpu_and_outlives_a_job(objects):
    worker = one(objects, "Deployment", WORKER)
    assert "replicas" not in worker["spec"], "KEDA owns the replica count"
    spec = pod_spec(worker)
    assert spec["terminationGracePeriodSeconds"] >= job_timeout_s(objects)
    (container,) = spec["containers"]
    assert int(container["resources"]["limits"][GPU]) >= 1
    assert "startupProbe" in container and "readinessProbe" in container
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[config(objects)["LIVEPORTRAIT_WEIGHTS_DIR"]].get("readOnly") is True
    assert config(objects)["LIVEPORTRAIT_ENGINE_CACHE_DIR"] in mounts


def test_no_other_workload_takes_a_gpu(objects):
    for workload in workloads(objects):
        if workload["metadata"]["name"] != WORKER:
            for container in pod_spec(workload)["containers"]:
                assert GPU not in container["resources"].get("limits", {})


def test_references_resolve(objects):
    """ConfigMaps, Secrets, PVCs and volumes named by the pods exist (a Secret may be created out of
    band where an overlay drops the base's placeholder), and $(VAR) names an earlier variable."""
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    base_secrets = {o["metadata"]["name"] for o in find(base_objects(), "Secret")}
    for workload in workloads(objects):
        spec = pod_spec(workload)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in claims, mount
            defined = set()
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    name = source["configMapRef"]["name"]
                    assert ("ConfigMap", name) in names
                    defined |= set(one(objects, "ConfigMap", name)["data"])
                else:
                    assert source["secretRef"]["name"] in base_secrets
            for variable in container.get("env", []):
                for reference in re.findall(r"\$\((\w+)\)", variable.get("value", "")):
                    assert reference in defined, f"{variable['name']} uses $({reference}) before it is set"
                if "secretKeyRef" in variable.get("valueFrom", {}):
                    assert variable["valueFrom"]["secretKeyRef"]["name"] in base_secrets
                defined.add(variable["name"])


def test_configmap_holds_only_settings(objects, monkeypatch: pytest.MonkeyPatch):
    settings = load_settings(monkeypatch, config(objects))
    assert settings.queue_prefix == QUEUE_PREFIX, "KEDA's list names are built from the default prefix"


def test_redis_keeps_an_append_only_file_on_a_volume(objects):
    redis = one(objects, "StatefulSet", "liveportrait-redis")
    (container,) = pod_spec(redis)["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/data"
    governing = one(objects, "Service", redis["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"


def test_services_connect_to_the_redis_service(objects):
    for name in (GATEWAY, WORKER):
        (container,) = pod_spec(one(objects, "Deployment", name))["containers"]
        url = {v["name"]: v.get("value") for v in container["env"]}["LIVEPORTRAIT_REDIS_URL"]
        match = re.fullmatch(r"redis://(?::[^@]+@)?([\w.-]+):6379/\d+", url)
        assert match is not None, url
        host = match.group(1)
        assert find(objects, "Service", host), url


def test_keda_scales_the_worker_on_the_rq_queues(objects):
    (scaled,) = find(objects, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == WORKER
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    one(objects, "Deployment", WORKER)
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]

    assert QUEUE_KEY_PREFIX == "rq:queue:"
    prefix = config(objects)["LIVEPORTRAIT_QUEUE_PREFIX"]
    namespace = scaled["metadata"]["namespace"]
    list_names = []
    for trigger in spec["triggers"]:
        assert trigger["type"] == "redis"
        metadata = trigger["metadata"]
        list_names.append(metadata["listName"])
        assert int(metadata["listLength"]) >= 1
        host, port = metadata["address"].rsplit(":", 1)
        service, service_namespace = host.split(".")[:2]
        assert host == f"{service}.{service_namespace}.svc.cluster.local" and service_namespace == namespace
        assert int(port) in [p["port"] for p in one(objects, "Service", service)["spec"]["ports"]]
        auth = one(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        assert [ref["parameter"] for ref in auth["spec"]["secretTargetRef"]] == ["password"]
    assert f"{QUEUE_KEY_PREFIX}{prefix}-default" in list_names
    assert f"{QUEUE_KEY_PREFIX}{prefix}-high" in list_names
    assert set(list_names) <= {f"{QUEUE_KEY_PREFIX}{queue}" for queue in QUEUES}


def test_kustomize_renders_the_base_as_read():
    expected = {(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in base_objects()}
    built = {(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in kustomize(BASE)}
    assert built == expected


# --------------------------------------------------------------------------------------------------
# docker compose


COMPOSE = yaml_documents(ROOT / "docker-compose.yml")[0]
SERVICES = COMPOSE["services"]


def compose_default(value: str) -> str:
    """A compose value with each ${VAR:-default} replaced by its default."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))


def services_running(*command: str) -> list[str]:
    return [name for name, service in SERVICES.items() if service.get("command") == list(command)]


def duration_s(value: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", value)
    assert "".join(n + u for n, u in parts) == value, value
    return sum(float(n) * units[u] for n, u in parts)


def test_compose_gateways_behind_a_load_balancer():
    gateways = services_running("liveportrait", "gateway")
    assert len(gateways) >= 2
    (balancer,) = [n for n, s in SERVICES.items() if compose_default(s.get("image", "")).startswith("nginx:")]
    mount = next(v for v in SERVICES[balancer]["volumes"] if v.endswith(":/etc/nginx/nginx.conf:ro"))
    nginx_conf = (ROOT / mount.split(":")[0]).read_text()
    block = re.search(r"upstream\s+\w+\s*\{(.*?)\}", nginx_conf, re.S)
    assert block is not None, "nginx.conf has no upstream block"
    upstream = block.group(1)
    assert sorted(re.findall(r"server\s+([\w-]+):8000\b", upstream)) == sorted(gateways)
    published = [compose_default(p) for p in SERVICES[balancer]["ports"]]
    listen = re.search(r"\blisten\s+(\d+)", nginx_conf)
    assert listen is not None and listen.group(1) == published[0].rsplit(":", 1)[1]
    for gateway in gateways:
        assert SERVICES[balancer]["depends_on"][gateway]["condition"] == "service_healthy"


def test_compose_redis_appends_to_a_volume():
    redis = SERVICES["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_compose_s3_store_and_bucket_init():
    store = SERVICES["seaweedfs"]
    image = compose_default(store["image"])
    assert image.startswith("chrislusf/seaweedfs:") and not image.endswith(":latest")
    init = SERVICES["s3-init"]
    assert init["depends_on"]["seaweedfs"]["condition"] == "service_healthy"
    assert init["restart"] == "no"
    for service in (init, store):
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).is_file(), source
    script, lifecycle = init["command"][1:]
    assert script.endswith("create_bucket.py")
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in init["volumes"]}
    assert mounts[lifecycle] == "./deploy/s3/lifecycle.json"


def test_compose_app_services_wait_for_redis_and_the_bucket():
    for name in [*services_running("liveportrait", "gateway"), *services_running("liveportrait", "worker")]:
        depends = SERVICES[name]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy", name
        assert depends["s3-init"]["condition"] == "service_completed_successfully", name


def test_compose_gpu_and_cpu_workers():
    workers = services_running("liveportrait", "worker")
    gpu = [w for w in workers if "deploy" in SERVICES[w]]
    cpu = [w for w in workers if "cpu" in SERVICES[w].get("profiles", [])]
    assert len(gpu) == 1 and len(cpu) == 1
    (device,) = SERVICES[gpu[0]]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "profiles" not in SERVICES[gpu[0]]
    assert SERVICES[gpu[0]]["environment"]["LIVEPORTRAIT_DEVICE"] == "cuda"
    assert SERVICES[cpu[0]]["environment"]["LIVEPORTRAIT_DEVICE"] == "cpu"
    assert "deploy" not in SERVICES[cpu[0]]
    for worker in workers:
        environment = SERVICES[worker]["environment"]
        grace = duration_s(SERVICES[worker]["stop_grace_period"])
        assert grace >= int(environment["LIVEPORTRAIT_JOB_TIMEOUT_S"]), worker
        mounts = {v.split(":")[1]: v for v in SERVICES[worker]["volumes"]}
        assert mounts[environment["LIVEPORTRAIT_WEIGHTS_DIR"]].endswith(":ro"), worker


def test_compose_long_running_services_have_healthchecks():
    for name, service in SERVICES.items():
        if service.get("restart") != "no" and "setup" not in service.get("profiles", []):
            assert service["healthcheck"]["test"], name
        for dependency in service.get("depends_on", {}).values():
            assert dependency["condition"] in ("service_healthy", "service_completed_successfully")


def test_compose_volumes_are_declared():
    declared = set(COMPOSE["volumes"])
    mounts = [volume for service in SERVICES.values() for volume in service.get("volumes", [])]
    used = {volume.split(":")[0] for volume in mounts if not volume.startswith((".", "/"))}
    assert used == declared


APP_SERVICES = sorted(
    name
    for name, service in SERVICES.items()
    if any(key.startswith("LIVEPORTRAIT_") for key in service.get("environment", {}))
)


@pytest.mark.parametrize("name", APP_SERVICES)
def test_compose_environment_is_valid_settings(name: str, monkeypatch: pytest.MonkeyPatch):
    environment = SERVICES[name]["environment"]
    variables = {k: compose_default(v) for k, v in environment.items() if k.startswith("LIVEPORTRAIT_")}
    settings = load_settings(monkeypatch, variables)
    assert settings.storage_backend == "s3"
    assert settings.queue_prefix == QUEUE_PREFIX


# --------------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore


def dockerfile() -> tuple[dict[str, str], dict[str, dict]]:
    """Global ARG defaults and the stages: name -> {"from": image or stage, "steps": [(op, args)]}."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    arguments: dict[str, str] = {}
    stages: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op, rest = op.upper(), rest.strip()
        if op == "FROM":
            words = rest.split()
            image = words[0]
            for name, value in arguments.items():
                image = image.replace(f"${{{name}}}", value)
            current = words[2] if len(words) == 3 and words[1].upper() == "AS" else f"stage-{len(stages)}"
            stages[current] = {"from": image, "steps": []}
        elif current is None:
            assert op == "ARG", line
            name, _, value = rest.partition("=")
            arguments[name] = value
        else:
            stages[current]["steps"].append((op, rest))
    return arguments, stages


ARGS, STAGES = dockerfile()


def stage_closure(target: str) -> list[str]:
    """The stage, the stages it builds on and the stages it copies from."""
    found, pending = [], [target]
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found.append(name)
        stage = STAGES[name]
        if stage["from"] in STAGES:
            pending.append(stage["from"])
        for op, rest in stage["steps"]:
            source = re.search(r"--from=(\S+)", rest) if op == "COPY" else None
            if source and source.group(1) in STAGES:
                pending.append(source.group(1))
    return found


def steps(target: str, op: str) -> list[str]:
    return [rest for name in stage_closure(target) for o, rest in STAGES[name]["steps"] if o == op]


def final_steps(target: str, op: str) -> list[str]:
    return [rest for o, rest in STAGES[target]["steps"] if o == op]


def env_values(target: str) -> dict[str, str]:
    values = {}
    for rest in final_steps(target, "ENV"):
        values.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    return values


TARGETS = ("gateway", "worker")
JEMALLOC = "/usr/local/lib/libjemalloc.so.2"


def resolve(text: str) -> str:
    """Global ARG defaults substituted, as Docker does for a build without --build-arg."""
    for name, value in ARGS.items():
        text = text.replace(f"${{{name}}}", value)
    return text


def stage_arguments(stage: str, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """A stage's ARGs as a build sees them: --build-arg values, else defaults (may name earlier ARGs)."""
    values: dict[str, str] = {}
    for rest in [rest for op, rest in STAGES[stage]["steps"] if op == "ARG"]:
        name, _, default = rest.partition("=")
        value = (overrides or {}).get(name) or default or ARGS.get(name, "")
        values[name] = re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), ""), value)
    return values


def test_dockerfile_targets_share_the_python_base():
    assert set(TARGETS) <= set(STAGES)
    for target in TARGETS:
        images = {STAGES[name]["from"] for name in stage_closure(target)} - set(STAGES) - {"scratch"}
        assert images == {ARGS["PYTHON_IMAGE"]}, target
    assert ARGS["PYTHON_IMAGE"].startswith("python:3.11-slim")
    # No CUDA base image: the CUDA wheels bring the libraries, the NVIDIA Container Toolkit the driver.
    assert "compute" in env_values("worker")["NVIDIA_DRIVER_CAPABILITIES"].split(",")


@pytest.mark.parametrize("target", TARGETS)
def test_dockerfile_target_runs_as_the_manifests_non_root_user(target: str):
    users = final_steps(target, "USER")
    assert users, f"{target} runs as root"
    user = resolve(users[-1]).split(":")[0]
    assert user.isdigit() and int(user) != 0, "a numeric non-root uid lets Kubernetes verify runAsNonRoot"
    deployment = one(base_objects(), "Deployment", f"liveportrait-{target}")
    assert pod_spec(deployment)["securityContext"]["runAsUser"] == int(user)


@pytest.mark.parametrize("target", TARGETS)
def test_dockerfile_target_has_healthcheck_and_command(target: str):
    (healthcheck,) = final_steps(target, "HEALTHCHECK")
    match = re.search(r"CMD\s+(\[.*\])", healthcheck)
    assert match is not None, healthcheck
    command = match.group(1)
    assert yaml.safe_load(command) == ["liveportrait-healthcheck", target]
    assert any(rest.endswith(" /usr/local/bin/liveportrait-healthcheck") for rest in steps(target, "COPY"))
    assert yaml.safe_load(final_steps(target, "CMD")[-1]) == ["liveportrait", target]


def pip_installs(target: str) -> list[str]:
    """The arguments of every `pip install` in the target's build."""
    return re.findall(r"pip install ([^&]*)", " ".join(steps(target, "RUN")))


def test_gateway_image_installs_no_torch():
    installs = " ".join(pip_installs("gateway")).lower()
    assert '".[gateway]"' in installs
    for word in ("torch", "tensorrt", "[worker", "engines]", "cuda"):
        assert word not in installs, word
    assert all("torch" not in value.lower() for value in env_values("gateway").values())
    copied = {rest.split()[0] for name in stage_closure("gateway") for op, rest in STAGES[name]["steps"]}
    assert not {"engines", "worker"} & copied, "the gateway installs only common, service and liveportrait"


def worker_build_arguments(service: str) -> dict[str, str]:
    """The worker build's ARGs for a compose service (its build args over the Dockerfile's defaults)."""
    build = SERVICES[service]["build"]
    assert build["target"] == "worker", service
    return stage_arguments("worker-build", build.get("args"))


@pytest.mark.parametrize(("service", "variant"), [("worker-gpu", "cu130"), ("worker-cpu", "cpu")])
def test_compose_worker_builds_its_torch_variant(service: str, variant: str):
    arguments = worker_build_arguments(service)
    assert arguments["TORCH_VERSION"] == ARGS["TORCH_VERSION"]
    assert arguments["TORCH_INDEX_URL"] == f"https://download.pytorch.org/whl/{variant}"
    extras = arguments["WORKER_EXTRAS"].split(",")
    assert "worker" in extras
    assert ("tensorrt" in extras) == (variant != "cpu"), "TensorRT only where there is CUDA"


def test_worker_build_installs_torch_from_its_index_and_checks_its_cuda():
    runs = " ".join(steps("worker", "RUN"))
    assert re.search(r'pip install --index-url "\$\{TORCH_INDEX_URL\}" "torch==\$\{TORCH_VERSION\}"', runs)
    assert "(torch.version.cuda is None) == ('${TORCH_VARIANT}' == 'cpu')" in runs
    assert '".[${WORKER_EXTRAS}]"' in " ".join(pip_installs("worker"))
    pin = re.search(r'"torch>=([\d.]+),<([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin is not None, "pyproject.toml pins torch as a range"
    lower, upper = (tuple(int(n) for n in bound.split(".")) for bound in pin.groups())
    version = tuple(int(n) for n in ARGS["TORCH_VERSION"].split("."))
    assert lower <= version < upper, "TORCH_VERSION within pyproject.toml's range"


def test_worker_image_declares_its_volumes():
    target = "worker"
    volumes = yaml.safe_load(final_steps(target, "VOLUME")[-1])
    env = env_values(target)
    assert {env["LIVEPORTRAIT_WEIGHTS_DIR"], env["LIVEPORTRAIT_ENGINE_CACHE_DIR"]} <= set(volumes)
    manifests = config(base_objects())
    assert env["LIVEPORTRAIT_WEIGHTS_DIR"] == manifests["LIVEPORTRAIT_WEIGHTS_DIR"]
    assert env["LIVEPORTRAIT_ENGINE_CACHE_DIR"] == manifests["LIVEPORTRAIT_ENGINE_CACHE_DIR"]


def test_worker_allocates_with_jemalloc():
    assert env_values("worker")["LD_PRELOAD"] == JEMALLOC
    (setup,) = [rest for rest in final_steps("worker", "RUN") if "apt-get install" in rest]
    assert "libjemalloc2" in setup.split()
    assert f"ln -s \"$(dpkg -L libjemalloc2 | grep '/libjemalloc\\.so\\.2$')\" {JEMALLOC}" in setup


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories wins."""

    def regex(pattern: str) -> str:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                out, i = out + pattern[i : end + 1], end + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return out

    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        expression = regex(pattern.removeprefix("!").strip("/"))
        if any(re.fullmatch(expression, prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def test_build_context_holds_what_the_dockerfile_copies_and_nothing_private():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    sources = set()
    for name in STAGES:
        for op, rest in STAGES[name]["steps"]:
            if op == "COPY" and "--from=" not in rest:
                sources |= {w for w in rest.split()[:-1] if not w.startswith("--")}
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not dockerignore_excludes(source, patterns), source
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    for package in packages["find"]["include"]:
        assert package.rstrip("*") in sources, f"the images lack the package {package}"
    for private in (".git/config", ".venv/bin/python", "tests/conftest.py", "weights/x.pth", ".env"):
        assert dockerignore_excludes(private, patterns), private
    assert dockerignore_excludes("service/__pycache__/settings.cpython-311.pyc", patterns)
