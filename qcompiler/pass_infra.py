"""The pass framework: `Pass`, `PassResult`, `PassManager`, `PassContext` and its instruments.

Shaped after onnx-ir's pass infrastructure and TVM's PassContext: a pass is a
class whose `call(model)` returns `PassResult(model, modified)`; `requires` and `ensures` are
optional checks run before and after; a `PassManager` runs a list of passes under a
`PassContext` whose instruments time them, dump the model after chosen passes and verify it.
What an analysis pass finds goes on the model (`Model.analysis[pass name]`), which carries it
to the passes after it and to the driver.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import onnx

from qcompiler import supervise
from qcompiler.errors import PassError
from qcompiler.ir import Model, save

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PassResult:
    """What a pass returns: the (possibly new) model and whether anything changed."""

    model: Model
    modified: bool


class Pass(abc.ABC):
    """Base class of every pass; subclasses implement `call` and may override the checks."""

    #: The name the registry and the CLI know the pass by (set by `@register`).
    name: str = ""

    @abc.abstractmethod
    def call(self, model: Model) -> PassResult:
        """Transform `model` (in place or into a new one) and say honestly whether it changed."""

    def requires(self, model: Model) -> None:
        """Raise PassError if `model` is not fit for this pass (a precondition)."""

    def ensures(self, model: Model) -> None:
        """Raise PassError if the pass's output breaks its promise (a postcondition)."""

    def __call__(self, model: Model) -> PassResult:
        self.requires(model)
        with supervise.stage(f"the pass {self.display_name}"):   # named if native code crashes in it
            result = self.call(model)
        if not isinstance(result, PassResult):
            raise PassError(f"Pass developer: {self.display_name}.call returned {type(result).__name__}, "
                            "not PassResult(model, modified)")
        self.ensures(result.model)
        return result

    @property
    def display_name(self) -> str:
        return self.name or type(self).__name__

    def __repr__(self) -> str:
        return f"<pass {self.display_name}>"


class Instrument:
    """Hooks around each pass a PassManager runs; override what you need."""

    def before_pass(self, pass_: Pass, model: Model) -> None:
        pass

    def after_pass(self, pass_: Pass, result: PassResult) -> None:
        pass


class TimingInstrument(Instrument):
    """Wall time of each pass, in run order."""

    def __init__(self) -> None:
        self.timings: list[tuple[str, float, bool]] = []
        self._start = 0.0

    def before_pass(self, pass_: Pass, model: Model) -> None:
        self._start = time.perf_counter()

    def after_pass(self, pass_: Pass, result: PassResult) -> None:
        self.timings.append((pass_.display_name, time.perf_counter() - self._start, result.modified))

    def table(self) -> str:
        width = max([len(name) for name, _, _ in self.timings] + [4])
        lines = [f"{'pass':<{width}}  {'seconds':>8}  modified"]
        lines += [f"{name:<{width}}  {secs:>8.3f}  {'yes' if mod else 'no'}" for name, secs, mod in self.timings]
        lines.append(f"{'total':<{width}}  {sum(s for _, s, _ in self.timings):>8.3f}")
        return "\n".join(lines)


class DumpAfterInstrument(Instrument):
    """Save the model after each pass whose name is in `names`, as `<prefix>.after-<name>.onnx`."""

    def __init__(self, names: Sequence[str], prefix: str | Path) -> None:
        self.names = set(names)
        self.prefix = Path(prefix)
        self.written: list[Path] = []

    def after_pass(self, pass_: Pass, result: PassResult) -> None:
        if pass_.display_name in self.names:
            path = self.prefix.with_name(f"{self.prefix.name}.after-{pass_.display_name}.onnx")
            self.written.append(save(result.model, path))
            log.info("dumped the model after %s to %s", pass_.display_name, path)


class VerifyInstrument(Instrument):
    """Run the ONNX checker (full_check) after each pass; a failure names the pass."""

    def after_pass(self, pass_: Pass, result: PassResult) -> None:
        try:
            onnx.checker.check_model(result.model.to_onnx(), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise PassError(f"pass {pass_.display_name} produced an invalid model: {first}") from None


@dataclasses.dataclass
class PassContext:
    """Options and instruments shared by the passes of one pipeline run."""

    instruments: list[Instrument] = dataclasses.field(default_factory=list)
    options: dict[str, object] = dataclasses.field(default_factory=dict)

    def instrument(self, kind: type[Instrument]) -> Instrument | None:
        return next((i for i in self.instruments if isinstance(i, kind)), None)


class PassManager:
    """Run passes in order; the result is modified if any pass modified the model."""

    def __init__(self, passes: Sequence[Pass], context: PassContext | None = None) -> None:
        self.passes = list(passes)
        self.context = context or PassContext()

    def __call__(self, model: Model) -> PassResult:
        modified = False
        for pass_ in self.passes:
            for instrument in self.context.instruments:
                instrument.before_pass(pass_, model)
            result = pass_(model)
            if result.model is not model:   # a pass that built a new Model: earlier findings travel on
                result.model.analysis = {**model.analysis, **result.model.analysis}
            for instrument in self.context.instruments:
                instrument.after_pass(pass_, result)
            log.debug("%s: modified=%s", pass_.display_name, result.modified)
            model, modified = result.model, modified or result.modified
        return PassResult(model, modified)

    def describe(self) -> str:
        return " -> ".join(p.display_name for p in self.passes)
