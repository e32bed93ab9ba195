"""Convert dlib's ``dlib_face_recognition_resnet_model_v1.dat`` ResNet to ONNX.

The converter is pure Python (numpy + onnx); dlib itself is not needed.

dlib serialization primitives (dlib/serialize.h, dlib/dnn/tensor.h):

* integers: one header byte (low nibble = byte count, bit 7 = negative) followed by
  that many little-endian magnitude bytes;
* floats/doubles: ``float_details`` (mantissa int64, exponent int16) as two integers;
* strings: length integer followed by the raw bytes;
* bools: a single byte;
* tensors: version, num_samples, k, nr, nc, then (version 2) raw little-endian float32;
* alias tensors: version, num_samples, k, nr, nc.

A network ``add_loss_layer<L, add_layer<D, ... add_layer<D0, INPUT>>>`` is written outer
to inner: loss version + loss details, then one version integer per wrapper (add_layer,
tag, skip) down to the input layer, then every add_layer's details and cached state from
the input upwards.  Tags and skips carry nothing besides their version, and neither they
nor ``add_prev_`` record tag ids, so the layout is matched against the known template of
dnn_face_recognition_ex.cpp (``anet_type``) to restore the wiring.

The ONNX graph takes ``input`` [N, 3, 150, 150] float32 holding raw RGB values 0..255
(dlib's ``(pixel - mean) / 256`` happens inside the graph) and returns ``descriptor``
[N, 128], the unnormalised fc output exactly as dlib's ``loss_metric_`` reports it.
"""

from __future__ import annotations

import builtins
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["convert", "parse_dat"]

_OPSET = 17

# float_details exponent markers for non-finite values (dlib/float_details.h).
_FLOAT_SPECIALS = {32000: math.inf, 32001: -math.inf, 32002: math.nan}


# --------------------------------------------------------------------------------------
# Expected layout (forward order, input first) of dlib's metric-learning face ResNet.
# Markers: ("tag", id), ("skip", id); everything else is a computational layer kind.


def _ares() -> list[tuple[str, int]]:
    """relu<add_prev1<block<N, affine, 1, tag1<SUBNET>>>> in forward order."""
    return [
        ("tag", 1),
        ("con", 1),
        ("affine", 0),
        ("relu", 0),
        ("con", 1),
        ("affine", 0),
        ("add_prev", 1),
        ("relu", 0),
    ]


def _ares_down() -> list[tuple[str, int]]:
    """relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,affine,2,tag1<S>>>>>>>>."""
    return [
        ("tag", 1),
        ("con", 2),
        ("affine", 0),
        ("relu", 0),
        ("con", 1),
        ("affine", 0),
        ("tag", 2),
        ("skip", 1),
        ("avg_pool", 0),
        ("add_prev", 2),
        ("relu", 0),
    ]


def _face_resnet_layout() -> list[tuple[str, int]]:
    """Forward-order tokens of ``anet_type``; the int is a tag id or conv stride."""
    toks = [("con", 2), ("affine", 0), ("relu", 0), ("max_pool", 0)]
    toks += _ares() * 3  # alevel4: 32 filters
    toks += _ares_down() + _ares() * 3  # alevel3: 64
    toks += _ares_down() + _ares() * 2  # alevel2: 128
    toks += _ares_down() + _ares() * 2  # alevel1: 256
    toks += _ares_down()  # alevel0: 256
    toks += [("avg_pool", 0), ("fc", 0)]  # avg_pool_everything, fc_no_bias<128>
    return toks


_LAYER_NAMES = {
    "con": ("con_4", "con_5"),
    "affine": ("affine_",),
    "relu": ("relu_",),
    "max_pool": ("max_pool_2",),
    "avg_pool": ("avg_pool_2",),
    "add_prev": ("add_prev_",),
    "fc": ("fc_2",),
}


# --------------------------------------------------------------------------------------
# Reader for dlib's serialization primitives.


