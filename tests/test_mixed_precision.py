"""Mixed precision as a user meets it: `--bits auto` under a size budget compiles to a library
whose weight bytes are the search's own accounting, impossible budgets are usage errors, the
sensitivities are cached and ordered, the latency table repeats within its spread, and a latency
budget is on the whole library (its kernels timed alone plus the rest of a measured library)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graphs import ROOT, make_model
from qcompiler.cli import main

RESNET = ROOT / "models" / "fashion_resnet8.onnx"
MOBILENET = ROOT / "models" / "fashion_mobilenetv2.onnx"
SUBSET = ROOT / "models" / "fashion_mnist_subset.npz"


def cli(capsys, *args):
    code = main([str(a) for a in args] + ["--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def weight_levels(qdq_path) -> list[int]:
    """Per weighted layer in graph order, the most distinct integer levels any output channel of
    its quantized weight uses."""
    model = onnx.load(qdq_path)
    inits = {i.name: i for i in model.graph.initializer}
    dequantized = {n.output[0]: numpy_helper.to_array(inits[n.input[0]]).astype(np.int64)
                   for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    levels = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and node.input[1] in dequantized:
            rows = dequantized[node.input[1]]
            rows = rows.reshape(rows.shape[0], -1) if node.op_type == "Conv" else rows.reshape(-1, rows.shape[-1]).T
            levels.append(max(len(np.unique(row)) for row in rows))
    return levels


@pytest.mark.parametrize("model,target,budget", [(RESNET, "x86-avx512-vnni", "30KB"),
                                                 (MOBILENET, "arm64-dotprod", "40KB")],
                         ids=["resnet8-vnni", "mobilenetv2-sdot"])
def test_size_budget_is_met_to_the_byte_of_the_library(model, target, budget, tmp_path, capsys):
    code, out, err = cli(capsys, "compile", model, "--calib", SUBSET, "--calib-count", 64, "--preset", "w4a8",
                         "--bits", "auto", "--max-size", budget, "--target", target, "-o", tmp_path / "lib")
    assert code == 0, err
    line = next(row for row in out.splitlines() if row.startswith("bit widths"))
    reached = int(line.split("reached ")[1].split(" bytes")[0].replace(",", ""))
    meta = json.loads((tmp_path / "lib" / "model.json").read_text())
    assert meta["weight_bytes"] == reached, "the search's size accounting is the library's weight bytes"
    assert reached <= int(budget.removesuffix("KB")) * 1000
    order = [int(b) for b in line.split("in graph order: ")[1].split()]
    assert set(order) >= {2, 8} or set(order) >= {4, 8}, "a budget between the extremes mixes widths"
    levels = weight_levels(tmp_path / "lib" / "model.qdq.onnx")
    assert len(levels) == len(order)
    for bits, used in zip(order, levels):
        assert used <= 2 ** bits - (bits != 2), f"a {bits}-bit layer uses {used} levels"


def test_brecq_reconstructs_at_the_searched_widths(tmp_path, capsys):
    """`--bits auto --reconstruct brecq` from the command line: the search runs first and the
    reconstruction learns each layer's rounding on the grid of its searched width (a 2-bit
    layer rounded on the preset's 4-bit grid would use up to 15 levels)."""
    code, out, err = cli(capsys, "quantize", RESNET, "--calib", SUBSET, "--calib-count", 64, "--preset", "w4a8",
                         "--bits", "auto", "--max-size", "28KB", "--target", "x86-avx512-vnni", "--reconstruct",
                         "brecq", "--iters", 20, "--act-iters", 5, "--no-progress", "-o", tmp_path)
    assert code == 0, err
    line = next(row for row in out.splitlines() if row.startswith("bit widths"))
    assert any(row.startswith("reconstruction") and "5 blocks" in row for row in out.splitlines()), out
    order = [int(b) for b in line.split("in graph order: ")[1].split()]
    assert 2 in order and 8 in order, line
    levels = weight_levels(tmp_path / "model.qdq.onnx")
    assert len(levels) == len(order)
    for bits, used in zip(order, levels):
        assert used <= 2 ** bits - (bits != 2), f"a {bits}-bit layer uses {used} levels"


