"""ONNX export: every graph parses into TensorRT (check_graph), has a dynamic batch axis and runs in
onnxruntime; the fp16 graphs keep M and the I/O in float32 and stay within 1e-2 of the float32 golden
outputs; backend selection and the `engines` CLI.

Exports take tens of seconds on a small CPU: the float32 export of the golden weights is made once
per session (`golden_utils.golden_export_dir`, shared with the onnxruntime golden tests).
"""

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from common.options import AnimationOptions
from engines.acceleration.backends import BackendError, select
from engines.acceleration.backends.onnxruntime_backend import OnnxRuntimeModel
from engines.acceleration.backends.select import (
    ensure_onnx_export,
    load_backend,
    onnx_cache_name,
    resolve_backend,
)
from engines.acceleration.export import (
    EXPORT_VERSION,
    GRAPHS,
    MANIFEST_NAME,
    MOTION_OUTPUTS,
    cpu_has_native_float16,
    export_onnx,
    model_weights_hash,
    read_manifest,
    trace_device,
    weights_hash,
)
from engines.acceleration.onnx_check import check_graph
from engines.demo import write_demo_inputs
from engines.model import LivePortraitModel, image_to_tensor
from engines.request import AnimateRequest
from engines.weights import load_state_dicts
from liveportrait.cli_engines import add_engines_commands, cmd_build, cmd_export
from tests.engines.factory import cpu_animator
from tests.engines.golden_utils import assert_close_sampled, golden_export_dir, rel_l2

FP16_REL_L2 = 1e-2


@pytest.fixture(scope="module")
def fp32_dir(golden_model, tmp_path_factory) -> Path:
    return golden_export_dir(golden_model, tmp_path_factory, "fp32")


@pytest.fixture(scope="module")
def fp16_dir(golden_model, tmp_path_factory) -> Path:
    if trace_device("fp16").type == "cpu" and not cpu_has_native_float16():
        pytest.skip(
            "no CUDA device and no native float16 on this CPU (AVX512-FP16/AMX-FP16): tracing the fp16 "
            "islands would compute float16 convolutions on torch's reference path, for hours; these "
            "tests run on the device machine and on CPUs with native float16"
        )
    return golden_export_dir(golden_model, tmp_path_factory, "fp16")


def _float_types(graph: onnx.ModelProto) -> set[int]:
    """Element types of the graph's initializers, Constant nodes and Cast targets."""
    types = {init.data_type for init in graph.graph.initializer}
    for node in graph.graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to":
                types.add(attr.i)
            elif node.op_type == "Constant" and attr.type == onnx.AttributeProto.TENSOR:
                types.add(attr.t.data_type)
    return types & {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_every_graph_passes_check_graph(request, precision):
    export_dir = request.getfixturevalue(f"{precision}_dir")
    manifest = read_manifest(export_dir)
    assert set(manifest["graphs"]) == set(GRAPHS)
    for name, entry in manifest["graphs"].items():
        graph = onnx.load(str(export_dir / entry["file"]))
        assert check_graph(graph) == [], name
    warp = onnx.load(str(export_dir / manifest["graphs"]["warping_module"]["file"]))
    assert sum(n.op_type == "GridSample" for n in warp.graph.node) == 2  # dense motion and warp, both 4-D


def test_manifest_records_the_export(fp32_dir, golden_model, golden_weights):
    manifest = json.loads((fp32_dir / MANIFEST_NAME).read_text())
    assert manifest["precision"] == "fp32"
    assert manifest["opset"] == 17
    assert manifest["max_batch"] == 4
    assert manifest["export_version"] == EXPORT_VERSION
    assert manifest["weights_hash"] == weights_hash(load_state_dicts(golden_weights))
    assert manifest["weights_hash"] == model_weights_hash(golden_model)
    for name, spec in GRAPHS.items():
        entry = manifest["graphs"][name]
        assert [i["name"] for i in entry["inputs"]] == list(spec.input_names)
        assert [o["name"] for o in entry["outputs"]] == list(spec.outputs)
        for value, (_, shape) in zip(entry["outputs"], spec.output_shapes, strict=True):
            assert value["shape"] == ["batch", *shape] and value["dtype"] == "float32"
        for value in entry["inputs"]:
            assert value["shape"][0] == "batch" and value["dtype"] == "float32"
    assert (
        GRAPHS["motion_extractor"].outputs
        == MOTION_OUTPUTS
        == ("kp", "exp", "pitch", "yaw", "roll", "t", "scale")
    )


def test_weights_hash_changes_with_any_value(golden_weights):
    states = load_state_dicts(golden_weights)
    before = weights_hash(states)
    states["eye"]["mlp.0.bias"] = states["eye"]["mlp.0.bias"].clone()
    states["eye"]["mlp.0.bias"][0] += 1e-3
    assert weights_hash(states) != before


def test_dynamic_batch_in_onnxruntime(fp32_dir, golden_model, golden):
    """Batch 2 through F, M and the MLPs (W and G run batched in the golden tests)."""
    ort_model = OnnxRuntimeModel.from_export_dir(fp32_dir)
    images = image_to_tensor(torch.from_numpy(golden["driving_rgb"][:2]))
    f_s = ort_model.extract_appearance(images)
    assert f_s.shape == (2, 32, 16, 64, 64)
    assert rel_l2(f_s.numpy(), golden_model.extract_appearance(images).numpy()) < 1e-5
    raw, ref = ort_model.extract_motion_raw(images), golden_model.extract_motion_raw(images)
    for key in MOTION_OUTPUTS:
        assert raw[key].shape == ref[key].shape and raw[key].shape[0] == 2
        assert rel_l2(raw[key].numpy(), ref[key].numpy()) < 1e-5, key
    for name, size in (("stitching", 126), ("lip", 65), ("eye", 66)):
        x = torch.from_numpy(np.random.default_rng(1).normal(0, 0.1, (2, size)).astype(np.float32))
        assert rel_l2(ort_model.run_mlp(name, x).numpy(), golden_model.run_mlp(name, x).numpy()) < 1e-5


def test_fp16_graphs_keep_float32_where_needed(fp16_dir):
    manifest = read_manifest(fp16_dir)
    assert manifest["precision"] == "fp16"
    for name, entry in manifest["graphs"].items():
        graph = onnx.load(str(fp16_dir / entry["file"]))
        for value in (*graph.graph.input, *graph.graph.output):
            assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, (name, value.name)
        types = _float_types(graph)
        if name in ("motion_extractor", "stitching", "lip", "eye"):
            assert types == {onnx.TensorProto.FLOAT}, name
        else:
            assert onnx.TensorProto.FLOAT16 in types, name
    warp = onnx.load(str(fp16_dir / manifest["graphs"]["warping_module"]["file"]))
    inferred = onnx.shape_inference.infer_shapes(warp)
    elem = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.input)}
    for node in warp.graph.node:
        if node.op_type == "GridSample":
            assert elem[node.input[0]] == elem[node.input[1]] == onnx.TensorProto.FLOAT