class _Reader:
    """Sequential decoder of dlib-serialized primitives."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError(f"unexpected end of file at offset {self.pos}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        """Read a dlib packed integer."""
        head = self._take(1)[0]
        size = head & 0x0F
        if size > 8 or head & 0x70:
            raise ValueError(f"bad integer header 0x{head:02x} at offset {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little")
        return -value if head & 0x80 else value

    def float(self) -> float:
        """Read a float/double stored as (mantissa, exponent)."""
        mantissa = self.int()
        exponent = self.int()
        if exponent in _FLOAT_SPECIALS:
            return _FLOAT_SPECIALS[exponent]
        return math.ldexp(mantissa, exponent)

    def string(self) -> str:
        """Read a length-prefixed string."""
        return self._take(self.int()).decode("latin-1")

    def bool(self) -> bool:
        """Read a one-byte bool."""
        b = self._take(1)[0]
        if b not in (0, 1, ord("0"), ord("1")):
            raise ValueError(f"bad bool byte {b} at offset {self.pos - 1}")
        return b in (1, ord("1"))

    def tensor(self) -> np.ndarray:
        """Read a dlib tensor as a float32 array of shape (num_samples, k, nr, nc)."""
        version = self.int()
        shape = tuple(self.int() for _ in range(4))
        count = int(np.prod(shape))
        if version == 2:
            arr = np.frombuffer(self._take(4 * count), dtype="<f4")
        elif version == 1:
            arr = np.array([self.float() for _ in range(count)], dtype=np.float64)
        else:
            raise ValueError(f"unsupported tensor version {version}")
        return arr.astype(np.float32).reshape(shape)

    def alias_tensor(self) -> tuple[builtins.int, builtins.int, builtins.int, builtins.int]:
        """Read an alias_tensor's shape."""
        if (version := self.int()) != 1:
            raise ValueError(f"unsupported alias_tensor version {version}")
        n, k, nr, nc = (self.int() for _ in range(4))
        return n, k, nr, nc

    def peek_is_string(self, prefix: bytes) -> builtins.bool:
        """Return whether a string starting with ``prefix`` begins here."""
        save = self.pos
        try:
            n = self.int()
            return n >= len(prefix) and self.data[self.pos : self.pos + len(prefix)] == prefix
        except ValueError:
            return False
        finally:
            self.pos = save


# --------------------------------------------------------------------------------------
# Layer details.


@dataclass
class Layer:
    """One node of the network in forward order."""

    kind: str
    arg: int = 0
    params: dict[str, Any] = field(default_factory=dict)


def _read_details(r: _Reader, kind: str) -> dict[str, Any]:
    """Read one layer's details object and return its parameters."""
    name = r.string()
    if name not in _LAYER_NAMES[kind]:
        raise ValueError(f"expected {kind} layer, found {name!r} at offset {r.pos}")
    p: dict[str, Any] = {"name": name}
    if kind == "con":
        params = r.tensor().reshape(-1)
        p["num_filters"], p["nr"], p["nc"] = r.int(), r.int(), r.int()
        p["stride"] = (r.int(), r.int())
        p["padding"] = (r.int(), r.int())
        filt, bias = r.alias_tensor(), r.alias_tensor()
        for _ in range(4):  # learning-rate / weight-decay multipliers
            r.float()
        use_bias = r.bool() if name == "con_5" else True
        nf = int(np.prod(filt))
        p["weight"] = params[:nf].reshape(filt)
        p["bias"] = params[nf : nf + int(np.prod(bias))] if use_bias else None
        if p["bias"] is not None and p["bias"].size == 0:
            p["bias"] = None
    elif kind == "affine":
        params = r.tensor().reshape(-1)
        gamma, beta = r.alias_tensor(), r.alias_tensor()
        p["mode"] = r.int()  # 0 = CONV_MODE (per channel), 1 = FC_MODE
        ng = int(np.prod(gamma))
        p["gamma"] = params[:ng].reshape(gamma)
        p["beta"] = params[ng : ng + int(np.prod(beta))].reshape(beta)
    elif kind in ("max_pool", "avg_pool"):
        p["nr"], p["nc"] = r.int(), r.int()
        p["stride"] = (r.int(), r.int())
        p["padding"] = (r.int(), r.int())
    elif kind == "fc":
        p["num_outputs"], p["num_inputs"] = r.int(), r.int()
        params = r.tensor().reshape(-1)
        w, b = r.alias_tensor(), r.alias_tensor()
        p["bias_mode"] = r.int()
        for _ in range(4):
            r.float()
        nw = int(np.prod(w))
        p["weight"] = params[:nw].reshape(p["num_inputs"], p["num_outputs"])
        fc_bias = params[nw : nw + int(np.prod(b))]
        p["bias"] = fc_bias if fc_bias.size == p["num_outputs"] else None
    return p


def _read_add_layer_state(r: _Reader, version: int, is_input: bool) -> None:
    """Skip the cached state stored after an add_layer's details."""
    # this_layer_setup_called, gradient_input_is_stale, output_and_gradient_disabled
    for _ in range(3):
        r.bool()
    r.tensor()  # x_grad
    r.tensor()  # cached_output
    if is_input:
        r.tensor()  # grad_final
        if version >= 3:
            r.int()  # _sample_expansion_factor
    elif version >= 2:
        r.tensor()  # params_grad