def test_transposed_convs_are_counted_as_the_library_stores_them(tmp_path, capsys):
    """A U-Net's ConvTranspose layers are built as stride-1 phase convs with packed weights: the
    search counts them so (they were counted as 8-bit parameters, and 30 KB was refused)."""
    from qcompiler.models.recipes import corpus

    proto = corpus.build("unet", 17)
    onnx.save(proto, str(tmp_path / "unet.onnx"))
    np.savez(tmp_path / "calib.npz", **corpus.sample_inputs(proto, 32))
    code, out, err = cli(capsys, "compile", tmp_path / "unet.onnx", "--calib", tmp_path / "calib.npz", "--preset",
                         "w4a8", "--bits", "auto", "--max-size", "30KB", "--target", "x86-64-v3", "-o", tmp_path / "lib")
    assert code == 0, err
    line = next(row for row in out.splitlines() if row.startswith("bit widths"))
    reached = int(line.split("reached ")[1].split(" bytes")[0].replace(",", ""))
    assert json.loads((tmp_path / "lib" / "model.json").read_text())["weight_bytes"] == reached <= 30_000


def test_grouped_convs_are_counted_as_their_block_diagonal_kernels(tmp_path, capsys):
    """The torchvision RegNet export's grouped convs (8 channels a group) run on the dense dot
    kernels with block-diagonal weights: the search counts those bytes, packed like any conv's."""
    export = ROOT / "tests" / "corpus" / "torch" / "regnet-dynamo-opset18.onnx"
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).random((8, 3, 64, 64), np.float32))
    code, out, err = cli(capsys, "compile", export, "--calib", tmp_path / "calib.npz", "--preset", "w4a8", "--bits",
                         "auto", "--max-size", "45KB", "--target", "x86-64-v3", "-o", tmp_path / "lib")
    assert code == 0, err
    line = next(row for row in out.splitlines() if row.startswith("bit widths"))
    reached = int(line.split("reached ")[1].split(" bytes")[0].replace(",", ""))
    meta = json.loads((tmp_path / "lib" / "model.json").read_text())
    assert meta["weight_bytes"] == reached <= 45_000
    assert "depthwise/grouped conv2d, HWIO weights" not in meta["kernels"], meta["kernels"]


def test_impossible_budget_is_one_usage_line(tmp_path, capsys):
    # a named target: native's size depends on the host (conv weights pack to 4 bits only where it
    # has a dot-product kernel); x86-64-v3's AVX2 kernels pack them on any host
    code, out, err = cli(capsys, "quantize", RESNET, "--calib", SUBSET, "--preset", "w4a8", "--bits", "auto",
                         "--max-size", "3KB", "--target", "x86-64-v3", "-o", tmp_path / "q")
    assert code == 2
    assert "the smallest reachable is 20,992 bytes" in err and "x86-64-v3" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("args,message", [
    (["--max-size", "30KB"], "--max-size needs --bits auto"),
    (["--bits", "auto"], "needs a budget"),
    (["--bits", "auto", "--max-size", "lots"], "expected a size"),
    (["--bits", "auto", "--max-size", "30KB", "--bit-choices", "3,8"], "subset of 2,4,8"),
    (["--bits", "auto", "--max-latency", "1ms", "--target", "arm64-dotprod"], "--rpc"),
])
def test_bad_budget_options_are_usage_errors(args, message, tmp_path, capsys):
    code, _, err = cli(capsys, "quantize", RESNET, "--calib", SUBSET, *args, "-o", tmp_path / "q")
    assert code == 2 and message in err


