"""Download the official LivePortrait bundle from the Hugging Face model hub (needs internet).

Files are fetched over HTTPS into a temporary name and renamed when complete, so an interrupted
download never leaves a truncated checkpoint behind. The InsightFace detector models are for
non-commercial use only; they are fetched only when asked for.
"""

import shutil
import urllib.request
from pathlib import Path

HUB = "https://huggingface.co"
MODEL_FILES = (
    "liveportrait/base_models/appearance_feature_extractor.pth",
    "liveportrait/base_models/motion_extractor.pth",
    "liveportrait/base_models/warping_module.pth",
    "liveportrait/base_models/spade_generator.pth",
    "liveportrait/retargeting_models/stitching_retargeting_module.pth",
)
LANDMARK_FILES = (
    "liveportrait/landmark.onnx",
    "insightface/models/buffalo_l/det_10g.onnx",
    "insightface/models/buffalo_l/2d106det.onnx",
)


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
    """Fetch the checkpoints (and, if asked, the non-commercial detector models) into out_dir."""
    names = MODEL_FILES + (LANDMARK_FILES if include_insightface else ())
    written = []
    for name in names:
        dest = Path(out_dir) / name
        if dest.is_file():
            continue
        print(f"downloading {name}")
        written.append(download_file(file_url(repo, name, hub), dest))
    return written