def parse_dat(dat_path: str) -> tuple[dict[str, Any], list[Layer]]:
    """Parse the .dat file into (input-layer info, forward-ordered layer list)."""
    with open(dat_path, "rb") as f:
        r = _Reader(f.read())

    if (v := r.int()) != 1:
        raise ValueError(f"unsupported add_loss_layer version {v}")
    loss = r.string()
    if loss == "loss_metric_2":
        r.float()  # margin
        r.float()  # distance threshold
    elif loss != "loss_metric_":
        raise ValueError(f"expected loss_metric_, found {loss!r}")

    versions: list[int] = []  # outermost first
    while not r.peek_is_string(b"input_"):
        versions.append(r.int())
        if len(versions) > 10_000:
            raise ValueError("could not find the input layer")
    layout = _face_resnet_layout()
    expected = [1 if k in ("tag", "skip") else 2 for k, _ in reversed(layout)]
    # add_layer versions: 1..2 (3 for the one holding the input layer); tag/skip: 1.
    if len(versions) != len(layout) or any(
        (e == 1) != (v == 1) for e, v in zip(expected[:-1], versions[:-1], strict=True)
    ):
        raise ValueError("network layout does not match dlib's face recognition ResNet")

    name = r.string()
    if name != "input_rgb_image_sized":
        raise ValueError(f"unsupported input layer {name!r}")
    mean = [r.float() for _ in range(3)]
    nr, nc = r.int(), r.int()
    inp = {"mean": mean, "nr": nr, "nc": nc}

    layers: list[Layer] = []
    for (kind, arg), version in zip(layout, reversed(versions), strict=True):
        layer = Layer(kind, arg)
        if kind not in ("tag", "skip"):
            layer.params = _read_details(r, kind)
            if kind == "con" and layer.params["stride"] != (arg, arg):
                stride = layer.params["stride"]
                raise ValueError(f"unexpected stride {stride} at layer {len(layers)}")
            _read_add_layer_state(r, version, is_input=not layers)
        layers.append(layer)
    if r.pos != len(r.data):
        raise ValueError(f"{len(r.data) - r.pos} trailing bytes after the network")
    return inp, layers


# --------------------------------------------------------------------------------------
# ONNX graph construction.