def test_sensitivities_are_ordered_and_cached(tmp_path, monkeypatch):
    from qcompiler.driver import build_pipeline
    from qcompiler.data import load_data
    from qcompiler.ir import load
    from qcompiler.mixed_precision import searched_layers
    from qcompiler.passes.partition_blocks import partition
    from qcompiler.quant.presets import PRESETS, QuantConfig
    from qcompiler.sim.sensitivity import SensitivityConfig, analyze

    monkeypatch.setenv("QCOMPILER_CACHE", str(tmp_path))
    model = build_pipeline()(load(RESNET)).model
    config = QuantConfig(PRESETS["w4a8"])
    layers, _, _ = searched_layers(model, config)
    data = load_data(SUBSET, model)
    settings = SensitivityConfig(samples=32, network=True)
    first = analyze(model, layers, partition(model), data, config.layer_spec_at, settings, progress=False)
    assert not first.cached
    for entry in first.layers:
        e = entry.block_error
        assert e[2] > e[4] > e[8] >= 0, entry.layer
        assert entry.network_kl[2] > entry.network_kl[8] - 1e-6
        assert 0 <= entry.accuracy[2] <= 1
    again = analyze(model, layers, partition(model), data, config.layer_spec_at, settings, progress=False)
    assert again.cached and again.to_json() == first.to_json()
    fewer = analyze(model, layers, partition(model), data.head(16), config.layer_spec_at, settings, progress=False)
    assert not fewer.cached, "other data is measured anew"


def test_latency_table_repeats_within_its_spread(tmp_path, monkeypatch):
    from qcompiler.backends.tvm.layer_costs import kernel_task, layer_shapes, measure_latency
    from qcompiler.backends.tvm.targets import get_target
    from qcompiler.driver import build_pipeline
    from qcompiler.ir import load

    monkeypatch.setenv("QCOMPILER_CACHE", str(tmp_path))
    model = build_pipeline()(load(MOBILENET)).model
    spec = get_target("native")
    every = layer_shapes(model, [n.name for n in model.graph.nodes if n.op == "Conv"])
    names = [n for n, shape in every.items() if kernel_task(shape, 8, spec) is not None][:2]
    shapes = {n: every[n] for n in names}
    runs = [measure_latency(shapes, (8,), spec, use_cache=False) for _ in range(2)]
    timed = 0
    for layer in names:
        for bits in (8,):
            a, b = runs[0].ms[layer][bits], runs[1].ms[layer][bits]
            assert (a is None) == (b is None)
            if a is None:
                continue
            timed += 1
            tolerance = runs[0].spread[layer][bits] * a + runs[1].spread[layer][bits] * b + 0.25 * a
            assert abs(a - b) <= tolerance, (layer, bits, a, b)
    assert timed >= 2, "the depthwise kernels (16k channels) at least are timed on every target"
    cached = measure_latency(shapes, (8,), spec)
    assert measure_latency(shapes, (8,), spec).ms == cached.ms


def test_latency_table_times_the_kernels_that_builds_make(tmp_path, monkeypatch):
    """The requantization form of a layer's kernel (int32 parts, int64 high words, ties) is the
    one its build picks from the quantized weights: the int32 form runs ~1.5x faster than the
    form kernel_task assumes, and times of the wrong form predicted an all-8-bit MobileNetV2
    as fast as its 4-bit library (measured 7% slower)."""
    from qcompiler.backends.tvm.layer_costs import kernel_task, layer_shapes
    from qcompiler.backends.tvm.targets import get_target
    from qcompiler.backends.tvm.tuning import conv_tasks
    from qcompiler.data import load_data
    from qcompiler.driver import build_pipeline
    from qcompiler.ir import load
    from qcompiler.mixed_precision import _quick_qdq, built_kernels, searched_layers
    from qcompiler.quant.presets import load_config

    monkeypatch.setenv("QCOMPILER_CACHE", str(tmp_path))
    model = build_pipeline()(load(MOBILENET)).model
    config, spec = load_config(None, "w4a8", None, []), get_target("native")
    layers, pinned, _ = searched_layers(model, config)
    shapes = layer_shapes(model, [n for n in layers if n not in pinned])
    data = load_data(SUBSET, model)
    built = built_kernels(model, config, data, spec, shapes, (4, 8), progress=False)
    with_kernel = [n for n in shapes if kernel_task(shapes[n], 4, spec) is not None]
    assert with_kernel and all((n, 4) in built for n in with_kernel), "every layer's kernel found in the build"
    made = {t.name() for t in conv_tasks(_quick_qdq(model, config, data).to_onnx(), spec, 1)}
    assert {built[(n, 4)].name() for n in with_kernel} <= made
    assert any(built[(n, 4)].requantize != kernel_task(shapes[n], 4, spec).requantize for n in with_kernel)
    depthwise = next(n for n in shapes if shapes[n].kind == "depthwise")
    assert not kernel_task(shapes[depthwise], 8, get_target("hexagon-v73")).parallel, "as Hexagon builds make it"


