"""The differentiable simulator: ONNX graphs as jit-compiled jax functions, with
fake-quant hooks for BRECQ/AdaRound reconstruction. Only this package and the passes that need
gradients import jax."""

import logging

from qcompiler.sim.interpreter import Interpreter, Step

# jax logs at INFO that it found no TPU/GPU plugin; with `qcompiler -v` that reads like a problem.
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)

__all__ = ["Interpreter", "Step"]