class _GraphBuilder:
    """Small helper that accumulates ONNX nodes and initializers."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def const(self, prefix: str, value: np.ndarray) -> str:
        n = self.name(prefix)
        self.inits.append(numpy_helper.from_array(value, n))
        return n

    def op(
        self,
        op_type: str,
        inputs: list[str],
        prefix: str,
        out: str | None = None,
        **attrs: Any,  # ONNX attributes: ints, floats, lists of them
    ) -> str:
        out = out or self.name(prefix)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def _pool_out(size: int, window: int, stride: int, pad: int) -> int:
    return 1 + (size + 2 * pad - window) // stride


def _build(inp: dict[str, Any], layers: list[Layer], fold_affine: bool) -> onnx.ModelProto:
    g = _GraphBuilder()
    mean = np.array(inp["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
    x = g.op("Sub", ["input", g.const("mean", mean)], "centered")
    x = g.op("Mul", [x, g.const("scale", np.array(1 / 256, dtype=np.float32))], "normalized")
    shape: tuple[int, ...] = (3, inp["nr"], inp["nc"])  # (C, H, W) of the current tensor

    tags: dict[int, tuple[str, tuple[int, ...]]] = {}
    i = 0
    while i < len(layers):
        layer, p = layers[i], layers[i].params
        if layer.kind == "tag":
            tags[layer.arg] = (x, shape)
        elif layer.kind == "skip":
            x, shape = tags[layer.arg]
        elif layer.kind == "con":
            w = p["weight"].astype(np.float32)
            b = p["bias"] if p["bias"] is not None else np.zeros(w.shape[0], np.float32)
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            if fold_affine and nxt is not None and nxt.kind == "affine":
                gamma = nxt.params["gamma"].reshape(-1)
                beta = nxt.params["beta"].reshape(-1)
                w = w * gamma[:, None, None, None]
                b = b * gamma + beta
                i += 1
            (sy, sx), (py, px) = p["stride"], p["padding"]
            x = g.op(
                "Conv",
                [x, g.const("W", w), g.const("B", b.astype(np.float32))],
                "conv",
                kernel_shape=[p["nr"], p["nc"]],
                strides=[sy, sx],
                pads=[py, px, py, px],
            )
            shape = (
                w.shape[0],
                _pool_out(shape[1], p["nr"], sy, py),
                _pool_out(shape[2], p["nc"], sx, px),
            )
        elif layer.kind == "affine":
            c = shape[0]
            gshape = (1, c, 1, 1) if p["mode"] == 0 else (1, *shape)
            x = g.op("Mul", [x, g.const("gamma", p["gamma"].reshape(gshape))], "affine_mul")
            x = g.op("Add", [x, g.const("beta", p["beta"].reshape(gshape))], "affine")
        elif layer.kind == "relu":
            x = g.op("Relu", [x], "relu")
        elif layer.kind in ("max_pool", "avg_pool"):
            (sy, sx), (py, px) = p["stride"], p["padding"]
            if p["nr"] == 0 and p["nc"] == 0 and layer.kind == "avg_pool":
                x = g.op("GlobalAveragePool", [x], "gap")
                shape = (shape[0], 1, 1)
            else:
                kh, kw = p["nr"] or shape[1], p["nc"] or shape[2]
                attrs: dict[str, Any] = {
                    "kernel_shape": [kh, kw],
                    "strides": [sy, sx],
                    "pads": [py, px, py, px],
                }
                if layer.kind == "avg_pool":
                    attrs["count_include_pad"] = 0
                op = "MaxPool" if layer.kind == "max_pool" else "AveragePool"
                x = g.op(op, [x], layer.kind, **attrs)
                shape = (
                    shape[0],
                    _pool_out(shape[1], kh, sy, py),
                    _pool_out(shape[2], kw, sx, px),
                )
        elif layer.kind == "add_prev":
            # dlib adds tensors of different sizes by zero-padding both to the max size.
            other, oshape = tags[layer.arg]
            out_shape = tuple(max(a, b) for a, b in zip(shape, oshape, strict=True))
            terms = []
            for t, s in ((x, shape), (other, oshape)):
                if s != out_shape:
                    pads = [
                        0,
                        0,
                        0,
                        0,
                        0,
                        *(o - d for o, d in zip(out_shape, s, strict=True)),
                    ]
                    t = g.op(
                        "Pad",
                        [t, g.const("pads", np.array(pads, dtype=np.int64))],
                        "pad",
                    )
                terms.append(t)
            x = g.op("Add", terms, "add_prev")
            shape = out_shape
        elif layer.kind == "fc":
            if p["num_inputs"] != int(np.prod(shape)):
                raise ValueError("fc input size mismatch")
            x = g.op("Flatten", [x], "flatten", axis=1)
            w = g.const("fc_W", p["weight"].astype(np.float32))
            if p["bias"] is None:
                x = g.op("MatMul", [x, w], "fc", out="descriptor")
            else:
                b = g.const("fc_B", p["bias"].astype(np.float32))
                x = g.op("Gemm", [x, w, b], "fc", out="descriptor")
            shape = (p["num_outputs"],)
        else:  # pragma: no cover - layout is validated while parsing
            raise ValueError(f"unhandled layer {layer.kind}")
        i += 1

    if x != "descriptor":
        raise ValueError("network does not end in an fc layer")
    graph = helper.make_graph(
        g.nodes,
        "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, inp["nr"], inp["nc"]])],
        [helper.make_tensor_value_info("descriptor", TensorProto.FLOAT, ["N", shape[0]])],
        g.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", _OPSET)],
        producer_name="dlib_resnet_onnx",
    )
    model.ir_version = 8
    model.doc_string = (
        "dlib face recognition ResNet. input: N x 3 x 150 x 150 RGB, raw "
        "0..255 float values; output: 128-d descriptor (not normalised)."
    )
    onnx.checker.check_model(model)
    return model


def convert(dat_path: str, onnx_path: str, *, fold_affine: bool = True) -> None:
    """Convert dlib's ``dlib_face_recognition_resnet_model_v1.dat`` to an ONNX file.

    ``fold_affine`` merges each affine (frozen batch-norm) layer into the preceding
    convolution's weights and bias; disable it for a layer-by-layer literal graph.
    """
    inp, layers = parse_dat(dat_path)
    onnx.save(_build(inp, layers, fold_affine), onnx_path)


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3:
        sys.exit("usage: python dlib_resnet_onnx.py MODEL.dat OUT.onnx")
    convert(sys.argv[1], sys.argv[2])