def test_fp16_pipeline_close_to_float32_golden(fp16_dir, golden, capsys):
    """F -> W -> G and M through the fp16 graphs (onnxruntime CPU) against the float32 golden outputs."""
    ort_model = OnnxRuntimeModel.from_export_dir(fp16_dir)
    source = image_to_tensor(torch.from_numpy(golden["source_rgb"])[None])
    f_s = ort_model.extract_appearance(source)
    raw = ort_model.extract_motion_raw(source)
    errors = {f"M_source_{k}": rel_l2(raw[k].numpy(), golden[f"M_source_{k}"]) for k in MOTION_OUTPUTS}
    assert max(errors.values()) < 1e-4  # M is float32 in both precisions
    x_s = torch.from_numpy(golden["x_s"])
    warped = ort_model.warp(f_s, x_s, torch.from_numpy(golden["default__x_d"][:1]))
    image = ort_model.decode(warped["out"])
    for name, value in (("F_out", f_s), ("W0_out", warped["out"]), ("G0_out", image)):
        idx = golden[f"{name}__idx"]
        errors[name] = rel_l2(value.numpy().ravel()[idx], golden[f"{name}__val"])
        assert_close_sampled(value.numpy(), golden, name, FP16_REL_L2)
    errors["W0_occlusion_map"] = rel_l2(warped["occlusion_map"].numpy(), golden["W0_occlusion_map"])
    assert errors["W0_occlusion_map"] < FP16_REL_L2
    with capsys.disabled():
        print("\nfp16 relative L2 vs float32 golden:", {k: f"{v:.2e}" for k, v in errors.items()})


def test_export_rejects_bad_arguments(golden_model, tmp_path):
    from engines.acceleration.export import ExportError

    with pytest.raises(ExportError, match="precision"):
        export_onnx(golden_model, tmp_path, precision="int8")
    with pytest.raises(ExportError, match="opset"):
        export_onnx(golden_model, tmp_path, opset=15)
    with pytest.raises(ExportError, match="max_batch"):
        export_onnx(golden_model, tmp_path, max_batch=0)


def test_resolve_backend():
    assert resolve_backend("auto", "cpu") == "torch"
    assert resolve_backend("onnxruntime", "cpu") == "onnxruntime"
    with pytest.raises(BackendError):
        resolve_backend("tflite", "cpu")


