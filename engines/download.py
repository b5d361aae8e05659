"""Download the official LivePortrait bundle from the Hugging Face model hub (needs internet).

Files are fetched over HTTPS into a temporary name and renamed when complete, so an interrupted
download never leaves a truncated checkpoint behind. By default the bundle is licence-clean: the
checkpoints and LivePortrait's 203-point landmark model (MIT). The InsightFace detector models are
for non-commercial use only; they are fetched only when asked for (docs/models.md). BlazeFace
(Apache-2.0), a second licence-clean face box detector, comes from the mediapipe wheel on PyPI,
fetched with pip when asked for.
"""

import hashlib
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from engines.face.detection import BLAZEFACE_FILE, INSIGHTFACE_FILES, LANDMARK203_FILE

HUB = "https://huggingface.co"
MODEL_FILES = (
    "liveportrait/base_models/appearance_feature_extractor.pth",
    "liveportrait/base_models/motion_extractor.pth",
    "liveportrait/base_models/warping_module.pth",
    "liveportrait/base_models/spade_generator.pth",
    "liveportrait/retargeting_models/stitching_retargeting_module.pth",
    LANDMARK203_FILE,
)
"""What is fetched by default: LivePortrait's own files (MIT)."""


def file_url(repo: str, name: str, hub: str = HUB) -> str:
    """The hub's download address of one file of a model repository."""
    return f"{hub.rstrip('/')}/{repo}/resolve/main/{name}"


def download_file(url: str, dest: Path, timeout: float = 60.0) -> Path:
    """Fetch url into dest atomically (dest.part, then rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url, timeout=timeout) as response, part.open("wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)
    part.replace(dest)
    return dest


def download_bundle(
    out_dir: Path, repo: str = "KwaiVGI/LivePortrait", include_insightface: bool = False, hub: str = HUB
) -> list[Path]:
    """Fetch the checkpoints and landmark.onnx (and, if asked, the non-commercial InsightFace
    models) into out_dir."""
    names = MODEL_FILES + (tuple(INSIGHTFACE_FILES.values()) if include_insightface else ())
    written = []
    for name in names:
        dest = Path(out_dir) / name
        if dest.is_file():
            continue
        print(f"downloading {name}")
        written.append(download_file(file_url(repo, name, hub), dest))
    return written


MEDIAPIPE_WHEEL = "mediapipe==0.10.21"
"""The last mediapipe release whose wheels hold the BlazeFace model file; any platform's wheel has
the same file, so one is named for pip."""
MEDIAPIPE_PLATFORM = ("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11")
BLAZEFACE_IN_WHEEL = "mediapipe/modules/face_detection/face_detection_short_range.tflite"
BLAZEFACE_SHA256 = "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"


def extract_blazeface(wheel: Path, dest: Path, sha256: str = BLAZEFACE_SHA256) -> Path:
    """Copy BlazeFace's model out of a mediapipe wheel into dest (atomically), checking its digest."""
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(BLAZEFACE_IN_WHEEL)
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ValueError(f"{wheel}: {BLAZEFACE_IN_WHEEL} has sha256 {digest}, expected {sha256}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    part.write_bytes(data)
    part.replace(dest)
    return dest


def download_blazeface(out_dir: Path) -> Path:
    """Fetch the mediapipe wheel with pip (no dependencies) and extract BlazeFace into out_dir."""
    dest = Path(out_dir) / BLAZEFACE_FILE
    if dest.is_file():
        return dest
    print(f"downloading {MEDIAPIPE_WHEEL} (for {BLAZEFACE_FILE})")
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        subprocess.run([*pip, *MEDIAPIPE_PLATFORM, "--dest", tmp, MEDIAPIPE_WHEEL], check=True)
        (wheel,) = Path(tmp).glob("mediapipe-*.whl")
        return extract_blazeface(wheel, dest)
