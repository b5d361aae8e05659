"""Weight bundles: the official layout, strict loading with clear errors, and synthetic bundles."""

import importlib.util
from pathlib import Path

import pytest
import torch

from engines.model import LivePortraitModel
from engines.weights import (
    MODULES,
    WeightsError,
    check_bundle,
    load_state_dicts,
    manifest,
    synthetic_state_dict,
    write_synthetic_bundle,
)

SHARED_GENERATOR = Path(__file__).parents[3] / "shared" / "oracle" / "synthetic_weights.py"
BASE = "liveportrait/base_models"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_bundle(tmp_path_factory.mktemp("bundle"), seed=3)


@pytest.mark.parametrize("module", MODULES)
def test_state_dicts_match_the_manifest_exactly(module):
    ours = getattr(LivePortraitModel(), module).state_dict()
    expected = manifest()[module]
    assert set(ours) == set(expected)
    for key, tensor in ours.items():
        shape, dtype = expected[key]
        assert tuple(tensor.shape) == shape, key
        assert str(tensor.dtype).removeprefix("torch.") == dtype, key


def test_official_bundle_loads_strictly(bundle):
    model = LivePortraitModel.from_weights(bundle)
    want = synthetic_state_dict("warping_module", 3)
    got = model.warping_module.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert any("ok" in line for line in check_bundle(bundle))


def test_module_prefix_is_stripped(bundle, tmp_path):
    copy = write_synthetic_bundle(tmp_path, seed=3)
    path = copy / BASE / "spade_generator.pth"
    state = torch.load(path, weights_only=True)
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    assert set(load_state_dicts(copy)["spade_generator"]) == set(manifest()["spade_generator"])


def test_safetensors_files_are_read(tmp_path):
    from safetensors.torch import save_file

    bundle = write_synthetic_bundle(tmp_path, seed=1)
    path = bundle / BASE / "motion_extractor.pth"
    save_file(torch.load(path, weights_only=True), str(path.with_suffix(".safetensors")))
    path.unlink()
    retarget = bundle / "liveportrait/retargeting_models/stitching_retargeting_module.pth"
    nested = torch.load(retarget, weights_only=True)
    flat = {f"{head}.{k}": v for head, sd in nested.items() for k, v in sd.items()}
    save_file(flat, str(retarget.with_suffix(".safetensors")))
    retarget.unlink()
    states = load_state_dicts(bundle)
    assert torch.equal(states["eye"]["mlp.0.weight"], synthetic_state_dict("eye", 1)["mlp.0.weight"])
    assert torch.equal(
        states["motion_extractor"]["detector.fc_kp.bias"],
        synthetic_state_dict("motion_extractor", 1)["detector.fc_kp.bias"],
    )


def test_missing_file_names_the_file(tmp_path):
    bundle = write_synthetic_bundle(tmp_path, seed=0)
    (bundle / BASE / "warping_module.pth").unlink()
    with pytest.raises(WeightsError, match="warping_module"):
        load_state_dicts(bundle)


def test_partial_bundle_names_missing_unexpected_and_misshaped_keys(tmp_path):
    bundle = write_synthetic_bundle(tmp_path, seed=0)
    path = bundle / BASE / "appearance_feature_extractor.pth"
    state = torch.load(path, weights_only=True)
    del state["second.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["first.conv.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(state, path)
    with pytest.raises(WeightsError) as err:
        load_state_dicts(bundle)
    message = str(err.value)
    assert str(path) in message
    assert "missing keys: second.bias" in message
    assert "unexpected keys: extra.weight" in message
    assert "first.conv.weight: (64, 3, 5, 5) != (64, 3, 3, 3)" in message


def test_missing_retargeting_entry(tmp_path):
    bundle = write_synthetic_bundle(tmp_path, seed=0)
    path = bundle / "liveportrait/retargeting_models/stitching_retargeting_module.pth"
    state = torch.load(path, weights_only=True)
    del state["retarget_eye"]
    torch.save(state, path)
    with pytest.raises(WeightsError, match="retarget_eye"):
        load_state_dicts(bundle)


def test_a_pickle_with_code_is_refused(tmp_path):
    bundle = write_synthetic_bundle(tmp_path, seed=0)
    path = bundle / BASE / "spade_generator.pth"
    torch.save({"fc.weight": torch.zeros(1), "callback": print}, path)  # not loadable with weights_only
    with pytest.raises(WeightsError, match="not a readable state dict"):
        load_state_dicts(bundle)


@pytest.mark.skipif(not SHARED_GENERATOR.is_file(), reason="../shared/oracle is not present (fresh clone)")
@pytest.mark.parametrize("seed", [0, 7])
def test_synthetic_bundle_is_bit_identical_to_the_shared_generator(tmp_path, seed):
    spec = importlib.util.spec_from_file_location("oracle_synthetic_weights", SHARED_GENERATOR)
    assert spec is not None and spec.loader is not None
    oracle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(oracle)
    theirs = oracle.write_bundle(tmp_path / "theirs", seed)
    ours = write_synthetic_bundle(tmp_path / "ours", seed)
    for rel in sorted(p.relative_to(theirs) for p in theirs.rglob("*.pth")):
        a = torch.load(theirs / rel, weights_only=True)
        b = torch.load(ours / rel, weights_only=True)
        flat_a = (
            {f"{h}.{k}": v for h, sd in a.items() for k, v in sd.items()} if "retarget" in str(rel) else a
        )
        flat_b = (
            {f"{h}.{k}": v for h, sd in b.items() for k, v in sd.items()} if "retarget" in str(rel) else b
        )
        assert flat_a.keys() == flat_b.keys(), rel
        for key in flat_a:
            theirs_t, ours_t = flat_a[key], flat_b[key]
            if key.endswith("num_batches_tracked"):
                # the oracle generator's np.ascontiguousarray turns the 0-d counter into shape (1,);
                # ours keeps the manifest's () and the loader accepts both
                assert theirs_t.shape == (1,) and ours_t.shape == ()
                theirs_t = theirs_t.reshape(())
            assert theirs_t.dtype == ours_t.dtype and theirs_t.shape == ours_t.shape, key
            assert torch.equal(theirs_t, ours_t), f"{rel}: {key}"
    LivePortraitModel.from_weights(theirs)  # the oracle's bundle loads strictly too
