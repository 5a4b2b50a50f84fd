"""annotate-quant: decide which tensors are quantized and how (docs/quantization.md, placement rules).

- Layers (Conv, ConvTranspose, Gemm, MatMul with a constant weight): the weight per output
  channel; the data input; the output, or the output of a Relu/Clip that alone reads it (for a
  MatMul, after the bias Add that alone reads it).
- Residual Add: its inputs and its output (or its Relu's).
- Mul of two computed tensors from different sources (a squeeze-excitation gate times the
  features it gates): its inputs and its output, so that the gate's activation becomes a lookup
  table and the product an integer multiply. A product of two functions of one tensor (Swish's
  x * sigmoid(x), a decomposed HardSwish) is left to become one lookup table as a whole.
- Concat: inputs and output tied to one scale (unless the config unties it: then the output
  stays float and each input keeps its own scale); pooling, Reshape, Flatten, Transpose,
  (Un)Squeeze: output tied to its input (the values pass through unchanged, or are averaged on
  the same grid). GlobalAveragePool and a ReduceMean over H and W (the global pool of dynamo
  exports): its input and output, each on its own grid.
- Anything else stays float between the dequantized tensors around it.
Tied tensors form groups (union-find); a group takes the widest bit width among its members.
"""

from __future__ import annotations

import numpy as np

from qcompiler.ir import Model, Node
from qcompiler.ops import QUANTIZED_LAYERS
from qcompiler.pass_infra import Pass, PassResult
from qcompiler.quant.annotation import FUSABLE_PRODUCERS, FUSED_ACTIVATIONS, PASS_THROUGH, TensorQuant
from qcompiler.quant.presets import QuantConfig
from qcompiler.registry import register


def weight_axis(node: Node, weight: np.ndarray) -> int:
    """The output-channel axis of a layer's weight."""
    if node.op == "ConvTranspose":
        return 1
    if node.op == "Gemm":
        return 0 if node.attrs.get("transB", 0) else 1
    if node.op == "MatMul":
        return weight.ndim - 1
    return 0


def quantized_layers(model: Model) -> list[Node]:
    """Layers with a constant float weight as input 1, in topological order."""
    layers = []
    for node in model.graph.nodes:
        weight = model.const_value(model.input_or_none(node, 1)) if node.op in QUANTIZED_LAYERS else None
        if weight is not None and weight.dtype.kind == "f" and weight.ndim >= 1:
            layers.append(node)
    return layers


@register("annotate-quant")
class AnnotateQuant(Pass):
    """Attach QuantSpecs to weights and activations according to a QuantConfig (preset + overrides)."""

    def __init__(self, config: QuantConfig | None = None) -> None:
        self.config = config or QuantConfig()

    def call(self, model: Model) -> PassResult:
        before = model.fingerprint()
        requests: dict[str, int] = {}  # activation tensor name -> bits
        parent: dict[str, str] = {}
        layers = quantized_layers(model)
        for layer in layers:
            self._annotate_layer(model, layer, layer is layers[0] or layer is layers[-1], layer is layers[-1], requests)
        for node in model.graph.nodes:
            self._annotate_other(model, node, requests, parent)
        self._tie_pass_through(model, requests, parent)
        roots = {name: _find(parent, name) for name in requests}
        group_bits: dict[str, int] = {}
        for name, bits in requests.items():
            wide = 16 if name in self.config.wide_activations else 0   # widen-activations' remedy
            group_bits[roots[name]] = max(group_bits.get(roots[name], 0), bits, wide)
        for name, root in roots.items():
            model.quant[name] = TensorQuant(self.config.activation_spec(group_bits[root]), "activation", group=root)
        return PassResult(model, model.fingerprint() != before)

    def _annotate_layer(self, model: Model, layer: Node, edge: bool, last: bool, requests: dict[str, int]) -> None:
        weight_t = layer.inputs[1]
        weight = model.const_value(weight_t)
        spec = self.config.weight_spec(layer.name, weight_axis(layer, weight), edge)
        if spec is None:
            return
        model.quant[weight_t.name] = TensorQuant(spec, "weight", layer=layer.name)
        _request(model, layer.inputs[0], self.config.input_bits(layer.name, edge), requests)
        out_bits = 8 if last and self.config.edge_8bit and self.config.preset.activations.bits else \
            self.config.preset.activations.bits
        _request(model, _activation_output(model, layer), out_bits, requests)

    def _annotate_other(self, model: Model, node: Node, requests: dict[str, int], parent: dict[str, str]) -> None:
        bits = self.config.preset.activations.bits
        if _joins_two_activations(model, node):
            for tensor in node.inputs:
                _request(model, tensor, bits, requests)
            _request(model, _activation_output(model, node), bits, requests)
        elif node.op == "Concat" and node.name in self.config.untied_concats:
            return  # inputs keep their own scales; the output stays float (qcompiler.quant.ties)
        elif node.op == "Concat":
            members = [t for t in [*node.inputs, node.outputs[0]] if _request(model, t, bits, requests)]
            for tensor in members[1:]:
                _union(parent, members[0].name, tensor.name)
        elif _is_global_mean(model, node):   # input and output quantized, each on its own grid
            _request(model, node.inputs[0], bits, requests)
            _request(model, node.outputs[0], bits, requests)
        elif node.op in FUSED_ACTIVATIONS:
            producer = model.producer(node.inputs[0])
            if producer is None or producer.op not in FUSABLE_PRODUCERS or not model.has_single_use(node.inputs[0]):
                _request(model, node.inputs[0], bits, requests)
                _request(model, node.outputs[0], bits, requests)

    def _tie_pass_through(self, model: Model, requests: dict[str, int], parent: dict[str, str]) -> None:
        """Tie pass-through outputs to their inputs, until no new tensor joins (chains of them)."""
        changed = True
        while changed:
            changed = False
            for node in model.graph.nodes:
                if node.op not in PASS_THROUGH:
                    continue
                x, y = node.inputs[0], node.outputs[0]
                if x.name not in requests and y.name not in requests:
                    continue  # neither side is quantized: the op stays in float
                if x.name in requests and y.name in requests and _find(parent, x.name) == _find(parent, y.name):
                    continue  # already tied
                bits = max(requests.get(x.name, 0), requests.get(y.name, 0))
                if _request(model, x, bits, requests) and _request(model, y, bits, requests):
                    _union(parent, x.name, y.name)
                    changed = True


