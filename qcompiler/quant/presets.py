"""Presets (named recipes: a weight scheme and an activation scheme), per-layer overrides, and
the config that holds both.

Weights are symmetric, signed and per output channel; activations affine, unsigned and per
tensor. In the low-bit presets the first and the last quantized layer keep 8-bit
weights and 8-bit inputs, as BRECQ does; `keep_edge_layers_8bit=False` or an override changes it.
2-bit weights are affine (4 levels: symmetric 2-bit would leave only {-s, 0, s}).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from pathlib import Path

from qcompiler.errors import UsageError
from qcompiler.quant.observers import OBSERVERS, WEIGHT_OBSERVERS, canonical_name
from qcompiler.quant.signal import MIN_BULK_SQNR_DB
from qcompiler.quant.spec import BITS, QuantSpec


@dataclasses.dataclass(frozen=True)
class WeightScheme:
    """How a recipe quantizes weights: signed, symmetric (affine at 2 bits), narrow range."""

    bits: int
    per_channel: bool = True
    observer: str = "minmax"

    def spec(self, bits: int, axis: int | None, observer: str) -> QuantSpec:
        """The spec of one layer's weight at `bits` (an override or an edge layer may differ)."""
        symmetric = bits != 2
        return QuantSpec(bits=bits, signed=True, symmetric=symmetric, narrow=symmetric,
                         axis=axis if self.per_channel else None, observer=observer)


@dataclasses.dataclass(frozen=True)
class ActivationScheme:
    """How a recipe quantizes activations: unsigned, affine, per tensor (bits 0: left in float)."""

    bits: int
    observer: str = "lp"

    def spec(self, bits: int, observer: str) -> QuantSpec:
        return QuantSpec(bits=bits, signed=False, symmetric=False, observer=observer)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named recipe: a weight scheme, an activation scheme, and whether the first and last
    layers keep 8 bits."""

    name: str
    weights: WeightScheme
    activations: ActivationScheme
    keep_edge_layers_8bit: bool = False
    description: str = ""


def _low_bit(name: str, weight_bits: int, activation_bits: int, description: str) -> Preset:
    """BRECQ's setting: Lp-searched weight ranges, first and last layers at 8 bits."""
    return Preset(name, WeightScheme(weight_bits, observer="lp"), ActivationScheme(activation_bits),
                  keep_edge_layers_8bit=True, description=description)


PRESETS = {p.name: p for p in (
    Preset("w8a8", WeightScheme(8), ActivationScheme(8),
           description="int8 per-channel weights, uint8 per-tensor activations"),
    Preset("w8a8-per-tensor", WeightScheme(8, per_channel=False), ActivationScheme(8),
           description="int8 per-tensor weights (the whitepaper's baseline)"),
    _low_bit("w4a8", 4, 8, "int4 weights, uint8 activations"),
    _low_bit("w4a4", 4, 4, "int4 weights, uint4 activations"),
    _low_bit("w3a3", 3, 3, "int3 weights, uint3 activations (for training: QIL, QAT)"),
    _low_bit("w2a4", 2, 4, "2-bit weights, uint4 activations"),
    _low_bit("w2a2", 2, 2, "2-bit weights, uint2 activations (for training: QIL, QAT)"),
    _low_bit("w4", 4, 0, "int4 weights only, float activations"),
    _low_bit("w2", 2, 0, "2-bit weights only, float activations"),
)}


@dataclasses.dataclass(frozen=True)
class Override:
    """Settings for the layers whose node name matches `pattern` (fnmatch: *, ?, [...])."""

    pattern: str
    weight_bits: int | None = None
    activation_bits: int | None = None
    weight_observer: str | None = None
    skip: bool = False

    KEYS = {"wbits": "weight_bits", "abits": "activation_bits", "wobserver": "weight_observer", "skip": "skip"}

    def matches(self, layer_name: str) -> bool:
        return fnmatch.fnmatchcase(layer_name, self.pattern)


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    preset: Preset = PRESETS["w8a8"]
    activation_observer: str | None = None  # None: the preset's
    overrides: tuple[Override, ...] = ()
    keep_edge_layers_8bit: bool | None = None  # None: the preset's
    #: Fold the mean effect of weight rounding into the biases (passes/correct_bias.py); PTQ
    #: without reconstruction only (BRECQ learns the rounding against the block output instead).
    bias_correction: bool = True
    #: Concat nodes whose inputs and output are not tied to one scale (qcompiler.quant.ties: an input
    #: with a far narrower range than the others would lose its signal); their output stays float.
    untied_concats: frozenset[str] = frozenset()
    #: Activation tensors quantized at 16 bits, with their tie groups: those whose typical values
    #: 8 bits would lose (qcompiler.quant.signal; passes/widen_activations.py finds them when
    #: `widen_activations` is on).
    wide_activations: frozenset[str] = frozenset()
    widen_activations: bool = True
    widen_below_db: float = MIN_BULK_SQNR_DB   # the bulk SQNR at 8 bits under which a tensor is widened

    def weight_spec(self, layer: str, axis: int | None, edge: bool) -> QuantSpec | None:
        """The weight spec of layer `layer` (None: left in float); `axis` its output-channel axis."""
        bits, observer = self.preset.weights.bits, None
        if edge and self.edge_8bit:
            bits = 8
        for override in self.overrides:
            if override.matches(layer):
                if override.skip:
                    return None
                bits = override.weight_bits or bits
                observer = override.weight_observer or observer
        return self.weight_spec_at(bits, axis, observer)

    def layer_spec_at(self, layer: str, bits: int, axis: int | None) -> QuantSpec:
        """Layer `layer`'s weight spec at `bits` (a bit-width search's choice): its overrides'
        weight observer kept, their bits not."""
        observers = [o.weight_observer for o in self.overrides if o.matches(layer) and o.weight_observer]
        return self.weight_spec_at(bits, axis, observers[-1] if observers else None)

    def weight_spec_at(self, bits: int, axis: int | None, observer: str | None = None) -> QuantSpec:
        """The preset's weight quantizer at `bits` (an override, an edge layer, a bit-width search):
        with `observer`, else the preset's; 8-bit layers of low-bit presets use minmax."""
        if observer is None:
            observer = "minmax" if bits == 8 else self.preset.weights.observer
        return self.preset.weights.spec(bits, axis, observer)

    def activation_spec(self, bits: int | None = None) -> QuantSpec:
        activations = self.preset.activations
        return activations.spec(bits or activations.bits, self.activation_observer or activations.observer)

    def input_bits(self, layer: str, edge: bool) -> int:
        """Bits of the activation a layer reads (8 for edge layers in low-bit presets; 0: float)."""
        bits = 8 if edge and self.edge_8bit and self.preset.activations.bits else self.preset.activations.bits
        for override in self.overrides:
            if override.matches(layer) and override.activation_bits:
                bits = override.activation_bits
        return bits

    def skipped(self, layer: str) -> bool:
        return any(o.skip and o.matches(layer) for o in self.overrides)

    @property
    def edge_8bit(self) -> bool:
        return self.preset.keep_edge_layers_8bit if self.keep_edge_layers_8bit is None else self.keep_edge_layers_8bit


