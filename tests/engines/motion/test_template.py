"""engines.motion.template: the safe .npz format and the opt-in import of official pickles."""

import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engines.media import MediaError, write_test_video
from engines.motion.template import (
    META_KEY,
    MotionTemplate,
    is_motion_template,
    load_motion_template,
    load_official_pickle,
    load_template,
    save_template,
    template_kind,
)
from tests.templates import random_template


def official_dict(template: MotionTemplate, legacy: bool = False) -> dict:
    """The layout written by the official make_motion_template (batch dim of 1 everywhere)."""
    assert template.kp is not None and template.x_s is not None, "a full template (random_template)"
    assert template.c_eyes is not None and template.c_lip is not None, "a full template (random_template)"
    motion = []
    for i in range(template.n_frames):
        item = {
            "scale": template.scale[i][None],
            "R_d" if legacy else "R": template.R[i][None],
            "exp": template.exp[i][None],
            "t": template.t[i][None],
        }
        if not legacy:
            item |= {"kp": template.kp[i][None], "x_s": template.x_s[i][None]}
        motion.append(item)
    eyes, lip = ("c_d_eyes_lst", "c_d_lip_lst") if legacy else ("c_eyes_lst", "c_lip_lst")
    return {
        "n_frames": template.n_frames,
        "output_fps": 30,
        "motion": motion,
        eyes: [template.c_eyes[i][None] for i in range(template.n_frames)],
        lip: [template.c_lip[i][None] for i in range(template.n_frames)],
    }


def rewrite_entries(src: Path, dst: Path, **changes: np.ndarray | None) -> Path:
    """Copy a saved template, replacing (or with None, dropping) some entries."""
    with np.load(src, allow_pickle=False) as npz:
        entries = {key: npz[key] for key in npz.files}
    for key, value in changes.items():
        if value is None:
            entries.pop(key)
        else:
            entries[key] = value
    with open(dst, "wb") as fh:
        np.savez(fh, **entries)
    return dst


def meta_array(**meta: object) -> np.ndarray:
    return np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)


def bad(call, *args, **kwargs) -> str:
    with pytest.raises(MediaError) as info:
        call(*args, **kwargs)
    assert info.value.code == "bad_template"
    return info.value.message


@pytest.mark.parametrize("full", [True, False])
def test_round_trip(tmp_path: Path, full: bool) -> None:
    template = random_template(full=full)
    path = tmp_path / "motion.lpt"
    save_template(path, template)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["motion.lpt"]
    assert template_kind(path) == "npz" and is_motion_template(path)

    loaded = load_template(path)
    assert (loaded.fps, loaded.n_frames, loaded.source_name) == (30.0, 6, "driving.mp4")
    assert loaded.arrays().keys() == template.arrays().keys()
    for name, array in template.arrays().items():
        assert getattr(loaded, name).dtype == np.float32
        assert np.array_equal(getattr(loaded, name), array)
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(npz[META_KEY].tobytes())
    assert meta == {
        "format": "liveportrait-motion",
        "version": 1,
        "fps": 30.0,
        "n_frames": 6,
        "source": "driving.mp4",
    }


def test_construction_converts_and_validates() -> None:
    template = random_template()
    assert all(a.dtype == np.float32 and a.flags.c_contiguous for a in template.arrays().values())

    def build(**override: Any) -> MotionTemplate:
        fields: dict[str, Any] = {"fps": 25, "exp": np.zeros((2, 21, 3)), "R": np.zeros((2, 3, 3))}
        fields |= {"scale": np.ones((2, 1)), "t": np.zeros((2, 3))}
        return MotionTemplate(**fields | override)

    assert build().n_frames == 2
    assert "shape" in bad(build, exp=np.zeros((2, 20, 3)))
    assert "shape" in bad(build, R=np.zeros((3, 3, 3)))
    assert "shape" in bad(build, c_lip=np.zeros((2, 2)))
    assert "NaN" in bad(build, t=np.array([[0, 0, 0], [0, np.nan, 0]]))
    assert "fps" in bad(build, fps=0)
    assert build(fps=np.float32(29.97)).fps == pytest.approx(29.97)
    assert "numeric" in bad(build, t=[["a", "b", "c"]] * 2)
    assert "frames" in bad(build, exp=np.zeros((0, 21, 3)))