def test_analyze_prints_and_writes_the_sensitivities(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QCOMPILER_CACHE", str(tmp_path / "cache"))
    code, out, err = cli(capsys, "analyze", RESNET, "--calib", SUBSET, "--samples", 32, "--bit-choices", "2,8",
                         "-o", tmp_path / "a")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["#", "layer", "op", "params"] and "KL @2" in lines[0] and "top-1 @8" in lines[0]
    assert len([line for line in lines if line.split()[0].isdigit() and line.split()[1].startswith("/")]) == 10
    assert "most sensitive at 2 bits: " in out
    table = json.loads((tmp_path / "a" / "sensitivity.json").read_text())
    assert table["format"] == "qcompiler-sensitivity/1" and len(table["layers"]) == 10
    names = {entry["layer"] for entry in table["layers"]}
    assert table["pairs"], "ResNet-8's blocks hold two or three convolutions: pair terms"
    for pair, terms in table["pairs"].items():
        assert set(pair.split("|")) <= names and sorted(terms) == ["2,2", "2,8", "8,2", "8,8"]
    largest = max(((p, w, v) for p, t in table["pairs"].items() for w, v in t.items()), key=lambda t: abs(t[2]))
    a, b = largest[0].split("|")
    assert f"{len(table['pairs'])} pairs; the largest: {a} + {b} at " in out
    assert "<table id='layers'" in (tmp_path / "a" / "analysis.html").read_text()
    code, out, _ = cli(capsys, "analyze", RESNET, "--calib", SUBSET, "--samples", 32, "--bit-choices", "2,8")
    assert code == 0 and "read from the cache" in out


def test_analyze_measures_the_network_effect_on_the_eval_data(tmp_path, capsys, monkeypatch):
    """--eval: the network-level KL, agreement and accuracy come from the held-out samples, not
    the calibration ones (the block errors still do), and accuracy only where they have labels."""
    monkeypatch.setenv("QCOMPILER_CACHE", str(tmp_path / "cache"))
    subset = np.load(SUBSET)
    np.savez(tmp_path / "held.npz", input=subset["input"][-64:], labels=subset["labels"][-64:])
    np.savez(tmp_path / "unlabelled.npz", input=subset["input"][-64:])
    tables = {}
    for name, extra in (("calib", []), ("held", ["--eval", tmp_path / "held.npz"]),
                        ("unlabelled", ["--eval", tmp_path / "unlabelled.npz"])):
        code, _, err = cli(capsys, "analyze", RESNET, "--calib", SUBSET, "--calib-count", 32, "--samples", 32,
                           "--bit-choices", "2,8", "-o", tmp_path / name, *extra)
        assert code == 0, err
        tables[name] = json.loads((tmp_path / name / "sensitivity.json").read_text())["layers"]
    for calib, held, unlabelled in zip(tables["calib"], tables["held"], tables["unlabelled"]):
        assert calib["block_error"] == held["block_error"] == unlabelled["block_error"]
        assert held["network_kl"] == unlabelled["network_kl"] and held["accuracy"] and not unlabelled["accuracy"]
    assert [t["network_kl"] for t in tables["calib"]] != [t["network_kl"] for t in tables["held"]]


def test_sensitivity_of_a_network_whose_logits_are_nchw(tmp_path, monkeypatch):
    """SqueezeNet-style outputs [N, classes, 1, 1] (a global pool after the last conv): the
    pseudo-labels and top-1 come from the flattened logits (this was exit 70 on light_squeezenet)."""
    from onnx import TensorProto, helper

    from qcompiler.data import load_data
    from qcompiler.ir import Model
    from qcompiler.mixed_precision import searched_layers
    from qcompiler.passes.partition_blocks import partition
    from qcompiler.quant.presets import PRESETS, QuantConfig
    from qcompiler.sim.sensitivity import SensitivityConfig, analyze

    monkeypatch.setenv("QCOMPILER_CACHE", str(tmp_path))
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)
               for name, shape in (("w1", (8, 3, 3, 3)), ("w2", (5, 8, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["c"], name="conv2"),
             helper.make_node("GlobalAveragePool", ["c"], ["y"], name="pool")]
    graph = helper.make_graph(nodes, "nchw_logits", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                  ["N", 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 1, 1])], weights)
    model = Model.from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    config = QuantConfig(PRESETS["w4a8"])
    layers, _, _ = searched_layers(model, config)
    data = load_data({"x": rng.normal(0, 1, (8, 3, 6, 6)).astype(np.float32)}, model)
    table = analyze(model, layers, partition(model), data, config.layer_spec_at,
                    SensitivityConfig(samples=8, network=True), progress=False)
    for entry in table.layers:
        assert entry.block_error[2] > entry.block_error[8] >= 0
        assert 0 <= entry.agreement[2] <= 1 and entry.network_kl[2] >= 0


