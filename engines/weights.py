"""The official LivePortrait weight bundle: layout, strict loading, checking and synthetic bundles.

Layout under a weights directory (the official release):
  liveportrait/base_models/{appearance_feature_extractor,motion_extractor,warping_module,spade_generator}.pth
  liveportrait/retargeting_models/stitching_retargeting_module.pth
      (retarget_shoulder -> stitching, retarget_mouth -> lip, retarget_eye -> eye)
`.safetensors` files with the same stem are read too; a `module.` key prefix is stripped.
"""

import json
import math
import zlib
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.engine_config import Detector
from engines.face.detection import BLAZEFACE_FILE, LICENCES, OFFICIAL_MODEL_FILES, choose_stack

MANIFEST_PATH = Path(__file__).parent / "data" / "manifest.json"
BASE_MODULES = ("appearance_feature_extractor", "motion_extractor", "warping_module", "spade_generator")
RETARGETING_FILE = "stitching_retargeting_module"
RETARGETING_KEYS = {"retarget_shoulder": "stitching", "retarget_mouth": "lip", "retarget_eye": "eye"}
MODULES = (*BASE_MODULES, *RETARGETING_KEYS.values())


class WeightsError(Exception):
    """A weight bundle that is missing, partial or does not match the official layout."""

    code = "bad_weights"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@cache
def manifest() -> dict[str, dict[str, tuple[tuple[int, ...], str]]]:
    """Every official state dict: module -> key -> (shape, dtype)."""
    raw = json.loads(MANIFEST_PATH.read_text())
    return {m: {k: (tuple(shape), dt) for k, (shape, dt) in keys.items()} for m, keys in raw.items()}


def checkpoint_path(weights_dir: Path, stem: str) -> Path:
    """The file holding `stem` (a base module or the retargeting file), .pth or .safetensors."""
    folder = "base_models" if stem in BASE_MODULES else "retargeting_models"
    base = Path(weights_dir) / "liveportrait" / folder / stem
    for suffix in (".pth", ".safetensors"):
        if base.with_suffix(suffix).is_file():
            return base.with_suffix(suffix)
    raise WeightsError(f"missing checkpoint {base}.pth (or .safetensors) under {weights_dir}")


def _read(path: Path) -> Mapping[str, Any]:
    """A checkpoint's top-level mapping: key -> tensor (a state dict), or key -> state dict (the
    retargeting bundle). Untyped as torch.load's result is: validate_state_dict checks it."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or non-state-dict file
        raise WeightsError(f"{path}: not a readable state dict ({exc})") from exc


def _normalise(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip a `module.` prefix; store BatchNorm's unused one-element counter as the official scalar
    (some writers, the oracle's synthetic generator among them, save it with shape (1,))."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.endswith("num_batches_tracked") and value.numel() == 1:
            value = value.reshape(())
        out[key] = value
    return out


def validate_state_dict(module: str, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise WeightsError naming the file and every missing, unexpected or mis-shaped key."""
    expected = manifest()[module]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [
        f"{k}: {tuple(state[k].shape)} != {expected[k][0]}"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k][0]
    ]
    if missing or unexpected or misshaped:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                parts.append(f"{label} keys: {shown}")
        raise WeightsError(f"{source} ({module}): " + "; ".join(parts))


