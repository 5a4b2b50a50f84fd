"""Load and run a compiled library (the folder `qcompiler compile` writes). Needs only the TVM
runtime (tvm.runtime), numpy, qcompiler/errors.py and this file: nothing of the compiler.

    from qcompiler.runtime import load
    lib = load("out/")                       # out/model.so + out/model.json
    outputs = lib.run({"input": x})          # dict name -> numpy array; any number of samples
    outputs = lib.run(x)                     # the same, for a one-input model

The library is built for a fixed batch (model.json "batch"); `run` feeds larger inputs in
chunks of that batch (padding the last one) and concatenates the results. A library built for
another CPU (model.json "target" "runner", e.g. qemu-aarch64) is loaded with `load_for_host`,
which gives the same `run` through that runner.

As a script, for a machine (or qemu) with only numpy and the TVM runtime:

    python -m qcompiler.runtime out/ --input x.npz -o y.npz
    python backends/tvm/runtime.py out/ --input x.npz -o y.npz     # from a source tree
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qcompiler.errors import CalibrationDataError, InvalidModelError, QCompilerError

LIBRARY_FORMAT = "qcompiler-library/1"
VM_ROW = "(the VM between kernels)"   # profile's last row: a run beyond its kernels' sum


def read_metadata(folder: str | Path) -> dict:
    """model.json of a compiled library folder, checked (InvalidModelError, exit 3)."""
    folder = Path(folder)
    meta_path = folder / "model.json"
    if not meta_path.is_file():
        raise InvalidModelError(f"{meta_path}: missing; give the folder `qcompiler compile -o` wrote")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidModelError(f"{meta_path}: not readable as JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != LIBRARY_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise InvalidModelError(f"{meta_path}: format {found!r}, expected {LIBRARY_FORMAT!r}")
    problem = schema_problem(meta)
    if problem:
        raise InvalidModelError(f"{meta_path}: {problem}; the file was edited or damaged: compile the model again")
    library = folder / meta.get("library", "model.so")   # model_hvx.o for a C-driver (Hexagon) library
    if not library.is_file():
        raise InvalidModelError(f"{library}: missing; give the folder `qcompiler compile -o` wrote")
    if library_digest(library) != meta["library_sha256"]:
        raise InvalidModelError(f"{library}: does not match {meta_path} (its sha256 differs from the one "
                                "recorded): the folder was changed or mixed with another; compile the model again")
    return meta


def library_digest(path: Path) -> str:
    """The sha256 of a library file, as model.json records it."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def schema_problem(meta: dict) -> str | None:
    """What is wrong with model.json's fields that loading and running read (None: nothing)."""
    target, batch, digest = meta.get("target"), meta.get("batch"), meta.get("library_sha256")
    if not isinstance(target, dict) or not isinstance(target.get("name"), str):
        return "'target' must be an object with a 'name'"
    if not isinstance(target.get("cpu_flags", []), list) or not isinstance(target.get("runner"), (str, type(None))):
        return "'target' has a malformed 'cpu_flags' or 'runner'"
    if meta.get("library", "model.so") not in ("model.so", "model_hvx.o"):
        return f"'library' must be model.so or model_hvx.o, not {meta.get('library')!r}"
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        return f"'batch' must be a positive integer, not {batch!r}"
    if not isinstance(digest, str) or len(digest) != 64:
        return "'library_sha256' is missing or malformed (libraries from before it was recorded must be rebuilt)"
    for key in ("inputs", "outputs"):
        problem = _signature_problem(meta.get(key), key)
        if problem:
            return problem
    return None


def _signature_problem(signature, key: str) -> str | None:
    if not isinstance(signature, dict) or not signature:
        return f"'{key}' must be a non-empty object of name -> {{dtype, shape}}"
    for name, spec in signature.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("shape"), list) or \
                not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in spec["shape"]):
            return f"'{key}' entry {name!r} needs a 'shape' of positive integers"
        try:
            np.dtype(spec["dtype"] if isinstance(spec.get("dtype"), str) else object())
        except TypeError:
            return f"'{key}' entry {name!r} has an unknown dtype {spec.get('dtype')!r}"
    return None


