"""The per-layer fidelity check: the QDQ model cut at its activation quantizers, so that each
layer of a compiled library can be compared with the QDQ model's when both are fed the same
inputs (the contract: every layer within 1 LSB; end to end, 1-LSB near-ties may grow through
later layers, which says nothing about any one layer).

    cut, fed = cut_at_quantizers(qdq)           # compile `cut` like any QDQ model
    feeds = layer_feeds(qdq, fed, inputs)       # the model's inputs plus each layer's reference input
    compare(cut, library_of_cut, feeds)         # qcompiler.fidelity: one Fidelity per layer
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from qcompiler.executor import session
from qcompiler.fidelity import run_reference


def _value_infos(proto: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    inferred = onnx.shape_inference.infer_shapes(proto)
    return {v.name: v for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]}


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def _twin(node: onnx.NodeProto, inputs: list[str], output: str) -> onnx.NodeProto:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return helper.make_node(node.op_type, inputs, [output], name=f"{node.name}__cut", **attrs)


def _dequantizers(q: onnx.NodeProto, readers: dict) -> list[tuple[onnx.NodeProto | None, onnx.NodeProto]]:
    """(the Clip between them or None, a DequantizeLinear) for each dequantization of q's codes."""
    found = []
    for reader in readers.get(q.output[0], []):
        if reader.op_type == "DequantizeLinear":
            found.append((None, reader))
        elif reader.op_type == "Clip":
            found += [(reader, d) for d in readers.get(reader.output[0], []) if d.op_type == "DequantizeLinear"]
    return found


def cut_at_quantizers(qdq: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The QDQ model cut into its layers: every activation QuantizeLinear whose dequantized value
    another node reads gets a twin reading a new graph input '<tensor>__fed' (with a twin of its
    DequantizeLinear), the readers move to the twin, and the original dequantized tensor becomes
    a graph output. Each piece then computes one layer from inputs the caller chooses: fed the
    reference's dequantized values, every piece's output is that layer alone against the
    reference. A Clip between a QuantizeLinear and its DequantizeLinear (activations of 2 to 4
    bits stored in 8) is twinned with them. Returns the cut model and {fed input: the reference
    tensor to feed it}."""
    cut = onnx.ModelProto()
    cut.CopyFrom(qdq)
    graph, infos = cut.graph, _value_infos(qdq)
    constants = {i.name for i in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    twins, outputs, fed = [], [], {}
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        if q.input[0] in constants | graph_inputs:   # the model's input is fed already
            continue
        read = [(clip, d) for clip, d in _dequantizers(q, readers) if readers.get(d.output[0])]
        if not read:   # the graph's last quantizer: its output is compared as it is
            continue
        reference = read[0][1].output[0]
        source = f"{reference}__fed"
        fed[source] = reference
        twins.append(_twin(q, [source, *q.input[1:]], f"{q.output[0]}__cut"))
        clipped = set()
        for clip, d in read:
            codes = f"{q.output[0]}__cut"
            if clip is not None:
                codes = f"{clip.output[0]}__cut"
                if codes not in clipped:
                    twins.append(_twin(clip, [f"{q.output[0]}__cut", *clip.input[1:]], codes))
                    clipped.add(codes)
            twins.append(_twin(d, [codes, *d.input[1:]], f"{d.output[0]}__cut"))
            for reader in readers[d.output[0]]:
                reader.input[:] = [f"{x}__cut" if x == d.output[0] else x for x in reader.input]
        outputs.append(reference)
    # twins read only graph inputs and constants: first, the order stays topological (copies:
    # clearing a repeated field may detach the messages it held)
    nodes = twins + [_copy(n) for n in graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    for source, reference in fed.items():
        info = onnx.ValueInfoProto()
        info.CopyFrom(infos[reference])
        info.name = source
        graph.input.append(info)
    present = {o.name for o in graph.output}
    graph.output.extend(infos[name] for name in outputs if name not in present)
    onnx.checker.check_model(cut, full_check=True)
    return cut, fed


def layer_feeds(qdq: onnx.ModelProto, fed: dict[str, str], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`feeds` plus each cut input's value in the reference (onnxruntime, the QDQ model as written)."""
    if not fed:
        return dict(feeds)
    exposed = onnx.ModelProto()
    exposed.CopyFrom(qdq)
    infos = _value_infos(qdq)
    wanted = sorted(set(fed.values()))
    exposed.graph.output.extend(infos[name] for name in wanted if name not in {o.name for o in qdq.graph.output})
    values, feeds = run_reference(session(exposed, optimize=False), feeds)
    by_name = dict(zip([o.name for o in exposed.graph.output], values))
    return {**feeds, **{source: by_name[reference] for source, reference in fed.items()}}
