"""Backends (installed as `qcompiler.backends`): TVM lowering, targets, tuning.

Nothing here yet: the TVM backend is the subject of its own issue. Only this package will
import tvm (DESIGN.md §3).
"""
