"""fold-shapes: fix the input shapes and fold every computation on shapes into constants.

Exporters compute Reshape targets, Pads and channel-shuffle shapes at run time (Shape -> Gather
/ Slice -> arithmetic -> Concat -> Reshape, as `x.view(x.size(0), -1)` exports with a dynamic
batch). Once the input shapes are known, ONNX shape inference knows every intermediate shape:
each Shape node becomes its inferred value, and graphsurgeon's constant folder (run by
onnxruntime) evaluates everything downstream of it. Measured on the corpus in
`qcompiler.models.recipes.corpus`, this folds all shape arithmetic, where graphsurgeon's own
`fold_shapes` leaves Shape -> Slice chains and Shapes of tensors behind a Split; onnxruntime's
optimizer, onnxslim and onnxsim also fold them all but fuse BatchNorms, Pads and MatMuls on
the way (work our own passes do and test), and onnxscript's `fold_constants` folds none.

A dynamic batch survives: the model is folded at two batch sizes, and a folded Reshape target
whose entries differ only where the batch goes gets that entry written as 0 (copy the input's
dimension) or -1 (infer it). If some other constant depends on the batch, the model keeps the
batch it was folded at and the pass says so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from qcompiler.errors import UnsupportedModelError
from qcompiler.ir import Model
from qcompiler.ir.fold import fold_shape_arithmetic
from qcompiler.pass_infra import Pass, PassResult
from qcompiler.passes.fold_constants import NEVER_FOLD
from qcompiler.registry import register

log = logging.getLogger(__name__)

#: Two batch sizes to fold at; their difference shows which folded constants hold the batch.
PROBE_BATCHES = (2, 3)


@register("fold-shapes")
class FoldShapes(Pass):
    """Fold Shape/Gather/Slice/Concat/... on shapes into constants (input shapes fixed; dynamic batch kept)."""

    def __init__(self, input_shapes: Mapping[str, Sequence[int]] | None = None) -> None:
        """`input_shapes`: input name -> its full shape; a first dimension of -1 keeps a dynamic batch."""
        self.input_shapes = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
        #: Set by `call`: the batch the model was fixed at when it could not stay dynamic, else None.
        self.fixed_batch: int | None = None

    def call(self, model: Model) -> PassResult:
        if not any(node.op in ("Shape", "Size") for node in model.graph.nodes) and not self._fixes_dims(model):
            return PassResult(model, False)
        proto = model.to_onnx()
        batch_inputs = _dynamic_batch_inputs(proto, self.input_shapes)
        first = fold_shape_arithmetic(_with_shapes(proto, self.input_shapes, PROBE_BATCHES[0], batch_inputs),
                                      NEVER_FOLD)
        if batch_inputs:
            second = fold_shape_arithmetic(_with_shapes(proto, self.input_shapes, PROBE_BATCHES[1], batch_inputs),
                                           NEVER_FOLD)
            folded = _keep_batch_dynamic(first, second, batch_inputs)
            if folded is None:
                self.fixed_batch = PROBE_BATCHES[0]
                log.warning("%s: a folded shape depends on the batch in a way a Reshape target cannot express; "
                            "the model is fixed at batch %d", model.path or "model", PROBE_BATCHES[0])
                folded = first
        else:
            folded = first
        result = Model.from_onnx(folded, path=model.path)
        result.metadata = dict(model.metadata)
        if result.fingerprint() == model.fingerprint() and _input_shapes(result) == _input_shapes(model):
            return PassResult(model, False)
        return PassResult(result, True)

    def _fixes_dims(self, model: Model) -> bool:
        return any(t.name in self.input_shapes and tuple(t.shape or ()) != self.input_shapes[t.name]
                   for t in model.graph.inputs)


def _input_shapes(model: Model) -> list:
    return [tuple(t.shape or ()) for t in model.graph.inputs]


def _dynamic_batch_inputs(proto: onnx.ModelProto, shapes: Mapping[str, tuple]) -> list[str]:
    """Inputs whose first dimension is symbolic and not fixed by the caller (absent, or -1): the batch to keep."""
    names = []
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        wanted = shapes.get(value.name)
        if dims and not dims[0].HasField("dim_value") and (wanted is None or wanted[0] < 0):
            names.append(value.name)
    return names


def _with_shapes(proto: onnx.ModelProto, shapes: Mapping[str, tuple], batch: int,
                 batch_inputs: Sequence[str]) -> onnx.ModelProto:
    """A copy with every input dimension fixed: given shapes, else `batch` for a dynamic first dim."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(proto)
    for value in fixed.graph.input:
        dims = value.type.tensor_type.shape.dim
        wanted = shapes.get(value.name)
        if wanted is not None:
            if len(wanted) != len(dims):
                raise UnsupportedModelError(f"input {value.name!r} has {len(dims)} dimensions, but the given shape "
                                            f"{list(wanted)} has {len(wanted)}")
            for axis, (dim, size) in enumerate(zip(dims, wanted)):
                if dim.HasField("dim_value") and size >= 0 and dim.dim_value != size:
                    raise UnsupportedModelError(f"input {value.name!r} has size {dim.dim_value} in dimension {axis}, "
                                                f"but the given shape {list(wanted)} says {size}")
                dim.Clear()
                dim.dim_value = batch if size < 0 else size
        elif value.name in batch_inputs:
            dims[0].Clear()
            dims[0].dim_value = batch
    del fixed.graph.value_info[:]
    for value in fixed.graph.output:
        value.type.tensor_type.ClearField("shape")
    return fixed


