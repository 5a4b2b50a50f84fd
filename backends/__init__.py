"""Backends (installed as `qcompiler.backends`): tvm/ lowers QDQ models to integer libraries
per target and runs them. Only this package imports tvm (docs/architecture.md, layering).
"""
