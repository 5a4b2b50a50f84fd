"""`Model`: an onnx-graphsurgeon graph behind the few queries and edits that passes need.

Passes read `model.graph.nodes` (graphsurgeon `Node`s: `.op`, `.name`, `.attrs`, `.inputs`,
`.outputs`) and edit through the methods here, so that no pass has to know how graphsurgeon
keeps producers and consumers, or how a graph output keeps its name when its producer changes.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs

MAX_WRITTEN_IR_VERSION = 10

Node = gs.Node
Tensor = gs.Tensor
Constant = gs.Constant
Variable = gs.Variable


class Model:
    """An ONNX model as a graphsurgeon graph plus the model-level fields graphsurgeon drops."""

    def __init__(self, graph: gs.Graph, *, ir_version: int, path: str | None = None,
                 metadata: dict[str, str] | None = None) -> None:
        self.graph = graph
        self.ir_version = ir_version
        self.path = path
        self.metadata = dict(metadata or {})
        #: Tensor name -> quantization annotation (qcompiler.quant.annotation.TensorQuant), set
        #: by annotate-quant and calibrate-ranges, consumed by insert-qdq; never saved to ONNX.
        self.quant: dict[str, object] = {}
        #: Pass name -> what an analysis pass found (e.g. insert-qdq's dequantized names): results
        #: travel with the model through a pipeline, not on pass objects; never saved to ONNX.
        self.analysis: dict[str, object] = {}
        self._names: set[str] | None = None   # unique_name's record of names in use (see there)
        self._names_at = -1                   # len(graph.nodes) when that record was made

    # ---- conversion -------------------------------------------------------------------------
    @classmethod
    def from_onnx(cls, proto: onnx.ModelProto, path: str | None = None) -> Model:
        """Wrap a (validated) ModelProto; `qcompiler.ir.load` is the safe way to get one."""
        metadata = {p.key: p.value for p in proto.metadata_props}
        return cls(gs.import_onnx(proto), ir_version=proto.ir_version, path=path, metadata=metadata)

    def to_onnx(self) -> onnx.ModelProto:
        """Export a toposorted copy as a ModelProto with the original IR version and metadata.

        IR versions below 4 list every initializer as a graph input; graphsurgeon does not, so
        such models are written as IR 4, the first version where initializers stand alone.
        Versions above 10 are written as the lowest IR version their opsets need (10 at most
        for the opsets we accept): onnxruntime 1.20, the oldest we support, reads IR <= 10,
        and a model within our opset range uses nothing newer.
        """
        graph = self.graph.copy()
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        _pack_int4_constants(graph)
        proto = gs.export_onnx(graph, do_type_check=False)
        proto.ir_version = max(self.ir_version, 4)
        if proto.ir_version > MAX_WRITTEN_IR_VERSION:
            proto.ir_version = max(4, onnx.helper.find_min_ir_version_for(list(proto.opset_import), True))
        onnx.helper.set_model_props(proto, self.metadata)
        return proto

    def copy(self) -> Model:
        """A deep copy: passes that must not touch their input work on one."""
        copied = Model(self.graph.copy(), ir_version=self.ir_version, path=self.path, metadata=self.metadata)
        copied.quant = dict(self.quant)
        copied.analysis = dict(self.analysis)
        return copied

    # ---- queries ------------------------------------------------------------------------------
    @property
    def opset(self) -> int:
        """The default-domain opset the model is written against."""
        return int(self.graph.opset)

    @property
    def nodes(self) -> list[Node]:
        return list(self.graph.nodes)

    def tensors(self) -> dict[str, Tensor]:
        return self.graph.tensors()

    def tensor(self, name: str) -> Tensor:
        tensors = self.graph.tensors()
        if name not in tensors:
            raise KeyError(f"no tensor named {name!r} in the graph")
        return tensors[name]

    @staticmethod
    def producer(tensor: Tensor) -> Node | None:
        """The node that computes `tensor`, or None for graph inputs and constants."""
        return tensor.inputs[0] if tensor.inputs else None

    def consumers(self, tensor: Tensor) -> list[Node]:
        """The nodes that read `tensor` (a node reading it twice is listed once)."""
        return list({id(n): n for n in tensor.outputs}.values())

    def is_graph_output(self, tensor: Tensor) -> bool:
        return any(t is tensor for t in self.graph.outputs)

    def is_graph_input(self, tensor: Tensor) -> bool:
        return any(t is tensor for t in self.graph.inputs)

    def has_single_use(self, tensor: Tensor) -> bool:
        """True when exactly one node reads `tensor`, once, and it is not a graph output."""
        return len(tensor.outputs) == 1 and not self.is_graph_output(tensor)

    def can_take_output_name(self, tensor: Tensor) -> bool:
        """True if `tensor` can be renamed to become a graph output: computed, not already I/O."""
        return (isinstance(tensor, Variable) and self.producer(tensor) is not None
                and not self.is_graph_input(tensor) and not self.is_graph_output(tensor))

    def const_value(self, tensor: Tensor | None) -> np.ndarray | None:
        """The value of a constant tensor (an initializer or a Constant node's output), else None."""
        if tensor is None or (isinstance(tensor, Variable) and tensor.is_empty()):
            return None
        if isinstance(tensor, Constant):
            return np.asarray(tensor.values)
        node = self.producer(tensor)
        if node is not None and node.op == "Constant" and "value" in node.attrs:
            value = node.attrs["value"]
            return np.asarray(value.values if isinstance(value, Constant) else value)
        return None

    @staticmethod
    def input_or_none(node: Node, index: int) -> Tensor | None:
        """Input `index` of `node`, or None when it is absent or the empty optional input."""
        if index >= len(node.inputs):
            return None
        tensor = node.inputs[index]
        return None if isinstance(tensor, Variable) and tensor.is_empty() else tensor

    def unique_name(self, base: str) -> str:
        """`base` if no node or tensor uses it yet, else `base_1`, `base_2`, ..."""
        taken = self._taken_names()
        name = base if base not in taken else next(f"{base}_{i}" for i in itertools.count(1) if f"{base}_{i}" not in taken)
        taken.add(name)
        return name

    def _taken_names(self) -> set[str]:
        """Every node and tensor name, plus every name handed out since. Walking the graph on each
        call made inserting N nodes O(N^2) (a 5000-node chain spent minutes here), so the set is
        kept, and made again whenever nodes were added or removed other than through add_node."""
        if self._names is None or self._names_at != len(self.graph.nodes):
            self._names = set(self.graph.tensors()) | {n.name for n in self.graph.nodes}
            self._names_at = len(self.graph.nodes)
        return self._names

    # ---- edits --------------------------------------------------------------------------------
    def constant(self, name: str, values: np.ndarray) -> Constant:
        """A new constant tensor with a name unique in the graph."""
        return Constant(self.unique_name(name), np.array(values, order="C"))  # keeps 0-d arrays 0-d

    def variable(self, name: str, dtype: np.dtype | None = None, shape: Sequence | None = None) -> Variable:
        """A new intermediate tensor with a name unique in the graph."""
        return Variable(self.unique_name(name), dtype=dtype, shape=shape)

    def add_node(self, op: str, inputs: Sequence[Tensor], outputs: Sequence[Tensor],
                 attrs: dict | None = None, name: str | None = None) -> Node:
        """Append a node; the graph is toposorted again by `finalize`."""
        node = Node(op=op, name=self.unique_name(name or op), attrs=dict(attrs or {}),
                    inputs=list(inputs), outputs=list(outputs))
        self.graph.nodes.append(node)
        if self._names is not None and self._names_at == len(self.graph.nodes) - 1:
            self._names_at += 1   # the record stays whole: add this node's tensors (named anywhere) to it
            self._names.update(t.name for t in (*node.inputs, *node.outputs))
        return node

    def set_const_input(self, node: Node, index: int, values: np.ndarray, name: str | None = None) -> None:
        """Give `node` a new constant as input `index`, never mutating a constant others share."""
        old = self.input_or_none(node, index)
        values = np.array(values, order="C")  # np.ascontiguousarray would make 0-d arrays 1-d
        if isinstance(old, Constant) and len(old.outputs) == 1:
            old.values = values
            return
        base = name or (old.name if old is not None else f"{node.name}_input{index}")
        new = self.constant(base, values)
        while len(node.inputs) <= index:
            node.inputs.append(Variable.empty())
        node.inputs[index] = new

    def replace_all_uses(self, old: Tensor, new: Tensor, except_for: Node | None = None) -> None:
        """Make every reader of `old` (but `except_for`) read `new`; a graph output keeps its name.

        When `old` is a graph output, `new` takes over its name if `new` is an intermediate
        tensor that is not itself an input or output of the graph; otherwise an Identity keeps
        the interface (the model's input and output names never change).
        """
        for consumer in self.consumers(old):
            if consumer is not except_for:
                _swap(consumer.inputs, old, new)
        if not self.is_graph_output(old):
            return
        outputs = self.graph.outputs
        index = next(i for i, t in enumerate(outputs) if t is old)
        if self.can_take_output_name(new):
            name, dtype, shape = old.name, old.dtype, old.shape
            old.name = self.unique_name(f"{name}_replaced")
            new.name = name
            new.dtype = new.dtype if new.dtype is not None else dtype
            new.shape = new.shape if new.shape is not None else shape
            outputs[index] = new
        else:
            producer = self.producer(old)
            if producer is not None:
                _swap(producer.outputs, old, self.variable(f"{old.name}_detached"))
            self.add_node("Identity", [new], [old], name=f"{old.name}_keep_output")

    def bypass(self, node: Node, data_input: int = 0) -> None:
        """Remove a node that passes input `data_input` through unchanged (Identity, Dropout)."""
        source = node.inputs[data_input]
        self.replace_all_uses(node.outputs[0], source)
        self.remove_node(node)

    def remove_node(self, node: Node) -> None:
        """Remove a node whose outputs nobody reads any more; refuse if someone still does."""
        live = [t.name for t in node.outputs if t.outputs or self.is_graph_output(t)]
        if live:
            raise ValueError(f"Pass developer: node {node.name!r} ({node.op}) still feeds {live}; "
                             "replace those uses before removing it")
        self._drop(node)

    def replace_nodes(self, old: Sequence[Node], op: str, inputs: Sequence[Tensor], outputs: Sequence[Tensor],
                      attrs: dict | None = None, name: str | None = None) -> Node:
        """Replace the connected nodes `old` by one new node that computes `outputs`.

        Every output of `old` that is still read must be among `outputs` (the new node takes
        it over, name and all); anything else would leave a reader without a producer.
        """
        kept = {id(t) for t in outputs}
        replaced = {id(n) for n in old}
        for node in old:
            lost = [t.name for t in node.outputs
                    if id(t) not in kept and (any(id(c) not in replaced for c in t.outputs)
                                              or self.is_graph_output(t))]
            if lost:
                raise ValueError(f"Pass developer: replacing {node.name!r} ({node.op}) would orphan {lost}")
        names = [n.name for n in old]
        for node in old:
            self._drop(node)
        return self.add_node(op, inputs, outputs, attrs, name=name or names[0])

    def _drop(self, node: Node) -> None:
        """Disconnect `node` and take it out of the node list (by identity: graphsurgeon's
        Node.__eq__ compares structure, so list.remove could take a look-alike)."""
        node.inputs.clear()
        node.outputs.clear()
        nodes = self.graph.nodes
        del nodes[next(i for i, n in enumerate(nodes) if n is node)]

    def finalize(self) -> Model:
        """Drop dead nodes and tensors, then toposort: call at the end of every pass that edits."""
        self.graph.cleanup(remove_unused_graph_inputs=False).toposort()
        return self

    # ---- comparison ---------------------------------------------------------------------------
    def fingerprint(self) -> tuple:
        """A structural summary (nodes, attributes, connections, constant bytes) for equality.

        Used to check that a pass's `modified` flag tells the truth.
        """
        def tensor_key(t: Tensor) -> tuple:
            if isinstance(t, Constant):
                values = np.asarray(t.values)
                return ("const", values.dtype.str, values.shape, values.tobytes())
            return ("var", t.name)

        # Sorted: two topological orders of the same nodes are the same graph.
        nodes = tuple(sorted(
            (tuple(t.name for t in n.outputs), n.op, n.domain, n.name,
             tuple(sorted((k, tensor_key(v) if isinstance(v, Tensor) else repr(v)) for k, v in n.attrs.items())), tuple(tensor_key(t) for t in n.inputs))
            for n in self.graph.nodes
        ))
        io = (tuple(t.name for t in self.graph.inputs), tuple(t.name for t in self.graph.outputs))
        quant = tuple(sorted((name, _annotation_key(tq)) for name, tq in self.quant.items()))
        return nodes, io, quant

    def __repr__(self) -> str:
        return (f"Model({self.graph.name!r}, opset {self.opset}, {len(self.graph.nodes)} nodes, "
                f"inputs {[t.name for t in self.graph.inputs]}, outputs {[t.name for t in self.graph.outputs]})")


def ops_histogram(nodes: Iterable[Node]) -> dict[str, int]:
    """Count nodes per op type, most frequent first."""
    counts: dict[str, int] = {}
    for node in nodes:
        counts[node.op] = counts.get(node.op, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _annotation_key(annotation) -> tuple:
    """A comparable form of a quantization annotation (a dataclass that may hold numpy arrays)."""
    fields = dataclasses.asdict(annotation) if dataclasses.is_dataclass(annotation) else {"value": annotation}
    return tuple(sorted((k, _plain(v)) for k, v in fields.items()))


def _plain(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _plain(v)) for k, v in value.items()))
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, value.tobytes())
    return repr(value)