def test_load_backend_onnxruntime_uses_the_cache(fp32_dir, golden_weights, tmp_path):
    """A cache holding the export under its weights hash is used as it is (no new export)."""
    digest = read_manifest(fp32_dir)["weights_hash"]
    shutil.copytree(fp32_dir, tmp_path / "onnx" / onnx_cache_name(digest, "fp32"))
    model = load_backend("onnxruntime", golden_weights, "cpu", tmp_path)
    assert isinstance(model, OnnxRuntimeModel) and model.precision == "fp32"
    assert ensure_onnx_export(golden_weights, tmp_path, "fp32") == (
        tmp_path / "onnx" / f"{digest[:16]}-fp32-x{EXPORT_VERSION}",
        digest,
    )
    assert isinstance(load_backend("torch", golden_weights, "cpu", tmp_path), LivePortraitModel)


def test_load_backend_rejects_a_mismatched_cache(fp32_dir, golden_weights, tmp_path):
    digest = read_manifest(fp32_dir)["weights_hash"]
    cached = tmp_path / "onnx" / onnx_cache_name(digest, "fp32")
    shutil.copytree(fp32_dir, cached)
    manifest = json.loads((cached / MANIFEST_NAME).read_text())
    manifest["weights_hash"] = "0" * 64
    (cached / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(BackendError, match="does not match"):
        load_backend("onnxruntime", golden_weights, "cpu", tmp_path)


def test_load_backend_rejects_a_cached_export_of_other_export_code(fp32_dir, golden_weights, tmp_path):
    """An export made by another version of the export code is never used as if it were current."""
    digest = read_manifest(fp32_dir)["weights_hash"]
    cached = tmp_path / "onnx" / onnx_cache_name(digest, "fp32")
    shutil.copytree(fp32_dir, cached)
    manifest = json.loads((cached / MANIFEST_NAME).read_text())
    manifest["export_version"] = EXPORT_VERSION - 1
    (cached / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(BackendError, match="export version"):
        load_backend("onnxruntime", golden_weights, "cpu", tmp_path)


def test_export_cache_name_changes_with_the_export_code(monkeypatch):
    name = onnx_cache_name("ab" * 32, "fp16")
    assert name == f"abababababababab-fp16-x{EXPORT_VERSION}"
    monkeypatch.setattr(select, "EXPORT_VERSION", EXPORT_VERSION + 1)
    assert onnx_cache_name("ab" * 32, "fp16") != name


def test_load_backend_tensorrt_needs_cuda(golden_weights, tmp_path):
    with pytest.raises(BackendError, match="CUDA"):
        load_backend("tensorrt", golden_weights, "cpu", tmp_path)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="liveportrait")
    add_engines_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_parses_engines_commands(tmp_path):
    args = _parse(
        ["engines", "export", "--weights", "w", "--out", "o", "--precision", "fp16", "--max-batch", "4"]
    )
    assert args.func is cmd_export
    assert (args.weights, args.out, args.precision, args.max_batch, args.opset) == (
        Path("w"),
        Path("o"),
        "fp16",
        4,
        17,
    )
    args = _parse(["engines", "build", "--onnx", "o", "--out", "e", "--timing-cache", "t.cache"])
    assert args.func is cmd_build
    assert (args.onnx, args.out, args.max_batch, args.timing_cache) == (
        Path("o"),
        Path("e"),
        None,
        Path("t.cache"),
    )
    with pytest.raises(SystemExit):
        _parse(["engines", "export", "--weights", "w", "--out", "o", "--max-batch", "0"])


def test_cli_export_reports_bad_weights(tmp_path, capsys):
    args = _parse(["engines", "export", "--weights", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert args.func(args) == 1
    assert "error:" in capsys.readouterr().err


def test_cli_build_without_tensorrt(tmp_path, capsys):
    args = _parse(["engines", "build", "--onnx", str(tmp_path), "--out", str(tmp_path / "e")])
    code = args.func(args)
    assert code in (1, 2)  # 2: TensorRT not installed; 1: installed, but tmp_path is no export
    assert "error:" in capsys.readouterr().err


def test_animator_runs_a_compiled_backend_from_the_cache(fp32_dir, golden_weights, tmp_path):
    digest = read_manifest(fp32_dir)["weights_hash"]
    shutil.copytree(fp32_dir, tmp_path / "cache" / "onnx" / f"{digest[:16]}-fp32")
    animator = cpu_animator(golden_weights, backend="onnxruntime", engine_cache_dir=tmp_path / "cache")
    engine = animator.engine
    assert isinstance(engine.model, OnnxRuntimeModel) and engine.backend == "onnxruntime"
    source, driving = write_demo_inputs(tmp_path, n_frames=1)
    options = AnimationOptions(output_kind="crop", audio="none")
    result = animator.animate(AnimateRequest(source, driving, tmp_path / "out.mp4", options))
    assert (result.frames, result.width, result.height) == (1, 512, 512)
    assert cpu_animator(golden_weights, backend="auto").engine.backend == "torch"