def load_state_dicts(weights_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Read and validate every module's state dict from an official-layout bundle."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for module in BASE_MODULES:
        path = checkpoint_path(weights_dir, module)
        out[module] = _normalise(_read(path))
        validate_state_dict(module, out[module], str(path))
    path = checkpoint_path(weights_dir, RETARGETING_FILE)
    bundle = _read(path)
    if path.suffix == ".safetensors":  # flat: retarget_eye.mlp.0.weight, ...
        grouped: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in bundle.items():
            head, _, rest = key.partition(".")
            grouped.setdefault(head, {})[rest] = value
        bundle = grouped
    for ckpt_key, module in RETARGETING_KEYS.items():
        if ckpt_key not in bundle:
            raise WeightsError(f"{path}: missing entry {ckpt_key!r} ({module} MLP)")
        out[module] = _normalise(bundle[ckpt_key])
        validate_state_dict(module, out[module], f"{path}[{ckpt_key}]")
    return out


def check_bundle(weights_dir: Path, detector: Detector = "auto") -> list[str]:
    """Check a bundle against the manifest and say which face stack `detector` takes there, with
    the licence of each face model; returns human-readable lines, raises WeightsError."""
    states = load_state_dicts(weights_dir)
    lines = []
    for module, state in states.items():
        n = sum(v.numel() for v in state.values())
        lines.append(f"{module}: {len(state)} tensors, {n / 1e6:.2f} M values, ok")
    for name in (*OFFICIAL_MODEL_FILES.values(), BLAZEFACE_FILE):
        present = (Path(weights_dir) / name).is_file()
        lines.append(f"{name}: {'present' if present else 'absent'} ({LICENCES[name]})")
    try:
        stack = choose_stack(weights_dir, detector)
    except FileNotFoundError as err:
        raise WeightsError(f"detector {detector}: {err}") from err
    lines.append(f"detector {detector} -> {stack.describe()}")
    return lines


# --- synthetic bundles (the rule of the oracle README, reproduced bit for bit) -------------------


def _synthetic_array(seed: int, module: str, key: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(f"{module}/{key}".encode())])
    last = key.rsplit(".", 1)[-1]
    if dtype == "int64":
        return np.zeros(shape, dtype=np.int64)
    if last == "running_mean":
        return 0.1 * rng.standard_normal(shape)
    if last == "running_var":
        return 0.5 + rng.random(shape)
    if last in ("gamma", "beta"):
        return 0.1 * rng.standard_normal(shape)
    if len(shape) >= 2:
        return rng.standard_normal(shape) / math.sqrt(math.prod(shape[1:]))
    if last == "weight":
        return 1.0 + 0.1 * rng.standard_normal(shape)
    return 0.1 * rng.standard_normal(shape)


def synthetic_state_dict(module: str, seed: int) -> dict[str, torch.Tensor]:
    """A seeded synthetic state dict for `module` with the official keys, shapes and dtypes."""
    spec = manifest()[module]
    arrays = {k: _synthetic_array(seed, module, k, shape, dt) for k, (shape, dt) in spec.items()}
    for key in spec:
        if key.endswith(".weight_orig"):
            stem = key.removesuffix("_orig")
            w = arrays[key].reshape(arrays[key].shape[0], -1)
            u = arrays[stem + "_u"]
            for _ in range(20):  # power iteration, so that (u, v) estimate the spectral norm
                v = w.T @ u
                v /= np.linalg.norm(v) + 1e-12
                u = w @ v
                u /= np.linalg.norm(u) + 1e-12
            arrays[stem + "_u"], arrays[stem + "_v"] = u, v
    return {
        k: torch.from_numpy(
            np.ascontiguousarray(arrays[k].astype(np.int64 if dt == "int64" else np.float32)).reshape(shape)
        )
        for k, (shape, dt) in spec.items()
    }


def write_synthetic_bundle(out_dir: Path, seed: int = 0) -> Path:
    """Write a synthetic bundle in the official layout under `out_dir` (meaningless pixels: tests only)."""
    out_dir = Path(out_dir)
    base = out_dir / "liveportrait" / "base_models"
    retarget = out_dir / "liveportrait" / "retargeting_models"
    base.mkdir(parents=True, exist_ok=True)
    retarget.mkdir(parents=True, exist_ok=True)
    for module in BASE_MODULES:
        torch.save(synthetic_state_dict(module, seed), base / f"{module}.pth")
    torch.save(
        {ckpt: synthetic_state_dict(module, seed) for ckpt, module in RETARGETING_KEYS.items()},
        retarget / f"{RETARGETING_FILE}.pth",
    )
    return out_dir
