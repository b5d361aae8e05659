"""The direction of imports between our packages (lazy imports inside functions included).

    liveportrait (the CLI) -> worker -> engines -> common
                                     -> service -> common
    bench -> engines, worker, service, common

`common` is the leaf both sides share; `service` never imports torch or the engines (the gateway
image has neither); the engines never import the service or the worker.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("common", "engines", "service", "worker", "liveportrait", "bench")
ALLOWED = {
    "common": set(),
    "engines": {"common"},
    "service": {"common"},
    "worker": {"common", "engines", "service"},
    "liveportrait": {"common", "engines", "service", "worker"},
    "bench": {"common", "engines", "service", "worker"},
}
FORBIDDEN_THIRD_PARTY = {
    "common": {"torch", "numpy", "cv2", "av", "onnx", "onnxruntime", "fastapi", "redis", "rq", "boto3"},
    # numpy too: a dependency of the engines extra only, absent from the gateway image
    "service": {"torch", "numpy", "cv2", "av", "onnx", "onnxruntime"},
}


def imports_of(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, anywhere in the file (relative ones resolved)."""
    package = path.relative_to(ROOT).parts[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(package if node.level else (node.module or "").split(".")[0])
    return names


def package_imports() -> dict[str, dict[str, set[str]]]:
    """package -> {file: top-level names it imports}."""
    return {
        package: {str(f.relative_to(ROOT)): imports_of(f) for f in sorted((ROOT / package).rglob("*.py"))}
        for package in OURS
    }


@pytest.mark.parametrize("package", OURS)
def test_imports_go_one_way(package: str) -> None:
    wrong = {
        file: sorted((names & set(OURS)) - ALLOWED[package] - {package})
        for file, names in package_imports()[package].items()
    }
    assert not {f: n for f, n in wrong.items() if n}, f"{package} may import only {sorted(ALLOWED[package])}"


@pytest.mark.parametrize("package", sorted(FORBIDDEN_THIRD_PARTY))
def test_shared_and_service_stay_free_of_heavy_dependencies(package: str) -> None:
    found = {
        file: sorted(names & FORBIDDEN_THIRD_PARTY[package])
        for file, names in package_imports()[package].items()
    }
    assert not {f: n for f, n in found.items() if n}


def test_no_cycle_between_packages() -> None:
    graph = {p: set().union(*package_imports()[p].values()) & set(OURS) - {p} for p in OURS}
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        assert node not in visiting, f"import cycle: {' -> '.join([*path, node])}"
        if node in done:
            return
        visiting.add(node)
        for nxt in sorted(graph[node]):
            visit(nxt, [*path, node])
        visiting.discard(node)
        done.add(node)

    for package in OURS:
        visit(package, [])


def test_the_gateway_loads_without_torch_or_the_engines() -> None:
    code = (
        "import sys; import service.gateway.app, service.client, service.settings; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'engines', 'worker', 'cv2')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
