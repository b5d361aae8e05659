"""Static check that an exported ONNX graph parses into TensorRT without plugins or custom ops."""

from collections.abc import Iterator

import onnx

# Operators marked "Y" in the onnx-tensorrt operator support matrix for TensorRT 10.15 (opset 9 to 24):
# https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md ("TensorRT 10.15 supports operators
# in the inclusive range of opset 9 to opset 24"). Operators marked "N" are left out. Per-operator
# restrictions (e.g. GridSample: "Input must be 4D input.") are in that document and docs/tensorrt_ops.md.
TENSORRT_SUPPORTED_OPS: frozenset[str] = frozenset(
    {
        "Abs",
        "Acos",
        "Acosh",
        "Add",
        "And",
        "ArgMax",
        "ArgMin",
        "Asin",
        "Asinh",
        "Atan",
        "Atanh",
        "Attention",
        "AveragePool",
        "BatchNormalization",
        "BlackmanWindow",
        "Cast",
        "CastLike",
        "Ceil",
        "Celu",
        "Clip",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Conv",
        "ConvTranspose",
        "Cos",
        "Cosh",
        "CumSum",
        "DeformConv",
        "DepthToSpace",
        "DequantizeLinear",
        "Div",
        "Dropout",
        "Einsum",
        "Elu",
        "Equal",
        "Erf",
        "Exp",
        "Expand",
        "EyeLike",
        "Flatten",
        "Floor",
        "Gather",
        "GatherElements",
        "GatherND",
        "Gelu",
        "Gemm",
        "GlobalAveragePool",
        "GlobalLpPool",
        "GlobalMaxPool",
        "Greater",
        "GreaterOrEqual",
        "GridSample",
        "GroupNormalization",
        "GRU",
        "HammingWindow",
        "HannWindow",
        "HardSigmoid",
        "HardSwish",
        "Hardmax",
        "Identity",
        "If",
        "ImageScaler",
        "InstanceNormalization",
        "IsInf",
        "IsNaN",
        "LayerNormalization",
        "LeakyRelu",
        "Less",
        "LessOrEqual",
        "Log",
        "LogSoftmax",
        "Loop",
        "LRN",
        "LSTM",
        "LpNormalization",
        "LpPool",
        "MatMul",
        "Max",
        "MaxPool",
        "Mean",
        "MeanVarianceNormalization",
        "Min",
        "Mish",
        "Mod",
        "Mul",
        "Neg",
        "NonMaxSuppression",
        "NonZero",
        "Not",
        "OneHot",
        "Or",
        "Pad",
        "ParametricSoftplus",
        "Pow",
        "PRelu",
        "QuantizeLinear",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Range",
        "Reciprocal",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSum",
        "ReduceSumSquare",
        "Relu",
        "Reshape",
        "Resize",
        "ReverseSequence",
        "RMSNormalization",
        "RNN",
        "RoiAlign",
        "RotaryEmbedding",
        "Round",
        "STFT",
        "ScaledTanh",
        "Scan",
        "Scatter",
        "ScatterElements",
        "ScatterND",
        "Selu",
        "Shape",
        "Shrink",
        "Sigmoid",
        "Sign",
        "Sin",
        "Sinh",
        "Size",
        "Slice",
        "Softmax",
        "Softplus",
        "Softsign",
        "SpaceToDepth",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Sum",
        "Tan",
        "Tanh",
        "TensorScatter",
        "ThresholdedRelu",
        "Tile",
        "TopK",
        "Transpose",
        "Trilu",
        "Unsqueeze",
        "Upsample",
        "Where",
        "Xor",
    }
)

_DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """Yield ``graph`` and, recursively, the subgraphs held by If / Loop / Scan attributes."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graphs(sub)


def _ranks(graph: onnx.GraphProto) -> dict[str, int]:
    """Known tensor ranks by name, from inputs, outputs, value_info and initializers of every graph."""
    ranks: dict[str, int] = {}
    for g in _graphs(graph):
        for info in (*g.input, *g.output, *g.value_info):
            tensor_type = info.type.tensor_type
            if info.type.HasField("tensor_type") and tensor_type.HasField("shape"):
                ranks[info.name] = len(tensor_type.shape.dim)
        for init in g.initializer:
            ranks[init.name] = len(init.dims)
    return ranks


def check_graph(model: onnx.ModelProto) -> list[str]:
    """Problems that keep ``model`` from parsing into TensorRT natively; empty when there are none.

    Flags nodes in a non-default domain (custom ops / plugins), default-domain ops missing from
    ``TENSORRT_SUPPORTED_OPS``, and GridSample nodes whose input is not 4-D (rank from ONNX shape
    inference; an unknown rank is reported too). Subgraphs of If / Loop / Scan are included.
    """
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    ranks = _ranks(inferred.graph)
    problems: list[str] = []
    for graph in _graphs(inferred.graph):
        for node in graph.node:
            label = f"node {node.name or '<unnamed>'!r} ({node.domain or 'ai.onnx'}::{node.op_type})"
            if node.domain not in _DEFAULT_DOMAINS:
                problems.append(f"{label}: custom domain {node.domain!r} needs a plugin")
                continue
            if node.op_type not in TENSORRT_SUPPORTED_OPS:
                problems.append(f"{label}: not supported by the TensorRT ONNX parser")
                continue
            if node.op_type == "GridSample":
                rank = ranks.get(node.input[0])
                if rank is None:
                    problems.append(f"{label}: rank of input {node.input[0]!r} unknown, TensorRT needs 4-D")
                elif rank != 4:
                    problems.append(f"{label}: input {node.input[0]!r} is {rank}-D, TensorRT needs 4-D")
    return problems
