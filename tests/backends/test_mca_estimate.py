"""`qcompiler tune --estimate CORE`: aarch64 kernels scored by llvm-mca's model of an ARM core,
weighted by block counts from qemu, on this x86 machine. The counts must add up to the kernel's
own arithmetic, the database must say it holds estimates, and what it tunes must build and
compute the same bits as the untuned library."""

from __future__ import annotations

import json

import numpy as np
import pytest

from graphs import cli
from qcompiler.backends.tvm import mca_estimate, tuning
from qcompiler.backends.tvm.schedules.int8_conv import ConvTask
from qcompiler.backends.tvm.targets import get_target, tvm_target
from test_tuning import conv_model  # noqa: F401 - the fixture


@pytest.mark.parametrize("tile", [1, 7])
@pytest.mark.parametrize("size", [(14, 14, 16, 32, 3), (28, 28, 32, 64, 1)])
def test_the_counted_blocks_run_exactly_the_kernels_dot_products(size, tile):
    h, w, ci, co, k = size
    task = ConvTask(1, h, w, ci, co, k, k, (1, 1), (1, 1), (k // 2,) * 4, None, 8, "sdot")
    blocks = mca_estimate.executed_blocks(tuning.scheduled(task, tile), tvm_target(get_target("arm64-dotprod")))
    sdots = sum(runs * sum(line.startswith("sdot ") for line in block) for runs, block in blocks)
    assert sdots == task.macs() // 16   # one sdot is 16 multiply-adds; every block counted once per run


def test_the_peak_is_llvm_mcas_dot_product_throughput():
    # Cortex-A76 issues two 128-bit sdot per cycle on its two ASIMD pipes; the A55 fewer.
    assert mca_estimate.peak_macs_per_cycle("cortex-a76", "sdot") == pytest.approx(32, rel=0.03)
    assert mca_estimate.peak_macs_per_cycle("cortex-a55", "sdot") < 32


def test_a_spilling_tile_is_estimated_slower():
    # 28 pixels x 4 registers of int32 per 16-channel block cannot live in NEON's 32 registers.
    task = ConvTask(1, 28, 28, 32, 64, 1, 1, (1, 1), (1, 1), (0, 0, 0, 0), None, 8, "sdot")
    target = tvm_target(get_target("arm64-dotprod"))
    fits, spills = (mca_estimate.kernel_cycles(tuning.scheduled(task, t), target, "cortex-a76") for t in (4, 28))
    assert spills > 1.3 * fits


def test_estimate_tunes_an_arm_library_that_computes_the_same_bits(conv_model, tmp_path, capsys):  # noqa: F811
    db = tmp_path / "arm.json"
    code, out, err = cli(capsys, "tune", conv_model, "--target", "arm64-dotprod", "--estimate", "cortex-a76",
                         "--db", db, "--trials", "3")
    assert code == 0, err
    assert "llvm-mca estimates for cortex-a76" in out and "not measurements" in out and "Mcycles" in out
    data = json.loads(db.read_text())
    assert data["estimated_for"] == "cortex-a76" and data["target"] == "arm64-dotprod"
    assert len(data["records"]) >= 2 and data["peak_gops"] > 0
    assert all(r["tuned_ms"] <= r["template_ms"] and len(r["points"]) == 3 for r in data["records"].values())

    # Mixing another core's estimates (or measured times) into the database is refused.
    code, _, err = cli(capsys, "tune", conv_model, "--target", "arm64-dotprod", "--estimate", "cortex-a55", "--db", db)
    assert code == 2 and "holds llvm-mca estimates for cortex-a76" in err and "another --db" in err, err

    # A tiling other than the template's, so that the tuned library really is another kernel.
    name, record = next(iter(data["records"].items()))
    data["records"][name]["tile"] = next(int(t) for t in record["points"] if int(t) != record["template_tile"])
    db.write_text(json.dumps(data))
    for label, extra in (("tuned", ["--tuning-db", str(db)]), ("untuned", [])):
        code, out, err = cli(capsys, "compile", conv_model, "--target", "arm64-dotprod", *extra, "-o", tmp_path / label)
        assert code == 0, err
    assert json.loads((tmp_path / "tuned" / "model.json").read_text())["tuned_kernels"] == sorted(data["records"])
    from qcompiler.backends.tvm.qemu import QemuLibrary

    feeds = {"x": np.random.default_rng(1).normal(0, 1, (4, 8, 12, 12)).astype(np.float32)}
    tuned, untuned = QemuLibrary(tmp_path / "tuned").run(feeds), QemuLibrary(tmp_path / "untuned").run(feeds)
    for name in untuned:
        np.testing.assert_array_equal(tuned[name], untuned[name])


def test_estimate_errors_are_usage_errors(conv_model, capsys):  # noqa: F811
    code, _, err = cli(capsys, "tune", conv_model, "--target", "arm64-dotprod", "--estimate", "cortex-x9")
    assert code == 2 and "cortex-a55, cortex-a76, neoverse-n1, neoverse-v1" in err, err
    code, _, err = cli(capsys, "tune", conv_model, "--estimate", "cortex-a76")
    assert code == 2 and "not an aarch64 target" in err, err
    code, _, err = cli(capsys, "tune", conv_model, "--target", "arm64-dotprod")
    assert code == 2 and "--estimate CORE" in err, err
