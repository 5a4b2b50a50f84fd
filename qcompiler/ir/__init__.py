"""The graph IR: safe loading, the `Model` wrapper over onnx-graphsurgeon, atomic saving.

Only this package imports onnx_graphsurgeon (docs/architecture.md, layering).
"""

import onnx_graphsurgeon as _gs

# graphsurgeon logs warnings (missing 'colored', large folded tensors) to stdout; we report ourselves.
_gs.logger.G_LOGGER.severity = _gs.logger.G_LOGGER.ERROR

from qcompiler.ir.load import MAX_OPSET, MIN_OPSET, load
from qcompiler.ir.model import INT4_DTYPES, Constant, Model, Node, Tensor, Variable, ops_histogram
from qcompiler.ir.save import save

__all__ = ["INT4_DTYPES", "Constant", "MAX_OPSET", "MIN_OPSET", "Model", "Node", "Tensor", "Variable", "load",
           "ops_histogram", "save"]