@functools.cache
def cpu_flags() -> frozenset[str] | None:
    """This CPU's flags as /proc/cpuinfo lists them (None where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return frozenset(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return None


def check_cpu(meta: dict, folder: Path) -> None:
    """Refuse (exit 3) a library whose x86 target needs CPU features this CPU lacks, before its
    first instruction would kill the process."""
    import platform

    needed, have = meta["target"].get("cpu_flags") or [], cpu_flags()
    if not needed or platform.machine() not in ("x86_64", "AMD64") or have is None:
        return
    missing = sorted(set(needed) - have)
    if missing:
        raise InvalidModelError(f"{folder}: built for {meta['target']['name']}, which cannot run on this CPU "
                                f"(it lacks {', '.join(missing)}); compile again with --target native")


@dataclass(frozen=True)
class Timing:
    """Wall time of `repeat` runs of one batch, after `warmup` runs, in milliseconds."""

    repeat: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float

    def line(self) -> str:
        return (f"median {self.median_ms:.3f} ms, p10 {self.p10_ms:.3f}, p90 {self.p90_ms:.3f}, "
                f"min {self.min_ms:.3f} ({self.repeat} runs of one batch)")


class CompiledModel:
    """A compiled library loaded into this process."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        lib_path = folder / "model.so"
        self.meta = read_metadata(folder)
        check_cpu(self.meta, folder)
        self.inputs: dict = self.meta["inputs"]
        self.outputs: dict = self.meta["outputs"]
        self.batch: int = int(self.meta["batch"])
        self.folder = folder
        self._vm, self._kernels = _virtual_machine(lib_path)
        self._staging: list | None = None   # the input tensors, reused from call to call
        self._views: list = []               # numpy views of them
        self._main = self._vm["main"]

    def __repr__(self) -> str:
        return describe(self)

    def run(self, feeds: dict[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        """Outputs for inputs with any number of samples along axis 0 (an array: the only input)."""
        arrays, samples = checked_inputs(self.inputs, feeds)
        if samples == self.batch:   # one compiled batch: nothing to slice, pad or join
            return dict(zip(self.outputs, self._run_batch(arrays)))
        return dict(zip(self.outputs, run_in_batches(arrays, samples, self.batch, self._run_batch)))

    def time(self, feeds: dict[str, np.ndarray] | np.ndarray, repeat: int = 50, warmup: int = 5) -> Timing:
        """Time `run` on one compiled batch (the first `batch` samples of `feeds`): what a caller
        pays, the checks of the inputs and the outputs copied out included (a few microseconds:
        a tenth of a small model's run)."""
        arrays, _ = checked_inputs(self.inputs, feeds)
        chunk = dict(zip(self.inputs, (np.resize(a, (self.batch, *a.shape[1:])) for a in arrays)))
        for _ in range(warmup):
            self.run(chunk)
        seconds = []
        for _ in range(repeat):
            start = time.perf_counter()
            self.run(chunk)
            seconds.append(time.perf_counter() - start)
        ms = np.asarray(seconds) * 1e3
        return Timing(repeat, float(np.median(ms)), float(np.percentile(ms, 10)), float(np.percentile(ms, 90)),
                      float(ms.min()))

    def profile(self, feeds: dict[str, np.ndarray] | np.ndarray, repeat: int = 10) -> list[tuple[str, int, float]]:
        """Per kernel: (name, calls per run, milliseconds per run), slowest first, and a last row
        VM_ROW: what a whole run takes beyond the kernels' sum (the VM's own calls: allocation,
        shape checks, dispatch, any function from outside the library). Each call site is timed
        by TVM's C++ timer on the arguments the VM passes it, best of three rounds of at least a
        millisecond (warm caches: in a run a kernel may wait on memory a little more), and the
        whole run best of `repeat` rounds (the best, like the kernels': a busy machine slows a
        median, not a minimum). A Python timer around each call would count its own microsecond
        or two in each one: more than many kernels take."""
        import tvm.runtime

        arrays, _ = checked_inputs(self.inputs, feeds)
        chunk = [np.resize(a, (self.batch, *a.shape[1:])) for a in arrays]
        self._run_batch(chunk)
        totals: dict[str, list] = {}

        def instrument(func, name, before, ret, *args):
            name = str(name)
            if before and not name.startswith("vm.builtin.") and self._kernels.implements_function(name):
                timer = self._kernels.time_evaluator(name, tvm.runtime.cpu(), repeat=3, min_repeat_ms=1)
                entry = totals.setdefault(name, [0, 0.0])
                entry[0] += 1
                entry[1] += min(timer(*args).results)
            return 0  # VMInstrumentReturnKind.NO_OP: run the call as usual

        self._vm.set_instrument(instrument)
        try:
            self._main(*self._staging)
        finally:
            self._vm.set_instrument(None)
        rows = [(name, calls, seconds * 1e3) for name, (calls, seconds) in totals.items()]
        whole = self._vm.time_evaluator("main", tvm.runtime.cpu(), repeat=repeat, min_repeat_ms=1)(*self._staging)
        beyond = max(0.0, min(whole.results) * 1e3 - sum(ms for _, _, ms in rows))   # best against best
        return sorted(rows, key=lambda row: -row[2]) + [(VM_ROW, 1, beyond)]

    def _run_batch(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        import tvm.runtime

        # The input tensors are allocated once and refilled through numpy views of them: a
        # fresh tensor per call cost 27 us (MobileNetV2's 600 KB input, new pages), and a
        # strided input is copied once, not made contiguous and then copied (60 -> 30 us).
        if self._staging is None:
            self._staging = [tvm.runtime.empty(a.shape, str(a.dtype)) for a in arrays]
            self._views = [np.from_dlpack(t) for t in self._staging]
        for view, array in zip(self._views, arrays):
            np.copyto(view, array, casting="no")
        result = self._main(*self._staging)
        return [host_copy(r) for r in ([result] if hasattr(result, "numpy") else result)]


def host_copy(tensor) -> np.ndarray:
    """A numpy copy of a CPU tensor. Through DLPack: 1 us against 11 us for Tensor.numpy() (a
    tenth of a small model's run); .numpy() for what numpy's DLPack does not take (bool)."""
    try:
        return np.from_dlpack(tensor).copy()
    except (TypeError, BufferError, RuntimeError):
        return tensor.numpy()

def checked_inputs(inputs: dict, feeds) -> tuple[list[np.ndarray], int]:
    """The arrays of `feeds` (a dict, or an array for a one-input model) in `inputs` order, and
    their sample count; every name, dtype and shape checked against model.json's `inputs`."""
    feeds = as_feeds(inputs, feeds)
    problems, arrays, counts = [], [], set()
    for name in feeds:
        if name not in inputs:
            problems.append(f"unknown input {name!r}")
    for name, spec in inputs.items():
        if name not in feeds:
            problems.append(f"missing input {name!r} {spec['dtype']}{spec['shape']}")
            continue
        array = np.asarray(feeds[name])
        if array.dtype != np.dtype(spec["dtype"]):
            problems.append(f"input {name!r} is {array.dtype}, the library takes {spec['dtype']}")
        elif list(array.shape[1:]) != list(spec["shape"][1:]):
            problems.append(f"input {name!r} has shape {list(array.shape)}, the library takes "
                            f"[N, {', '.join(map(str, spec['shape'][1:]))}]")
        else:
            counts.add(array.shape[0])
        arrays.append(array)
    if len(counts) > 1:
        problems.append(f"inputs differ in their sample counts: {sorted(counts)}")
    if counts == {0}:
        problems.append("inputs have no samples")
    if problems:
        raise CalibrationDataError("; ".join(problems))
    return arrays, counts.pop()


def run_in_batches(arrays: list[np.ndarray], samples: int, batch: int, run_batch) -> list[np.ndarray]:
    """The outputs of `run_batch` (one compiled batch of inputs -> its outputs) for any number of
    samples: chunks of `batch`, the last one padded by repeating its last sample."""
    chunks = []
    for start in range(0, samples, batch):
        chunk = [a[start:start + batch] for a in arrays]
        real = chunk[0].shape[0]
        chunks.append([o[:real] for o in run_batch(padded_batch(chunk, batch))])
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def padded_batch(chunk: list[np.ndarray], batch: int) -> list[np.ndarray]:
    """A chunk of at most `batch` samples padded to the compiled batch by repeating its last sample."""
    real = chunk[0].shape[0]
    if real == batch:
        return chunk
    return [np.concatenate([c, np.repeat(c[-1:], batch - real, axis=0)]) for c in chunk]


def as_feeds(inputs: dict, feeds) -> dict:
    """A dict of inputs; an array stands for a one-input model's input."""
    if isinstance(feeds, dict):
        return feeds
    if len(inputs) != 1:
        raise CalibrationDataError(f"the library has inputs {list(inputs)}: give run a dict of arrays by name")
    return {next(iter(inputs)): feeds}


def describe(library) -> str:
    """What a loaded library is: its folder, target, batch and signature."""
    meta = library.meta
    def signature(specs):
        return ", ".join(f"{name} {spec['dtype']}{spec['shape']}" for name, spec in specs.items())
    return (f"<qcompiler library {library.folder}: {meta['target']['name']}, batch {meta['batch']}, "
            f"({signature(library.inputs)}) -> ({signature(library.outputs)})>")


def _virtual_machine(lib_path: Path):
    """The VM over the library, and the module holding its kernels (for `profile`)."""
    import tvm.runtime
    from tvm.runtime.vm import VirtualMachine

    try:
        lib = tvm.runtime.load_module(str(lib_path))
        return VirtualMachine(lib, tvm.runtime.cpu()), (lib.imports[0] if lib.imports else lib)
    except Exception as exc:  # noqa: BLE001 - tvm raises its own error types for unloadable files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InvalidModelError(f"{lib_path}: cannot be loaded here as a qcompiler library ({first}); was it "
                                "built for another target, or is it not a library `qcompiler compile` wrote?") from None


def load(folder: str | Path) -> CompiledModel:
    """The library in `folder`, loaded into this process (it must be built for this CPU)."""
    return CompiledModel(folder)


def load_for_host(folder: str | Path):
    """The library in `folder`, run the way its model.json says this host can: in this process,
    or through its target's runner (qemu-aarch64 for arm64 targets: correctness, not speed)."""
    meta = read_metadata(folder)
    runner = meta["target"].get("runner") or ("qemu-aarch64" if meta["target"]["name"].startswith("arm64") else None)
    if runner == "qemu-aarch64":
        from qcompiler.backends.tvm.qemu import QemuLibrary

        return QemuLibrary(folder)
    if runner == "qemu-hexagon":
        from qcompiler.backends.tvm.qemu_hexagon import QemuHexagonLibrary

        return QemuHexagonLibrary(folder)
    return CompiledModel(folder)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m qcompiler.runtime", description="run a compiled library")
    parser.add_argument("library")
    parser.add_argument("--input", required=True, help=".npz with one array per input, samples first")
    parser.add_argument("-o", "--output", required=True, help=".npz to write the outputs to")
    args = parser.parse_args(argv)
    try:
        library = load(args.library)
        with np.load(args.input, allow_pickle=False) as data:
            feeds = {name: data[name] for name in data.files if name in library.inputs}
        np.savez(args.output, **library.run(feeds))
    except (QCompilerError, OSError, ValueError) as exc:
        print(f"qcompiler.runtime: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
