"""Load and run a compiled library: a re-export of qcompiler.backends.tvm.runtime (the runtime
lives with the backend that builds the libraries).

    from qcompiler.runtime import load
    lib = load("out/")
    outputs = lib.run(x)            # or lib.run({"input": x})

    python -m qcompiler.runtime out/ --input x.npz -o y.npz
"""

from qcompiler.backends.tvm.runtime import (  # noqa: F401
    LIBRARY_FORMAT,
    CompiledModel,
    Timing,
    load,
    load_for_host,
    main,
    read_metadata,
)

if __name__ == "__main__":
    raise SystemExit(main())
