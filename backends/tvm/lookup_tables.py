"""Elementwise functions of one 8-bit activation become 256-entry lookup tables (as TFLite's
integer kernels do for HardSwish, Sigmoid, Tanh, ...).

In a QDQ model an activation such as HardSwish, Sigmoid, GELU, or an exporter's decomposed
hardswish x * clip(x + 3, 0, 6) / 6, reads one dequantized 8-bit tensor and ends in a
QuantizeLinear: Q(f(DQ(x))). With per-tensor parameters the output code depends only on the
input code, so the whole region is a table of 256 codes. The table is computed by running the
region itself in onnxruntime, as written (graph optimizations off), on all 256 input codes: the
library then agrees with the QDQ model exactly on these ops, instead of running them in float.

This stage works on the ONNX QDQ model before TVM imports it; the table lookup is a Cast and a
Gather, which TVM lowers to integer code.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: Elementwise ops a table may absorb: every output element depends on the same input element only.
ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Clip", "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Erf", "Gelu", "Exp", "Log", "Sqrt", "Pow", "Neg", "Abs", "Min", "Max", "Softplus", "Elu", "Selu", "Mish",
    "Reciprocal", "Floor", "Ceil", "Round", "Identity",
})
EIGHT_BIT = {onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.INT8: np.int8}


def tabulate(qdq: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """The model with every tabulable Q(f(DQ(x))) replaced by a lookup, and how many were."""
    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    replaced = 0
    for quantize in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        region = _region(quantize, producers, inits)
        if region is None:
            continue
        dequantize, nodes = region
        table = _table(model, dequantize, nodes, quantize, inits)
        _replace(graph, quantize, dequantize, table, signed=inits[dequantize.input[2]].data_type == onnx.TensorProto.INT8)
        replaced += 1
    if replaced:
        _drop_dead(graph)
    return model, replaced


def _scalar_parameters(node: onnx.NodeProto, inits: dict) -> bool:
    """A Q/DQ with a per-tensor scale and an 8-bit zero point (both initializers)."""
    if len(node.input) < 3 or node.input[1] not in inits or node.input[2] not in inits:
        return False
    zero_point = inits[node.input[2]]
    return numpy_helper.to_array(inits[node.input[1]]).size == 1 and zero_point.data_type in EIGHT_BIT


def _region(quantize: onnx.NodeProto, producers: dict, inits: dict):
    """(the DequantizeLinear, the nodes from it to `quantize`) if they form a function of one
    8-bit activation through elementwise ops and scalar constants only; else None."""
    if not _scalar_parameters(quantize, inits):
        return None
    nodes, sources, stack, seen = [], set(), [quantize.input[0]], set()
    while stack:
        name = stack.pop()
        if not name or name in seen:
            continue
        seen.add(name)
        if name in inits:
            if numpy_helper.to_array(inits[name]).size != 1:
                return None   # a per-channel constant: the function differs by position
            continue
        node = producers.get(name)
        if node is None:
            return None       # a graph input read directly
        if node.op_type == "DequantizeLinear" and node.input[0] not in inits:
            sources.add(id(node))
            if not _scalar_parameters(node, inits) or len(sources) > 1:
                return None
            dequantize = node
            continue
        if node.op_type not in ELEMENTWISE:
            return None
        nodes.append(node)
        stack.extend(node.input)
    if not nodes or not sources:
        return None
    return dequantize, nodes


def _table(model: onnx.ModelProto, dequantize: onnx.NodeProto, nodes: list, quantize: onnx.NodeProto,
           inits: dict) -> np.ndarray:
    """The region's output code for every input code, as onnxruntime runs the QDQ model."""
    from qcompiler.executor import session

    in_type = inits[dequantize.input[2]].data_type
    out_type = inits[quantize.input[2]].data_type
    codes = np.arange(np.iinfo(EIGHT_BIT[in_type]).min, np.iinfo(EIGHT_BIT[in_type]).max + 1).astype(EIGHT_BIT[in_type])
    used = {name for node in [dequantize, *nodes, quantize] for name in node.input}
    graph = helper.make_graph(
        [dequantize, *reversed(nodes), quantize], "table",
        [helper.make_tensor_value_info(dequantize.input[0], in_type, [len(codes)])],
        [helper.make_tensor_value_info(quantize.output[0], out_type, [len(codes)])],
        [inits[name] for name in used if name in inits])
    probe = helper.make_model(graph, opset_imports=list(model.opset_import))
    probe.ir_version = model.ir_version
    return session(probe, optimize=False).run(None, {dequantize.input[0]: codes})[0]


def _replace(graph: onnx.GraphProto, quantize: onnx.NodeProto, dequantize: onnx.NodeProto, table: np.ndarray,
             signed: bool) -> None:
    """quantize's output := table[code - min code], read with Cast + (Add) + Gather."""
    base = quantize.output[0]
    table_name, index = f"{base}__table", f"{base}__index"
    graph.initializer.append(numpy_helper.from_array(table, table_name))
    lookup = [helper.make_node("Cast", [dequantize.input[0]], [index], to=onnx.TensorProto.INT32,
                               name=f"{base}__cast")]
    if signed:   # int8 codes -128..127 index the table from 0
        offset = f"{base}__offset"
        graph.initializer.append(numpy_helper.from_array(np.array(128, np.int32), f"{base}__128"))
        lookup.append(helper.make_node("Add", [index, f"{base}__128"], [offset], name=f"{base}__shift"))
        index = offset
    lookup.append(helper.make_node("Gather", [table_name, index], [base], axis=0, name=f"{base}__lookup"))
    position = list(graph.node).index(quantize)
    graph.node.remove(quantize)
    for offset, node in enumerate(lookup):
        graph.node.insert(position + offset, node)


def _drop_dead(graph: onnx.GraphProto) -> None:
    """Remove nodes whose outputs nothing reads (the tabulated regions), then unused initializers."""
    while True:
        needed = {o.name for o in graph.output} | {name for node in graph.node for name in node.input}
        dead = [n for n in graph.node if not any(out in needed for out in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    needed = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(kept)
