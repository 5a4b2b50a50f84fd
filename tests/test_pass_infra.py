"""The pass framework: results, manager, instruments, registry and loading user passes."""

from __future__ import annotations

import textwrap

import pytest
from onnx import helper

from graphs import make_model
from qcompiler import ir
from qcompiler.errors import PassError, UsageError
from qcompiler.passes import (
    DumpAfterInstrument,
    Pass,
    PassContext,
    PassManager,
    PassResult,
    TimingInstrument,
    VerifyInstrument,
    get_pass,
    load_pass,
    register,
)


def relu_model() -> ir.Model:
    return make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [("x", [2])], [("y", None)])


class Noop(Pass):
    def call(self, model):
        return PassResult(model, False)


class RenameNodes(Pass):
    name = "rename-nodes"

    def call(self, model):
        changed = False
        for node in model.nodes:
            if not node.name.startswith("renamed_"):
                node.name = "renamed_" + node.name
                changed = True
        return PassResult(model, changed)


class BreakGraph(Pass):
    name = "break-graph"

    def call(self, model):
        model.nodes[0].op = "NoSuchOp"
        return PassResult(model, True)


class ReturnsModel(Pass):
    def call(self, model):
        return model


def test_manager_reports_modified_if_any_pass_did():
    assert not PassManager([Noop(), Noop()])(relu_model()).modified
    result = PassManager([Noop(), RenameNodes()])(relu_model())
    assert result.modified
    assert result.model.nodes[0].name == "renamed_relu"


def test_wrong_return_type_is_a_pass_error():
    with pytest.raises(PassError, match="not PassResult"):
        ReturnsModel()(relu_model())


def test_requires_and_ensures_run():
    calls = []

    class Checked(Noop):
        def requires(self, model):
            calls.append("requires")

        def ensures(self, model):
            calls.append("ensures")

    Checked()(relu_model())
    assert calls == ["requires", "ensures"]


def test_timing_instrument_times_every_pass():
    timing = TimingInstrument()
    PassManager([Noop(), RenameNodes()], PassContext([timing]))(relu_model())
    assert [name for name, _, _ in timing.timings] == ["Noop", "rename-nodes"]
    assert "total" in timing.table()


def test_dump_after_writes_the_named_pass(tmp_path):
    dump = DumpAfterInstrument(["rename-nodes"], tmp_path / "out")
    PassManager([Noop(), RenameNodes()], PassContext([dump]))(relu_model())
    assert [p.name for p in dump.written] == ["out.after-rename-nodes.onnx"]
    assert ir.load(dump.written[0]).nodes[0].name == "renamed_relu"


def test_verify_names_the_pass_that_broke_the_model():
    with pytest.raises(PassError, match="break-graph"):
        PassManager([Noop(), BreakGraph()], PassContext([VerifyInstrument()]))(relu_model())


def test_registry():
    @register("test-noop-registered")
    class Registered(Noop):
        pass

    assert get_pass("test-noop-registered") is Registered
    with pytest.raises(UsageError, match="unknown pass 'nope'"):
        get_pass("nope")
    with pytest.raises(ValueError, match="taken"):
        register("test-noop-registered")(RenameNodes)
    with pytest.raises(TypeError):
        register("not-a-pass")(object)


def test_load_pass_from_file(tmp_path):
    source = tmp_path / "user_passes.py"
    source.write_text(textwrap.dedent("""
        from qcompiler.passes import Pass, PassResult

        class Mine(Pass):
            def call(self, model):
                return PassResult(model, False)
    """))
    cls = load_pass(f"{source}:Mine")
    assert cls.__name__ == "Mine"
    assert not cls()(relu_model()).modified


def test_load_pass_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_pass(f"{tmp_path}/missing.py:X")
    (tmp_path / "bad.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(UsageError, match="RuntimeError: boom"):
        load_pass(f"{tmp_path}/bad.py:X")
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(UsageError, match="defines no 'X'"):
        load_pass(f"{tmp_path}/empty.py:X")
    (tmp_path / "notpass.py").write_text("class X:\n    pass\n")
    with pytest.raises(UsageError, match="not a subclass"):
        load_pass(f"{tmp_path}/notpass.py:X")
    with pytest.raises(UsageError, match="expected FILE.py:ClassName"):
        load_pass("just_a_name")


def test_load_pass_from_module():
    cls = load_pass("qcompiler.passes:FoldBatchNorm")
    assert cls.name == "fold-batchnorm"