def test_tampered_templates_are_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.npz"
    save_template(good, random_template())
    n = 6
    meta = {"format": "liveportrait-motion", "version": 1, "fps": 25, "n_frames": n}
    cases: list[tuple[dict[str, np.ndarray | None], str]] = [
        ({"payload": np.zeros(3)}, "unexpected entries"),
        ({"exp": None}, "no 'exp' array"),
        ({"t": np.zeros((n, 3))}, "t must be <f4, got <f8"),
        ({"t": np.zeros((n + 1, 3), np.float32)}, "must have shape (6, 3)"),
        ({"scale": np.array([None] * n, dtype=object)}, "holds Python objects"),
        ({"scale": np.full((n, 1), np.inf, np.float32)}, "infinite"),
        ({META_KEY: meta_array(**meta | {"version": 2})}, "unsupported template version"),
        ({META_KEY: meta_array(**meta | {"format": "other"})}, "does not name the liveportrait-motion"),
        ({META_KEY: meta_array(**meta | {"n_frames": -1})}, "invalid n_frames"),
        ({META_KEY: np.frombuffer(b"\xff\xfe{", dtype=np.uint8)}, "not UTF-8 JSON"),
    ]
    for i, (changes, reason) in enumerate(cases):
        path = rewrite_entries(good, tmp_path / f"case{i}.npz", **changes)
        assert reason in bad(load_template, path)


def test_huge_declared_shape_is_refused_before_reading(tmp_path: Path) -> None:
    good = tmp_path / "good.npz"
    save_template(good, random_template())
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 21, 3)}
    )
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            if name == "exp.npy":
                dst.writestr(name, header.getvalue())
            else:
                dst.writestr(name, src.read(name))
    assert "shape" in bad(load_template, path)


def test_other_files_are_not_templates(tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    write_test_video(video, [np.zeros((16, 16, 3), np.uint8)] * 2, with_audio=False)
    plain_npz = tmp_path / "plain.npz"
    np.savez(plain_npz, exp=np.zeros((1, 21, 3), np.float32))
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    for path in (video, plain_npz, text):
        assert template_kind(path) is None and not is_motion_template(path)
        assert "not a motion template" in bad(load_template, path)


def test_pickles_need_trust(tmp_path: Path) -> None:
    path = tmp_path / "d0.pkl"
    path.write_bytes(pickle.dumps(official_dict(random_template()), protocol=4))
    assert template_kind(path) == "pickle" and is_motion_template(path)
    assert "--trust-pickle" in bad(load_template, path)
    assert "--trust-pickle" in bad(load_official_pickle, path, trust_pickle=False)
    assert "--trust-pickle" in bad(load_motion_template, path)


@pytest.mark.parametrize("legacy", [False, True])
def test_official_pickle_loads_with_trust(tmp_path: Path, legacy: bool) -> None:
    template = random_template(n=5)
    path = tmp_path / "d0.pkl"
    path.write_bytes(pickle.dumps(official_dict(template, legacy=legacy), protocol=2 if legacy else 5))

    loaded = load_official_pickle(path, trust_pickle=True)
    assert (loaded.n_frames, loaded.fps, loaded.source_name) == (5, 30.0, "d0.pkl")
    assert loaded.exp.shape == (5, 21, 3) and loaded.R.shape == (5, 3, 3)
    assert loaded.scale.shape == (5, 1) and loaded.t.shape == (5, 3)
    assert loaded.c_eyes is not None and loaded.c_eyes.shape == (5, 2)
    assert loaded.c_lip is not None and loaded.c_lip.shape == (5, 1)
    names = ("exp", "R", "scale", "t", "c_eyes", "c_lip") if legacy else tuple(template.arrays())
    for name in names:
        assert np.array_equal(getattr(loaded, name), getattr(template, name)), name
    assert (loaded.kp is None) == legacy and (loaded.x_s is None) == legacy

    converted = tmp_path / "d0.npz"
    save_template(converted, loaded)
    assert np.array_equal(load_motion_template(converted).exp, template.exp)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.write_text, (self.marker, "pwned"))


def test_trusted_pickle_still_cannot_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    data = official_dict(random_template(n=2))
    data["motion"][0]["exp"] = _Exploit(marker)
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(data))
    assert "not allowed" in bad(load_official_pickle, path, trust_pickle=True)
    assert not marker.exists()


def test_official_layout_is_checked(tmp_path: Path) -> None:
    base = official_dict(random_template(n=3))
    cases = [
        ([1, 2, 3], "official template layout"),
        ({"n_frames": 3}, "official template layout"),
        (base | {"n_frames": 4}, "n_frames is 4"),
        (
            base | {"motion": [{k: v for k, v in m.items() if k != "R"} for m in base["motion"]]},
            "'R' is missing",
        ),
        (base | {"c_eyes_lst": base["c_eyes_lst"][:2]}, "one entry per frame"),
        (base | {"motion": [m | {"t": np.zeros((1, 4))} for m in base["motion"]]}, "3 numbers each"),
    ]
    for i, (data, reason) in enumerate(cases):
        path = tmp_path / f"case{i}.pkl"
        path.write_bytes(pickle.dumps(data))
        assert reason in bad(load_official_pickle, path, trust_pickle=True)
