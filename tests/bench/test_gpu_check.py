"""bench.gpu_check: the quick run on this CPU (as on any CI machine), the wheels it carries, its limits.

The full check needs a CUDA device (docs/benchmarks.md, "GPU check"); --quick runs its CPU steps at
their smallest sizes so that the command, its steps and its result files keep working.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpu_check


def test_quick_run_writes_every_step_to_its_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "run", "--quick", "--out", str(out)],
        cwd=gpu_check.ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    steps = report["steps"]
    assert report["device"] == "cpu" and list(steps) == list(gpu_check.STEPS)
    for name, (_, _, quick_skip) in gpu_check.STEPS.items():
        expected = "skipped" if quick_skip else "ok"
        assert steps[name]["status"] == expected, (name, steps[name])
    (golden,) = steps["golden"]["result"]["rows"]
    assert golden["case"] == "fp32" and golden["within"] and 0 < golden["rel_l2"][0] <= golden["bound"]
    assert steps["cuda_tests"]["result"]["exit_code"] == 0 and steps["cuda_tests"]["result"]["tests"] > 0
    assert steps["pasteback"]["result"]["equal"]
    text = (out / "gpu_check.txt").read_text()
    assert "===== golden: ok" in text and "rel L2 per golden frame" in text and "===== summary" in text
    assert (out / "cuda_tests.xml").is_file()


def test_wheels_are_the_installed_versions_for_python_3_12(monkeypatch: pytest.MonkeyPatch) -> None:
    versions = {name: f"1.{i}" for i, name in enumerate(gpu_check.WHEEL_PACKAGES)}
    monkeypatch.setattr(gpu_check.importlib.metadata, "version", versions.__getitem__)
    cmd = gpu_check.download_command(Path("/tmp/wheels"))
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "--only-binary=:all:" in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.12" and "manylinux2014_x86_64" in cmd
    assert cmd[-len(versions) :] == [f"{name}=={v}" for name, v in versions.items()]


def write_wheels(dest: Path, names: list[str], size: int = 10) -> None:
    dest.mkdir(exist_ok=True)
    for name in names:
        with (dest / f"{name.replace('-', '_')}-1.0-py3-none-any.whl").open("wb") as f:
            f.truncate(size)


def test_check_wheels_wants_one_of_each_within_the_limit(tmp_path: Path) -> None:
    names = list(gpu_check.WHEEL_PACKAGES)
    write_wheels(tmp_path / "ok", names)
    assert gpu_check.check_wheels(tmp_path / "ok") == 10 * len(names)
    write_wheels(tmp_path / "missing", names[1:])
    with pytest.raises(SystemExit, match="one wheel of each"):
        gpu_check.check_wheels(tmp_path / "missing")
    write_wheels(tmp_path / "big", names, size=gpu_check.WHEELS_MAX_BYTES)
    with pytest.raises(SystemExit, match="MiB of wheels"):
        gpu_check.check_wheels(tmp_path / "big")


def test_a_run_without_wheels_says_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"bench\.gpu_check wheels"):
        gpu_check.install_wheels(tmp_path, tmp_path / "site")


def test_a_step_past_its_limit_is_killed_with_its_children(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    script = (
        "import subprocess; p = subprocess.Popen(['sleep', '600']); "
        f"open({str(marker)!r}, 'w').write(str(p.pid)); p.wait()"
    )
    status = gpu_check._run_limited([sys.executable, "-c", script], 10, {}, tmp_path / "log")
    assert status == "timeout"
    child = int(marker.read_text())
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
