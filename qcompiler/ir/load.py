"""Safe loading of ONNX files: every check a model must pass before any pass sees it.

Order matters: cheap structural checks first (file, protobuf, versions, ops), external data
next (paths and offsets checked before a byte is read), then the checker and shape inference.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from qcompiler import supervise
from qcompiler.errors import InvalidModelError, UnsupportedModelError
from qcompiler.ir.model import Model
from qcompiler.ir.validate import check_quant_params, check_runs, serialized_size

log = logging.getLogger(__name__)

# Default-domain opsets the passes run as written: 9 is the oldest in the ONNX test zoo's light
# models; 21 (INT4 QuantizeLinear) is the newest that onnxruntime 1.20, our oldest supported, runs
# in full. Any other opset that the installed onnx defines (from 7) is converted to the nearest of
# these with onnx's version converter, and the log says so.
MIN_OPSET = 9
MAX_OPSET = 21
OLDEST_READABLE_OPSET = 7
MIN_IR_VERSION = 3
MAX_IR_VERSION = onnx.IR_VERSION  # any the onnx package reads; written back as IR <= 10 (ir/model.py)
DEFAULT_DOMAINS = ("", "ai.onnx")


def load(path: str | os.PathLike, *, check: bool = True) -> Model:
    """Load, validate and shape-infer an ONNX file; raise a QCompilerError naming what is wrong."""
    path = Path(path)
    proto = read_proto(path)
    check_versions(proto, path)
    check_ops_known(proto, path)
    proto = convert_opset(proto, path)
    if external_tensors(proto):
        check_external_data(proto, path)
        external_data_helper.load_external_data_for_model(proto, str(path.parent))
    if check:
        run_checker(proto, path)
    proto = infer_shapes(proto, path)
    if check:
        check_quant_params(proto, path)
        check_runs(proto, path)
    return Model.from_onnx(proto, path=str(path))


def read_proto(path: Path) -> onnx.ModelProto:
    """Parse the protobuf without touching external data."""
    if not path.exists():
        raise InvalidModelError(f"{path}: no such file")
    if not path.is_file():
        raise InvalidModelError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise InvalidModelError(f"{path}: the file is empty (0 bytes); re-export the model")
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except OSError as exc:
        raise InvalidModelError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InvalidModelError(
            f"{path}: not a readable ONNX protobuf ({size} bytes; truncated or corrupt?): {exc}"
        ) from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise InvalidModelError(f"{path}: the file parses but holds no graph nodes (truncated or not ONNX?)")
    return proto


def check_versions(proto: onnx.ModelProto, path: Path) -> None:
    """IR version and default-domain opset inside the supported range."""
    if not MIN_IR_VERSION <= proto.ir_version <= MAX_IR_VERSION:
        raise UnsupportedModelError(
            f"{path}: IR version {proto.ir_version} is outside the supported range "
            f"{MIN_IR_VERSION}..{MAX_IR_VERSION}; re-export it with onnx >= 1.17"
        )
    opsets = {o.domain: o.version for o in proto.opset_import}
    opset = next((opsets[d] for d in DEFAULT_DOMAINS if d in opsets), None)
    if opset is None:
        raise InvalidModelError(f"{path}: the model imports no default-domain ('ai.onnx') opset")
    newest = onnx.defs.onnx_opset_version()
    if not OLDEST_READABLE_OPSET <= opset <= newest:
        raise UnsupportedModelError(
            f"{path}: opset {opset} is outside the range {OLDEST_READABLE_OPSET}..{newest} that onnx "
            f"{onnx.__version__} defines; re-export it at an opset in {MIN_OPSET}..{MAX_OPSET}"
        )


#: Ops deprecated at opset 10 that a model of an older opset is converted away from, and the
#: opset to convert it to: Upsample becomes Resize (the QDQ model needs opset 13 anyway).
NEWER_FORM = {"Upsample": 13}


def default_opset(proto: onnx.ModelProto) -> int:
    opsets = {o.domain: o.version for o in proto.opset_import}
    return next(opsets[d] for d in DEFAULT_DOMAINS if d in opsets)


def convert_opset(proto: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """A model outside MIN_OPSET..MAX_OPSET converted to the nearest end of it (onnx's version
    converter); one whose ops the converter cannot carry is refused naming them."""
    opset = default_opset(proto)
    target = min(max(opset, MIN_OPSET), MAX_OPSET)
    deprecated = sorted({n.op_type for n in iter_nodes(proto.graph) if n.op_type in NEWER_FORM} if opset < 10 else ())
    if deprecated:   # TVM's importer takes only the newer form (its Upsample converter fails)
        target = max(target, *(NEWER_FORM[op] for op in deprecated))
    if opset == target:
        return proto
    try:
        converted = onnx.version_converter.convert_version(proto, target)
        onnx.checker.check_model(converted)
    except (RuntimeError, ValueError, onnx.checker.ValidationError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(
            f"{path}: opset {opset} is outside {MIN_OPSET}..{MAX_OPSET}, which the passes run as written, and onnx's "
            f"version converter cannot take it to opset {target}: {first}; re-export the model at opset {target}"
        ) from None
    why = f"{', '.join(deprecated)} to its successor, which TVM's importer takes" if deprecated else f"the passes run opsets {MIN_OPSET}..{MAX_OPSET}"
    log.warning("%s: opset %d converted to opset %d with onnx's version converter (%s)", path, opset, target, why)
    return converted


def check_ops_known(proto: onnx.ModelProto, path: Path) -> None:
    """Every node is an ONNX op of its opset or a function the model defines; list all misfits."""
    opsets = {o.domain: o.version for o in proto.opset_import}
    local_functions = {(f.domain, f.name) for f in proto.functions}
    unknown: dict[str, list[str]] = {}
    for node in iter_nodes(proto.graph):
        domain = "" if node.domain == "ai.onnx" else node.domain
        if (node.domain, node.op_type) in local_functions:
            continue
        version = opsets.get(domain, opsets.get("ai.onnx", 0))
        if not _has_schema(node.op_type, version, domain):
            key = f"{domain}::{node.op_type}" if domain else node.op_type
            unknown.setdefault(key, []).append(node.name or f"<unnamed {node.op_type}>")
    if unknown:
        listing = "; ".join(f"{op} (nodes: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
                            for op, names in sorted(unknown.items()))
        raise UnsupportedModelError(
            f"{path}: {len(unknown)} op type(s) not in ONNX at this opset: {listing}; "
            "export the model with standard ONNX ops"
        )


def _has_schema(op_type: str, version: int, domain: str) -> bool:
    try:
        onnx.defs.get_schema(op_type, version, domain)
        return True
    except onnx.defs.SchemaError:
        return False


def iter_nodes(graph: onnx.GraphProto):
    """Every node of a graph and of its subgraphs (If/Loop/Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from iter_nodes(sub)


def external_tensors(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Tensors (initializers, sparse values, Constant attributes, in subgraphs too) stored outside."""
    return [t for t in _all_tensors(proto.graph) if external_data_helper.uses_external_data(t)]


def _all_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _all_tensors(sub)


def check_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """External data must be a plain file inside the model's folder, and offsets in range."""
    base = path.parent.resolve()
    for tensor in external_tensors(proto):
        try:
            info = external_data_helper.ExternalDataInfo(tensor)
        except (TypeError, ValueError):   # it parses offset and length with int()
            raise InvalidModelError(f"{path}: tensor {tensor.name!r}: its external data's offset and length must be "
                                    "whole numbers of bytes") from None
        where = f"{path}: tensor {tensor.name!r} has external data at {info.location!r}"
        location = Path(info.location)
        if not info.location or location.is_absolute() or info.location.startswith(("/", "\\")):
            raise InvalidModelError(f"{where}: absolute paths are refused; keep data files beside the model")
        if ".." in location.parts or ".." in Path(info.location.replace("\\", "/")).parts:
            raise InvalidModelError(f"{where}: paths leaving the model's folder ('..') are refused")
        data_path = path.parent / location
        _check_inside(data_path, base, where)
        _check_plain_file(data_path, where)
        _check_range(tensor, info, data_path, where)


def _check_inside(data_path: Path, base: Path, where: str) -> None:
    for part in [data_path, *data_path.parents]:  # up to the model's folder, which may be a link
        if part.resolve() == base:
            break
        if part.is_symlink():
            raise InvalidModelError(f"{where}: {part} is a symbolic link; symlinks are refused, copy the file")
    if not data_path.resolve().is_relative_to(base):
        raise InvalidModelError(f"{where}: the file lies outside the model's folder")


def _check_plain_file(data_path: Path, where: str) -> None:
    if not data_path.exists():
        raise InvalidModelError(f"{where}: the data file does not exist")
    stat = data_path.lstat()
    if not data_path.is_file():
        raise InvalidModelError(f"{where}: not a regular file")
    if stat.st_nlink > 1:
        raise InvalidModelError(f"{where}: the file has {stat.st_nlink} hard links; hard links are refused, copy it")


def _check_range(tensor: onnx.TensorProto, info, data_path: Path, where: str) -> None:
    size = data_path.stat().st_size
    try:
        offset = int(info.offset or 0)
        length = int(info.length) if info.length else size - offset
    except (TypeError, ValueError):
        raise InvalidModelError(f"{where}: offset {info.offset!r} and length {info.length!r} must be whole "
                                "numbers of bytes") from None
    if offset < 0 or length < 0 or offset + length > size:
        raise InvalidModelError(
            f"{where}: offset {offset} + length {length} exceeds the file's {size} bytes; the data file is truncated"
        )
    expected = _tensor_nbytes(tensor)
    if expected is not None and length != expected:
        raise InvalidModelError(f"{where}: {length} bytes stored but the tensor's shape needs {expected}")


def _tensor_nbytes(tensor: onnx.TensorProto) -> int | None:
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    if tensor.data_type in (onnx.TensorProto.STRING,) or itemsize == 0:
        return None
    count = 1
    for dim in tensor.dims:
        count *= dim
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (count + 1) // 2
    return count * itemsize


def run_checker(proto: onnx.ModelProto, path: Path) -> None:
    """onnx.checker with full_check (types and shapes); its whole message, on one line."""
    try:
        with supervise.stage(f"the ONNX checker ({path})"):
            if serialized_size(proto) < onnx.checker.MAXIMUM_PROTOBUF:
                onnx.checker.check_model(proto, full_check=True)
            else:
                onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        whole = " ".join(str(exc).split()) or type(exc).__name__
        raise InvalidModelError(f"{path}: the ONNX checker rejects the model: {whole}") from None



def infer_shapes(proto: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """Shape inference with data propagation (so Reshape targets resolve where they can). A
    model over protobuf's 2 GiB cannot be passed whole: its graph is inferred without the
    weights (shapes come from the initializers' dims) and the inferred shapes copied back."""
    large = serialized_size(proto) >= onnx.checker.MAXIMUM_PROTOBUF
    try:
        if not large:
            return onnx.shape_inference.infer_shapes(proto, check_type=True, data_prop=True)
        weights = [tensor.raw_data for tensor in proto.graph.initializer]   # set aside, not copied
        for tensor in proto.graph.initializer:
            tensor.ClearField("raw_data")
        try:
            inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, data_prop=False)
        finally:
            for tensor, data in zip(proto.graph.initializer, weights):
                tensor.raw_data = data
        del proto.graph.value_info[:]
        proto.graph.value_info.extend(inferred.graph.value_info)
        return proto
    except (onnx.shape_inference.InferenceError, ValueError) as exc:
        whole = " ".join(str(exc).split())
        raise InvalidModelError(f"{path}: shape inference failed: {whole}") from None
