"""Derived ONNX models, built once from the shipped files into the cache folder.

* The OpenCV zoo's YuNet and SFace ship block-quantised (int8) weights that are
  dequantised by `DequantizeLinear` nodes on every run. `dequantize()` folds
  them into plain float32 weights once, so onnxruntime runs a float graph
  (YuNet: ~8 ms instead of ~20 ms in OpenCV per 640x480 frame on one core).
* dlib's ResNet is converted from dlib's own format (see `dlib_onnx`).
* SFace's per-channel PRelu runs slowly in onnxruntime's CPU provider and forces layout
  reorders around every convolution; `prelu_as_convolutions()` rewrites it with ops the
  blocked (NCHWc) convolutions fuse: SFace costs ~14 ms a face instead of ~30.

Files are written atomically, so concurrent first runs never see half a file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def cached_model(cache_dir: Path, name: str, build: Callable[[Path], None]) -> Path:
    """`cache_dir/models/name`, built by `build(path)` when missing."""
    target = cache_dir / "models" / name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{name}.{os.getpid()}.tmp")
        build(partial)
        os.replace(partial, target)
    return target


def _dequantize_node(node: onnx.NodeProto, arrays: dict[str, np.ndarray]) -> np.ndarray | None:
    x = arrays.get(node.input[0])
    scale = arrays.get(node.input[1])
    if x is None or scale is None:
        return None
    zero = arrays.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axis = int(attrs.get("axis", 1)) % max(x.ndim, 1)
    block = int(attrs.get("block_size", 0))
    scale = scale.astype(np.float32)
    zero_f = np.zeros_like(scale) if zero is None else zero.astype(np.float32)
    if scale.size == 1:
        scalar: np.ndarray = (x.astype(np.float32) - zero_f.reshape(())) * scale.reshape(())
        return scalar.astype(np.float32)
    if block:
        scale = np.repeat(scale, block, axis=axis).take(range(x.shape[axis]), axis=axis)
        zero_f = np.repeat(zero_f, block, axis=axis).take(range(x.shape[axis]), axis=axis)
    else:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero_f = scale.reshape(shape), zero_f.reshape(shape)
    out: np.ndarray = (x.astype(np.float32) - zero_f) * scale
    return out.astype(np.float32)


def dequantize(source: Path, target: Path, dynamic_hw: bool = False) -> None:
    """Fold constant `DequantizeLinear` nodes into float32 weights and save.

    Dangling graph inputs (SFace declares every weight as one) are dropped, so
    onnxruntime does not ask to be fed them; `dynamic_hw` frees the input's
    height and width (YuNet); the batch is always dynamic.
    """
    model = onnx.load(str(source))
    graph = model.graph
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            arrays[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    kept, folded = [], []
    for node in graph.node:
        value = _dequantize_node(node, arrays) if node.op_type == "DequantizeLinear" else None
        if value is None:
            kept.append(node)
        else:
            folded.append(numpy_helper.from_array(value, node.output[0]))
    used = {name for node in kept for name in node.input}
    initializers = [i for i in graph.initializer if i.name in used] + folded
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    names = {i.name for i in initializers}
    inputs = [i for i in graph.input if i.name not in names and i.name in used]
    del graph.input[:]
    graph.input.extend(inputs)
    # a dynamic batch (and, for detectors, image size): shapes are re-inferred
    dims = graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_param = "batch"
    if dynamic_hw:
        for dim in dims[2:]:
            dim.dim_param = "hw"
    del graph.value_info[:]
    for output in graph.output:
        for dim in output.type.tensor_type.shape.dim:
            dim.dim_param = "n"
    onnx.checker.check_model(model)
    onnx.save(model, str(target))


def _prelu_nodes(node: onnx.NodeProto, channels: int) -> list[onnx.NodeProto]:
    """PRelu(x) = Relu(x) + (-a) * Relu(-x), the products as 1x1 depthwise convolutions.

    Exact per element: one of the two terms is always zero, so the sum is either x or a
    rounded product a * x; onnxruntime then keeps the whole network in its blocked layout.
    """
    x, y = node.input[0], node.output[0]
    name = node.name or y
    return [
        helper.make_node("Relu", [x], [f"{name}_pos"]),
        helper.make_node(
            "Conv", [x, f"{name}_minus_one"], [f"{name}_neg"], group=channels, kernel_shape=[1, 1]
        ),
        helper.make_node("Relu", [f"{name}_neg"], [f"{name}_neg_relu"]),
        helper.make_node(
            "Conv",
            [f"{name}_neg_relu", f"{name}_minus_slope"],
            [f"{name}_scaled"],
            group=channels,
            kernel_shape=[1, 1],
        ),
        helper.make_node("Add", [f"{name}_scaled", f"{name}_pos"], [y]),
    ]


def prelu_as_convolutions(path: Path) -> None:
    """Rewrite every PRelu with a per-channel constant slope of the model at `path` (in
    place) as Relu, two 1x1 depthwise convolutions and an Add (see `_prelu_nodes`)."""
    model = onnx.load(str(path))
    graph = model.graph
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        slope = arrays.get(node.input[1]) if node.op_type == "PRelu" else None
        if slope is None or slope.ndim != 3 or slope.shape[1:] != (1, 1):
            nodes.append(node)
            continue
        name, channels = node.name or node.output[0], slope.shape[0]
        minus_one = np.full((channels, 1, 1, 1), -1.0, dtype=np.float32)
        minus_slope = (-slope.astype(np.float32)).reshape(channels, 1, 1, 1)
        graph.initializer.extend(
            [
                numpy_helper.from_array(minus_one, f"{name}_minus_one"),
                numpy_helper.from_array(minus_slope, f"{name}_minus_slope"),
            ]
        )
        nodes.extend(_prelu_nodes(node, channels))
    used = {name for node in nodes for name in node.input}
    initializers = [i for i in graph.initializer if i.name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def ort_session(path: Path, threads: int = 1):  # type: ignore[no-untyped-def]
    """A CPU onnxruntime session with `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
