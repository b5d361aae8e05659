"""The 4-D GridSample rewrite of 5-D trilinear grid sampling, its ONNX export, and the TensorRT check."""

import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from engines.acceleration.onnx_check import TENSORRT_SUPPORTED_OPS, check_graph
from engines.networks.grid_sample import grid_sample_3d, grid_sample_5d

TOLERANCE = 1e-5
DOCS = Path(__file__).resolve().parents[3] / "docs" / "tensorrt_ops.md"


def _native(volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _voxel_coord(index: float, size: int) -> float:
    """Normalised coordinate (align_corners=False) of a voxel index, e.g. -0.5 or size - 0.5."""
    return (2 * index + 1) / size - 1


def _grid(
    gen: torch.Generator, n: int, out: tuple[int, int, int], size: tuple[int, int, int]
) -> torch.Tensor:
    """(n, *out, 3) grid uniform in [-1.3, 1.3], with rows of exact borders and voxel-aligned points.

    size is (D, H, W); grid channels are (x, y, z), i.e. (W, H, D) order.
    """
    grid = torch.rand(n, *out, 3, generator=gen) * 2.6 - 1.3
    d, h, w = size
    dims = (w, h, d)
    specials = [
        [-1.0, 1.0, -1.3, 1.3, 0.0],
        *[[_voxel_coord(i, s) for i in (-1.0, -0.5, 0.0, s - 1, s - 0.5, s, 0.25)] for s in dims],
    ]
    flat = grid.view(n, -1, 3)
    for axis in range(3):
        values = torch.tensor(specials[0] + specials[1 + axis])
        count = min(values.numel(), flat.shape[1])
        flat[:, :count, axis] = values[:count]
        flat[:, -count:, axis] = values[:count].flip(0)
    return grid


SHAPES = [
    # (N, C, D, H, W), (Do, Ho, Wo)
    ((2, 4, 16, 64, 64), (8, 32, 32)),
    ((1, 3, 1, 5, 7), (3, 4, 5)),
    ((3, 2, 2, 3, 4), (2, 5, 3)),
    ((2, 5, 3, 1, 1), (4, 3, 2)),
    ((1, 1, 3, 2, 9), (1, 1, 17)),
]


@pytest.mark.parametrize(("shape", "out"), SHAPES)
def test_grid_sample_3d_matches_native(
    shape: tuple[int, int, int, int, int], out: tuple[int, int, int]
) -> None:
    gen = torch.Generator().manual_seed(sum(shape))
    volume = torch.randn(*shape, generator=gen)
    grid = _grid(gen, shape[0], out, shape[2:])
    with torch.no_grad():
        expected = _native(volume, grid)
        got = grid_sample_3d(volume, grid)
    assert got.shape == (shape[0], shape[1], *out)
    assert (got - expected).abs().max().item() < TOLERANCE


def test_grid_sample_3d_zero_outside_volume() -> None:
    gen = torch.Generator().manual_seed(3)
    volume = torch.randn(1, 2, 4, 5, 6, generator=gen)
    grid = torch.rand(1, 2, 3, 4, 3, generator=gen) * 2 - 1
    grid[..., 2] = torch.where(grid[..., 2] > 0, 1.3, -1.3)
    with torch.no_grad():
        assert grid_sample_3d(volume, grid).abs().max().item() == 0.0


def test_grid_sample_5d_dispatch() -> None:
    gen = torch.Generator().manual_seed(5)
    volume = torch.randn(2, 3, 4, 5, 6, generator=gen)
    grid = _grid(gen, 2, (3, 4, 5), (4, 5, 6))
    with torch.no_grad():
        native = grid_sample_5d(volume, grid)
        rewrite = grid_sample_5d(volume, grid, export_friendly=True)
    assert torch.equal(native, _native(volume, grid))
    assert (rewrite - native).abs().max().item() < TOLERANCE


def test_grid_sample_3d_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        grid_sample_3d(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4, 3))
    with pytest.raises(ValueError):
        grid_sample_3d(torch.zeros(1, 2, 3, 4, 5), torch.zeros(1, 2, 3, 4, 4))


class _Warp(torch.nn.Module):
    def forward(self, volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return grid_sample_5d(volume, grid, export_friendly=True)


class _NativeWarp(torch.nn.Module):
    def forward(self, volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return _native(volume, grid)


def _export(
    module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path, opset: int
) -> onnx.ModelProto:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["volume", "grid"],
            output_names=["out"],
            dynamic_axes={"volume": {0: "batch"}, "grid": {0: "batch"}, "out": {0: "batch"}},
        )
    return onnx.load(str(path))


def test_rewrite_exports_to_tensorrt_friendly_onnx(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(11)
    size = (16, 64, 64)
    path = tmp_path / "warp.onnx"
    model = _export(
        _Warp(), (torch.randn(1, 4, *size, generator=gen), _grid(gen, 1, (4, 8, 8), size)), path, opset=17
    )
    onnx.checker.check_model(model)
    assert check_graph(model) == []
    grid_samples = [node for node in model.graph.node if node.op_type == "GridSample"]
    assert len(grid_samples) == 1

    volume = torch.randn(3, 4, *size, generator=gen)
    grid = _grid(gen, 3, (4, 8, 8), size)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"volume": volume.numpy(), "grid": grid.numpy()})
    with torch.no_grad():
        expected = _native(volume, grid).numpy()
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < TOLERANCE


def test_check_graph_flags_5d_grid_sample(tmp_path: Path) -> None:
    model = _export(
        _NativeWarp(), (torch.randn(1, 2, 3, 4, 5), torch.rand(1, 2, 2, 2, 3)), tmp_path / "n.onnx", 20
    )
    problems = check_graph(model)
    assert len(problems) == 1
    assert "GridSample" in problems[0]
    assert "5-D" in problems[0]


def test_check_graph_flags_custom_and_unsupported_ops() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok"),
        helper.make_node("FancyWarp", ["a"], ["b"], name="custom", domain="com.example"),
        helper.make_node("Unique", ["b"], ["y"], name="unsupported"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    problems = check_graph(model)
    assert len(problems) == 2
    assert "com.example" in problems[0] and "'custom'" in problems[0]
    assert "Unique" in problems[1]


def test_check_graph_flags_grid_sample_in_subgraph() -> None:
    sample = helper.make_node("GridSample", ["v", "g"], ["s"], name="inner")
    branch = helper.make_graph(
        [sample], "branch", [], [helper.make_tensor_value_info("s", TensorProto.FLOAT, None)]
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], name="cond", then_branch=branch, else_branch=branch)],
        "g",
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 2, 3, 4, 5]),
            helper.make_tensor_value_info("g", TensorProto.FLOAT, [1, 2, 2, 2, 3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    problems = check_graph(model)
    assert len(problems) == 2
    assert all("'inner'" in p and "5-D" in p for p in problems)


def test_docs_list_matches_supported_ops() -> None:
    listed = DOCS.read_text().split("## Supported operators", 1)[1]
    assert set(re.findall(r"`(\w+)`", listed)) == TENSORRT_SUPPORTED_OPS
