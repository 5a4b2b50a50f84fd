"""The differentiable simulator (DESIGN.md §4): ONNX graphs as jit-compiled jax functions, with
fake-quant hooks for BRECQ/AdaRound reconstruction. Only this package and the passes that need
gradients import jax."""

from qcompiler.sim.interpreter import Interpreter, Step

__all__ = ["Interpreter", "Step"]