def parse_override(text: str) -> Override:
    """'PATTERN:key=value[,key=value]' with keys wbits, abits, wobserver, skip (e.g. '/fc/*:wbits=8')."""
    pattern, sep, settings = text.rpartition(":")
    if not sep or not pattern:
        raise UsageError(f"--override {text!r}: expected PATTERN:key=value[,key=value] (keys: {', '.join(Override.KEYS)})")
    values: dict[str, object] = {}
    for item in filter(None, settings.split(",")):
        key, eq, value = item.partition("=")
        if key not in Override.KEYS or (not eq and key != "skip"):
            raise UsageError(f"--override {text!r}: unknown setting {item!r}; keys: {', '.join(Override.KEYS)}")
        values[Override.KEYS[key]] = _setting(key, value, text)
    return Override(pattern, **values)


def _setting(key: str, value: str, text: str):
    if key == "skip":
        return value.lower() not in ("0", "false", "no")
    if key == "wobserver":
        value = canonical_name(value)
        if value not in WEIGHT_OBSERVERS:
            raise UsageError(f"--override {text!r}: weight observer must be one of {WEIGHT_OBSERVERS}")
        return value
    if not value.isdigit() or int(value) not in BITS:
        raise UsageError(f"--override {text!r}: {key} must be one of 2..8 or 16")
    return int(value)


def load_config(path: Path | None, preset: str | None, observer: str | None, overrides: list[str],
                bias_correction: bool | None = None, widen_activations: bool | None = None,
                widen_below_db: float | None = None) -> QuantConfig:
    """Combine a JSON config file (optional) with command-line settings, which win (None: not given)."""
    data: dict = {}
    if path is not None:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"--config {path}: cannot read it as JSON: {exc}") from None
        unknown = set(data) - {"preset", "observer", "overrides", "keep_edge_layers_8bit", "bias_correction",
                               "widen_activations", "widen_below_db"}
        if unknown:
            raise UsageError(f"--config {path}: unknown keys {sorted(unknown)}")
    name = preset or data.get("preset", "w8a8")
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    observer = observer or data.get("observer")
    observer = None if observer is None else canonical_name(observer)
    if observer is not None and observer not in OBSERVERS:
        raise UsageError(f"unknown observer {observer!r}; observers: {', '.join(OBSERVERS)}")
    file_overrides = [parse_override(o) if isinstance(o, str) else _override_from_dict(o, path) for o in data.get("overrides", [])]
    if bias_correction is None:
        bias_correction = data.get("bias_correction", True)
    if widen_activations is None:
        widen_activations = data.get("widen_activations", True)
    for key, value in (("bias_correction", bias_correction), ("widen_activations", widen_activations)):
        if not isinstance(value, bool):
            raise UsageError(f"--config {path}: {key} must be true or false")
    if widen_below_db is None:
        widen_below_db = data.get("widen_below_db", MIN_BULK_SQNR_DB)
    if isinstance(widen_below_db, bool) or not isinstance(widen_below_db, (int, float)):
        raise UsageError(f"--config {path}: widen_below_db must be a number of dB")
    return QuantConfig(PRESETS[name], observer, tuple(file_overrides + [parse_override(o) for o in overrides]),
                       data.get("keep_edge_layers_8bit"), bias_correction, widen_activations=widen_activations,
                       widen_below_db=float(widen_below_db))


def _override_from_dict(item: dict, path) -> Override:
    if "pattern" not in item:
        raise UsageError(f"--config {path}: every override needs a 'pattern'")
    text = item["pattern"] + ":" + ",".join(f"{k}={v}" for k, v in item.items() if k != "pattern")
    return parse_override(text)
