"""Schedule templates: hand-written, scheduled TIR kernels that the default build uses, no search."""