def _is_global_mean(model: Model, node: Node) -> bool:
    """GlobalAveragePool, or a ReduceMean over the spatial axes of a 4-D tensor (as dynamo-era
    exporters write it: torch's adaptive_avg_pool2d(x, 1) is mean(x, [-1, -2], keepdim=True)).
    Its input and output are quantized, so that the activation before it is a table and the
    mean runs on the integers; each on its own grid: on one grid a mean of integers is an exact
    tie a fifth of the time, the float reference rounds those its own way, and the 1-LSB
    differences grow through what follows (a squeeze-excitation gate: the corpus MobileNetV3 was
    10 LSB from its QDQ model end to end, tied; untied, 3). (Not every ReduceMean: a decomposed
    LayerNorm's mean of squares would put its variance on an 8-bit grid.)"""
    if node.op == "GlobalAveragePool":
        return True
    if node.op != "ReduceMean" or len(node.inputs[0].shape or ()) != 4:
        return False
    axes = node.attrs.get("axes")
    if len(node.inputs) > 1 and node.inputs[1].name:   # opset 18: axes as an input
        axes = model.const_value(node.inputs[1])
    return axes is not None and sorted(int(a) % 4 for a in np.asarray(axes).reshape(-1)) == [2, 3]


def _joins_two_activations(model: Model, node: Node) -> bool:
    """A residual Add, or a Mul of two computed tensors that do not derive from one tensor."""
    if node.op not in ("Add", "Mul") or len(node.inputs) != 2 or any(model.const_value(t) is not None
                                                                      for t in node.inputs):
        return False
    if node.op == "Add":
        return True
    roots = {_elementwise_root(model, t) for t in node.inputs}
    return len(roots) == 2 and None not in roots


#: Ops whose output element depends on the same element of one computed input (the others constant).
ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Clip", "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid",
                         "HardSwish", "Tanh", "Erf", "Exp", "Log", "Sqrt", "Pow", "Neg", "Abs", "Min", "Max"})


def _elementwise_root(model: Model, tensor):
    """The tensor `tensor` is an elementwise function of (through ops whose other inputs are
    constants): Swish's sigmoid(x) and x both lead to x. None where two computed tensors meet."""
    while True:
        producer = model.producer(tensor)
        if producer is None or producer.op not in ELEMENTWISE:
            return tensor.name
        computed = [t for t in producer.inputs if t.name and model.const_value(t) is None]
        if len(computed) != 1:
            return None if len({_elementwise_root(model, t) for t in computed}) != 1 else \
                _elementwise_root(model, computed[0])
        tensor = computed[0]


def _activation_output(model: Model, node: Node):
    """The tensor to quantize after `node`: its output, or that of a Relu/Clip that alone reads it;
    for a MatMul, after the bias Add that alone reads it (3-D MatMuls, which no Gemm can take,
    keep their bias as an Add: exporters' linear layers on sequences)."""
    out = node.outputs[0]
    readers = model.consumers(out)
    if node.op == "MatMul" and model.has_single_use(out) and _adds_a_bias(model, readers[0], out):
        out = readers[0].outputs[0]
        readers = model.consumers(out)
    if model.has_single_use(out) and readers[0].op in FUSED_ACTIVATIONS:
        return readers[0].outputs[0]
    return out


def _adds_a_bias(model: Model, node: Node, out) -> bool:
    """Whether `node` adds to `out` a constant with one value per output channel (the last axis)."""
    if node.op != "Add" or len(node.inputs) != 2:
        return False
    other = node.inputs[1] if node.inputs[0] is out else node.inputs[0]
    bias = model.const_value(other)
    channels = (out.shape or [None])[-1]
    return bias is not None and isinstance(channels, int) and bias.size == channels and bias.shape[-1:] == (channels,)


def _request(model: Model, tensor, bits: int, requests: dict[str, int]) -> bool:
    """Ask for `tensor` to be quantized (float, computed or a graph input); False if it cannot be
    (or if `bits` is 0: weight-only presets leave activations in float)."""
    if bits <= 0 or model.const_value(tensor) is not None or tensor.dtype is None or np.dtype(tensor.dtype).kind != "f":
        return False
    requests[tensor.name] = max(requests.get(tensor.name, 0), bits)
    return True


def _find(parent: dict[str, str], name: str) -> str:
    while parent.get(name, name) != name:
        name = parent[name]
    return name


def _union(parent: dict[str, str], a: str, b: str) -> None:
    ra, rb = _find(parent, a), _find(parent, b)
    if ra != rb:
        parent[rb] = ra