def _keep_batch_dynamic(first: onnx.ModelProto, second: onnx.ModelProto,
                        batch_inputs: Sequence[str]) -> onnx.ModelProto | None:
    """`first` with each batch-dependent Reshape target rewritten batch-free; None if one cannot be."""
    b1, b2 = PROBE_BATCHES
    other = {t.name: onnx.numpy_helper.to_array(t) for t in second.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in first.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in [*first.graph.value_info, *first.graph.input]}
    for tensor in first.graph.initializer:
        mine = onnx.numpy_helper.to_array(tensor)
        theirs = other.get(tensor.name)
        if theirs is not None and theirs.shape == mine.shape and np.array_equal(theirs, mine):
            continue
        users = consumers.get(tensor.name, [])
        if theirs is None or theirs.shape != mine.shape or not users or any(
                u.op_type != "Reshape" or list(u.input).index(tensor.name) != 1 for u in users):
            return None
        rewritten = _batch_free_target(mine, theirs, [shapes.get(u.input[0]) for u in users], users, b1, b2)
        if rewritten is None:
            return None
        tensor.CopyFrom(onnx.numpy_helper.from_array(rewritten, tensor.name))
    return _restore_batch(first, batch_inputs)


def _batch_free_target(mine: np.ndarray, theirs: np.ndarray, data_shapes: list, users: list,
                       b1: int, b2: int) -> np.ndarray | None:
    """A Reshape target valid at any batch: the batch entry as 0 (copy) or -1 (infer), else None."""
    moved = np.flatnonzero(mine != theirs)
    if len(moved) != 1 or mine[moved[0]] != b1 or theirs[moved[0]] != b2:
        return None
    axis = int(moved[0])
    target = mine.copy()
    copies = all(s is not None and len(s) > axis and s[axis] == b1 for s in data_shapes) and \
        all(not any(a.name == "allowzero" and a.i for a in u.attribute) for u in users)
    if copies and axis == 0:
        target[axis] = 0
    elif -1 not in target:
        target[axis] = -1
    else:
        return None
    return target


def _restore_batch(proto: onnx.ModelProto, batch_inputs: Sequence[str]) -> onnx.ModelProto:
    """The folded model with its inputs' first dimension symbolic again, shapes re-inferred."""
    for value in proto.graph.input:
        if value.name in batch_inputs:
            value.type.tensor_type.shape.dim[0].Clear()
            value.type.tensor_type.shape.dim[0].dim_param = "batch"
    del proto.graph.value_info[:]
    for value in proto.graph.output:
        value.type.tensor_type.ClearField("shape")
    return onnx.shape_inference.infer_shapes(proto, data_prop=True)