def depthwise_chain(tmp_path):
    """A 1x1 conv, two 48-channel depthwise convs (kernels of their own on every target: the
    searched layers) and a 1x1 conv, saved with 32 random calibration samples."""
    from onnx import helper

    rng = np.random.default_rng(0)
    weights = {"e_w": (48, 8, 1, 1), "d1_w": (48, 1, 3, 3), "d2_w": (48, 1, 3, 3), "p_w": (16, 48, 1, 1)}
    inits = {k: rng.normal(0, 0.3, shape).astype(np.float32) for k, shape in weights.items()}
    nodes = [helper.make_node("Conv", ["x", "e_w"], ["e"], name="expand", kernel_shape=[1, 1]),
             helper.make_node("Relu", ["e"], ["r"]),
             helper.make_node("Conv", ["r", "d1_w"], ["d1"], name="dw1", group=48, kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["d1"], ["s"]),
             helper.make_node("Conv", ["s", "d2_w"], ["d2"], name="dw2", group=48, kernel_shape=[3, 3],
                              strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["d2"], ["t"]),
             helper.make_node("Conv", ["t", "p_w"], ["y"], name="project", kernel_shape=[1, 1])]
    path, calib = tmp_path / "chain.onnx", tmp_path / "calib.npz"
    onnx.save(make_model(nodes, [("x", ["N", 8, 12, 12])], [("y", None)], inits, opset=13).to_onnx(), path)
    np.savez(calib, x=rng.normal(0, 1, (32, 8, 12, 12)).astype(np.float32))
    return path, calib


