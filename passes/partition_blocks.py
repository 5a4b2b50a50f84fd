"""partition-blocks: split a network into the units BRECQ reconstructs (docs/brecq.md).

Automatic on any ONNX DAG. A *cut* is a node that every path from the inputs to the outputs
passes through (a dominator of the exit). Between two cuts lies either a single node (a link of
a plain chain) or a region with a fork and a join: a single-entry single-exit region such as a
residual block. Granularities:

- layer: each weighted layer, with the other nodes it feeds (ReLU, pooling, a residual Add);
- block: each fork-join region is a block; chain links are grouped up to 3 weighted layers;
- stage: consecutive blocks whose layers compute at the same spatial size (a ResNet stage);
- net:   the whole network.

A block that would hold no weighted layer joins its neighbour. The partition is analysis: the
model is unchanged, and the blocks are left on `pass.blocks`.
"""

from __future__ import annotations

import networkx as nx

from qcompiler.blocks import GRANULARITIES, Block
from qcompiler.errors import UsageError
from qcompiler.ir import Model, Node
from qcompiler.ops import QUANTIZED_LAYERS
from qcompiler.pass_infra import Pass, PassResult
from qcompiler.registry import register

CHAIN_LAYERS = 3


def _is_layer(model: Model, node: Node) -> bool:
    weight = model.const_value(model.input_or_none(node, 1)) if node.op in QUANTIZED_LAYERS else None
    return weight is not None and weight.dtype.kind == "f"


def _cut_nodes(model: Model, nodes: list[Node]) -> set[str]:
    """Nodes every path from the inputs to the outputs passes through: the dominators of the exit
    in the dataflow graph (networkx), so the result does not depend on the topological order."""
    graph = nx.DiGraph()
    graph.add_nodes_from(["<entry>", "<exit>"])
    outputs = {t.name for t in model.graph.outputs}
    for node in nodes:
        graph.add_node(node.name)
        for tensor in node.inputs:
            if model.const_value(tensor) is not None or not tensor.name:
                continue
            producer = model.producer(tensor)
            graph.add_edge(producer.name if producer is not None else "<entry>", node.name)
        if any(t.name in outputs for t in node.outputs) or not any(model.consumers(t) for t in node.outputs):
            graph.add_edge(node.name, "<exit>")
    dominators = nx.immediate_dominators(graph, "<entry>")
    cuts, current = set(), dominators["<exit>"]
    while current != "<entry>":
        cuts.add(current)
        current = dominators[current]
    return cuts


def _segments(model: Model) -> list[list[Node]]:
    """The nodes in graph order, split after each cut node: chain links and fork-join regions."""
    nodes = [n for n in model.graph.nodes if n.op != "Constant"]
    cuts = _cut_nodes(model, nodes)
    segments, current = [], []
    for node in nodes:
        current.append(node)
        if node.name in cuts:
            segments.append(current)
            current = []
    if current:
        segments.append(current)
    return segments


def _layer_groups(model: Model) -> list[list[Node]]:
    """One group per weighted layer; any other node joins the latest group that feeds it."""
    groups: list[list[Node]] = []
    group_of: dict[str, int] = {}
    for node in (n for n in model.graph.nodes if n.op != "Constant"):
        feeding = [group_of[t.name] for t in node.inputs if t.name in group_of]
        if _is_layer(model, node) or not groups:
            groups.append([])
        index = len(groups) - 1 if _is_layer(model, node) or not feeding else max(feeding)
        groups[index].append(node)
        group_of.update({t.name: index for t in node.outputs})
    return groups


def _resolution(model: Model, nodes: list[Node]):
    """The spatial size of the last weighted layer's output (None for a Gemm)."""
    layers = [n for n in nodes if _is_layer(model, n)] or nodes
    shape = layers[-1].outputs[0].shape
    return tuple(shape[2:]) if shape is not None and len(shape) > 2 else None


def _group(model: Model, granularity: str) -> list[list[Node]]:
    if granularity == "net":
        return [[n for n in model.graph.nodes if n.op != "Constant"]]
    if granularity == "layer":
        return _layer_groups(model)
    groups, residual_group = [], False
    for segment in _segments(model):
        residual = len(segment) > 1
        weighted = sum(_is_layer(model, n) for n in segment)
        chain_full = sum(_is_layer(model, n) for n in groups[-1]) + weighted > CHAIN_LAYERS if groups else True
        if residual or (weighted and (residual_group or chain_full)) or not groups:
            groups.append([])
            residual_group = residual
        groups[-1].extend(segment)  # an unweighted link (ReLU, pooling) stays with what precedes it
    if granularity == "stage":
        stages = [groups[0]]
        for group in groups[1:]:
            if _resolution(model, group) == _resolution(model, stages[-1]):
                stages[-1].extend(group)
            else:
                stages.append(list(group))
        groups = stages
    return groups


def _merge_unweighted(model: Model, groups: list[list[Node]]) -> list[list[Node]]:
    """A group without a weighted layer joins the one before it (or, first, the one after)."""
    merged: list[list[Node]] = []
    pending: list[Node] = []
    for group in groups:
        if any(_is_layer(model, n) for n in group):
            merged.append(pending + group)
            pending = []
        elif merged:
            merged[-1].extend(group)
        else:
            pending.extend(group)
    if pending:
        merged.append(pending)
    return merged


def partition(model: Model, granularity: str = "block") -> list[Block]:
    """The blocks of `model` at a granularity, in graph order."""
    if granularity not in GRANULARITIES:
        raise UsageError(f"granularity {granularity!r}: choose one of {', '.join(GRANULARITIES)}")
    groups = _merge_unweighted(model, _group(model, granularity))
    order = {n.name: i for i, n in enumerate(model.graph.nodes)}
    graph_outputs = {t.name for t in model.graph.outputs}
    blocks = []
    for index, group in enumerate(groups):
        names = {n.name for n in group}
        produced = {t.name for n in group for t in n.outputs}
        inputs = dict.fromkeys(t.name for n in group for t in n.inputs
                               if t.name and t.name not in produced and model.const_value(t) is None)
        outputs = [t.name for n in group for t in n.outputs
                   if t.name in graph_outputs or any(c.name not in names for c in model.consumers(t))]
        ordered = sorted(group, key=lambda n: order[n.name])
        blocks.append(Block(f"block{index}", tuple(n.name for n in ordered),
                            tuple(n.name for n in ordered if _is_layer(model, n)), tuple(inputs), tuple(outputs)))
    return blocks


@register("partition-blocks")
class PartitionBlocks(Pass):
    """Find the reconstruction blocks (see the module docstring); the model is not changed."""

    def __init__(self, granularity: str = "block") -> None:
        self.granularity = granularity
        self.blocks: list[Block] = []

    def call(self, model: Model) -> PassResult:
        self.blocks = partition(model, self.granularity)
        return PassResult(model, False)
