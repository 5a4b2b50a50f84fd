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
    """The model with every tabulable Q(f(DQ(x))) replaced by a lookup, and how many were.

    Linear in the model's size: the regions are found first, their tables computed together
    (one onnxruntime session per PROBE_BATCH regions, not one each), and the node list rebuilt
    once; a 1500-table chain took 37 s when each was probed and spliced in on its own."""
    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    regions = [(q, *found) for q in graph.node if q.op_type == "QuantizeLinear"
               for found in [_region(q, producers, inits)] if found is not None]
    if not regions:
        return model, 0
    tables = _tables(model, regions, inits)
    lookups = {id(q): _lookup(graph, q, dq, tables[q.output[0]], inits[dq.input[2]].data_type == onnx.TensorProto.INT8)
               for q, dq, _ in regions}
    nodes = [new for node in graph.node for new in lookups.get(id(node), [node])]
    del graph.node[:]
    graph.node.extend(_live(nodes, {o.name for o in graph.output}))
    needed = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model, len(regions)


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


#: Regions probed in one onnxruntime session.
PROBE_BATCH = 256


def _tables(model: onnx.ModelProto, regions: list, inits: dict) -> dict[str, np.ndarray]:
    """Each region's output code for every input code, as onnxruntime runs the QDQ model (as
    written, optimizations off), keyed by the region's output name."""
    tables = {}
    for start in range(0, len(regions), PROBE_BATCH):
        tables.update(_probe(model, regions[start:start + PROBE_BATCH], inits))
    return tables


def _probe(model: onnx.ModelProto, regions: list, inits: dict) -> dict[str, np.ndarray]:
    """One model holding the regions side by side (each 8-bit source a graph input), run once."""
    from qcompiler.executor import session

    nodes, inputs, feeds, outputs = {}, [], {}, []
    for quantize, dequantize, body in regions:
        # Each source is fed as its own input (one region's output may be the next one's source).
        source = f"{dequantize.input[0]}__codes"
        if source not in feeds:
            in_type = inits[dequantize.input[2]].data_type
            info = np.iinfo(EIGHT_BIT[in_type])
            feeds[source] = np.arange(info.min, info.max + 1).astype(EIGHT_BIT[in_type])
            inputs.append(helper.make_tensor_value_info(source, in_type, [256]))
        fed = onnx.NodeProto()
        fed.CopyFrom(dequantize)
        fed.input[0] = source
        nodes.setdefault(id(dequantize), fed)   # regions may share their source's DequantizeLinear
        for node in [*reversed(body), quantize]:
            nodes.setdefault(id(node), node)
        outputs.append(helper.make_tensor_value_info(quantize.output[0], inits[quantize.input[2]].data_type, [256]))
    used = {name for node in nodes.values() for name in node.input}
    graph = helper.make_graph(list(nodes.values()), "tables", inputs, outputs,
                              [inits[name] for name in used if name in inits])
    probe = helper.make_model(graph, opset_imports=list(model.opset_import))
    probe.ir_version = model.ir_version
    values = session(probe, optimize=False).run(None, feeds)
    return {o.name: v for o, v in zip(outputs, values)}


def _lookup(graph: onnx.GraphProto, quantize: onnx.NodeProto, dequantize: onnx.NodeProto, table: np.ndarray,
            signed: bool) -> list[onnx.NodeProto]:
    """The nodes that take `quantize`'s place: its output := table[code - min code], read with
    Cast + (Add) + Gather (their constants added to the graph's initializers)."""
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
    return lookup


def _live(nodes: list[onnx.NodeProto], needed: set[str]) -> list[onnx.NodeProto]:
    """The nodes (in topological order) that the graph outputs depend on: one backward sweep
    drops the tabulated regions' float ops."""
    kept = []
    for node in reversed(nodes):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(node.input)
    return kept[::-1]