def test_latency_budget_is_on_the_whole_library(tmp_path, capsys, monkeypatch):
    import qcompiler
    from qcompiler.mixed_precision import BitBudget

    monkeypatch.setenv("QCOMPILER_CACHE", str(tmp_path / "cache"))
    path, calib = depthwise_chain(tmp_path)
    quick = []
    real = qcompiler.mixed_precision._quick_qdq
    monkeypatch.setattr("qcompiler.mixed_precision._quick_qdq", lambda *a: quick.append(a) or real(*a))
    mixed = qcompiler.quantize(path, calib, "w4a8", bits=BitBudget(max_latency=1000.0), progress=False).mixed
    whole, problem, chosen = mixed.whole, mixed.problem, mixed.assignment
    assert len(quick) == len(mixed.latency.ms["dw1"]) == 3, "a build per width 2, 4, 8; the W4 library reuses one"
    assert problem.layers == ("dw1", "dw2")
    assert whole.reference_bits == 4 and whole.kernels_ms > 0
    assert whole.kernels_ms == pytest.approx(sum(mixed.latency.ms[n][4] for n in problem.layers))
    assert problem.fixed_latency == pytest.approx(whole.library_ms - whole.kernels_ms)
    kernels = sum(mixed.latency.ms[n][b] for n, b in zip(problem.layers, chosen.bits))
    assert chosen.latency == pytest.approx(problem.fixed_latency + kernels), "predicted: rest + chosen kernels"

    def no_builds(*args, **kwargs):
        raise AssertionError("a cached latency table needs no quick builds")

    monkeypatch.setattr("qcompiler.mixed_precision.built_kernels", no_builds)   # the CLI runs below hit the cache
    fastest = problem.fixed_latency + sum(min(t) for t in problem.latency)
    code, _, err = cli(capsys, "quantize", path, "--calib", calib, "--preset", "w4a8", "--bits", "auto",
                       "--max-latency", "1us", "-o", tmp_path / "q")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"the fastest reachable is {fastest:.3f} ms" in err, "the rest of the library counts"

    code, out, err = cli(capsys, "compile", path, "--calib", calib, "--preset", "w4a8", "--bits", "auto",
                         "--max-latency", "1s", "-o", tmp_path / "lib")
    assert code == 0, err
    line = next(row for row in out.splitlines() if row.startswith("latency: "))
    assert "50 runs of one batch" in line and "budget 1000.000 ms" in line
    assert float(line.split("median ")[1].split(" ms")[0]) > 0


def test_an_unreadable_cache_entry_is_measured_again(tmp_path, caplog):
    from qcompiler.backends.tvm.layer_costs import LatencyTable
    from qcompiler.files import read_cache, write_cache

    path = tmp_path / "latency" / "entry.json"
    assert read_cache(path, LatencyTable.from_json) is None, "no entry yet"
    table = LatencyTable("native", "local", {"conv": {8: 0.5}}, {"conv": {8: 0.01}}, 1.0)
    write_cache(path, table.to_json())
    assert read_cache(path, LatencyTable.from_json) == table
    path.write_text("{not json")
    assert read_cache(path, LatencyTable.from_json) is None
    assert "unreadable" in caplog.text


def test_searched_layers_keep_their_overridden_weight_observer(tmp_path, monkeypatch):
    """An override that sets only a layer's weight observer holds at every searched width: in
    the sensitivities (the cache key sees it) and in the assignment, as in the quick builds."""
    import qcompiler
    from qcompiler.mixed_precision import BitBudget
    from qcompiler.quant.presets import PRESETS, Override, QuantConfig

    config = QuantConfig(PRESETS["w4a8"], overrides=(Override("dw1", weight_observer="minmax"),))
    assert config.layer_spec_at("dw1", 2, 0).observer == "minmax"
    assert config.layer_spec_at("dw2", 2, 0) == config.weight_spec_at(2, 0) and config.weight_spec_at(2, 0).observer == "lp"
    assert config.layer_spec_at("dw1", 2, 0).bits == 2, "the search's bits, not the preset's"

    monkeypatch.setenv("QCOMPILER_CACHE", str(tmp_path / "cache"))
    path, calib = depthwise_chain(tmp_path)
    budget = BitBudget(max_size=10**6, choices=(2,), method="exact")   # both searched layers leave the preset's 4
    runs = {name: qcompiler.quantize(path, calib, "w4a8", overrides=overrides, bits=budget, progress=False)
            for name, overrides in [("plain", []), ("minmax", ["dw1:wobserver=minmax"])]}
    weights = {name: {tq.layer: tq.spec for tq in run.annotated.quant.values() if tq.role == "weight"}
               for name, run in runs.items()}
    assert weights["minmax"]["dw1"].bits == 2 and weights["minmax"]["dw1"].observer == "minmax"
    assert weights["minmax"]["dw2"] == weights["plain"]["dw2"] and weights["plain"]["dw1"].observer == "lp"
    errors = {name: run.mixed.table.layer("dw1").block_error[2] for name, run in runs.items()}
    assert errors["minmax"] != errors["plain"], "the sensitivity is measured with the layer's own observer"