def _swap(tensors: list, old: Tensor, new: Tensor) -> None:
    """Replace `old` by `new` in a node's input or output list, one index at a time.

    graphsurgeon's lists keep producers and consumers in sync only through item assignment.
    """
    for i, tensor in enumerate(tensors):
        if tensor is old:
            tensors[i] = new


#: numpy dtypes of ONNX INT4 and UINT4 tensors (stored two values per byte).
INT4_DTYPES = (np.dtype(ml_dtypes.int4), np.dtype(ml_dtypes.uint4))


def _pack_int4_constants(graph: gs.Graph) -> None:
    """Give INT4/UINT4 constants to graphsurgeon as packed TensorProtos.

    graphsurgeon 0.5/0.6 writes an int4 array's bytes unpacked (one byte per value), which
    onnx rejects, and onnx < 1.19 cannot pack ml_dtypes arrays itself: pack them here.
    """
    for tensor in graph.tensors().values():
        if isinstance(tensor, Constant) and not isinstance(tensor._values, gs.ir.tensor.LazyValues) \
                and tensor.dtype in INT4_DTYPES:
            tensor.values = gs.ir.tensor.LazyValues(int4_tensor_proto(np.asarray(tensor.values), tensor.name))


def int4_tensor_proto(values: np.ndarray, name: str) -> onnx.TensorProto:
    """An INT4/UINT4 TensorProto: two values per byte, the first in the low nibble (ONNX spec)."""
    nibbles = values.astype(np.int8).ravel().view(np.uint8) & 0x0F
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    packed = (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)
    proto = onnx.TensorProto()
    proto.name = name
    proto.data_type = onnx.TensorProto.INT4 if values.dtype == INT4_DTYPES[0] else onnx.TensorProto.UINT4
    proto.dims.extend(values.shape)
    proto.raw_data = packed.tobytes()
    return proto
