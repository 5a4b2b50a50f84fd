"""`qcompiler tune`: every tiling of each convolution timed on this machine or through a TVM RPC
tracker, a database that `compile --tuning-db` applies (and says so), libraries that compute
bit for bit what the untuned ones do, and clear exit-7 errors for a tracker that is not there."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import qcompiler
from graphs import ROOT, cli
from qcompiler.backends.tvm.runtime import load_for_host
from qcompiler.cli_tune import duration
from test_tvm_fidelity import quantized_graph


@pytest.fixture(scope="module")
def conv_model(tmp_path_factory):
    """A 1x1 conv and two 48-channel depthwise convs: two kernels to tune on every target (the
    depthwise ones), three where the CPU has a dot-product kernel."""
    path = tmp_path_factory.mktemp("tune") / "conv.qdq.onnx"
    qcompiler.save(quantized_graph("two-depthwise48", "w8a8", np.random.default_rng(0)), path)
    return path


def _task_count(model: Path) -> int:
    import onnx

    from qcompiler.backends.tvm.targets import get_target
    from qcompiler.backends.tvm.tuning import conv_tasks

    return len(conv_tasks(onnx.load(model), get_target("native"), 1))


def _assert_same_outputs(a: Path, b: Path, feeds: dict) -> None:
    outputs_a, outputs_b = load_for_host(a).run(feeds), load_for_host(b).run(feeds)
    assert outputs_a.keys() == outputs_b.keys()
    for name in outputs_a:
        np.testing.assert_array_equal(outputs_a[name], outputs_b[name])


def test_tune_then_compile_applies_the_tiling_and_computes_the_same_bits(conv_model, tmp_path, capsys):
    db = tmp_path / "tuning.json"
    code, out, err = cli(capsys, "tune", conv_model, "--db", db, "--trials", "3")
    assert code == 0, err
    records = json.loads(db.read_text())["records"]
    assert len(records) == _task_count(conv_model) >= 2, err
    for name, record in records.items():
        assert len(record["points"]) == 3 and str(record["template_tile"]) in record["points"]
        assert record["tuned_ms"] <= record["template_ms"] and name in out and "speed-up" in out
    name, record = next(iter(records.items()))

    # Apply a tiling other than the template's, so that the tuned library really is another kernel.
    data = json.loads(db.read_text())
    data["records"][name]["tile"] = next(int(t) for t in record["points"] if int(t) != record["template_tile"])
    db.write_text(json.dumps(data))
    code, out, err = cli(capsys, "compile", conv_model, "--tuning-db", db, "-o", tmp_path / "tuned")
    assert code == 0, err
    assert f"tuning: {len(records)} kernel(s) took their tiling from" in out
    assert json.loads((tmp_path / "tuned" / "model.json").read_text())["tuned_kernels"] == sorted(records)
    code, _, err = cli(capsys, "compile", conv_model, "-o", tmp_path / "untuned")
    assert code == 0, err
    assert json.loads((tmp_path / "untuned" / "model.json").read_text())["tuned_kernels"] == []
    feeds = {"x": np.random.default_rng(1).normal(0, 1, (4, 8, 12, 12)).astype(np.float32)}
    _assert_same_outputs(tmp_path / "tuned", tmp_path / "untuned", feeds)

    code, out, err = cli(capsys, "tune", tmp_path / "tuned", "--db", db, "--resume")   # a library folder
    assert code == 0 and "no kernel tuned" in out, err


def test_a_database_that_matches_nothing_or_another_target_is_said(conv_model, tmp_path, capsys, caplog):
    db = tmp_path / "tuning.json"
    db.write_text(json.dumps({"format": "qcompiler-tuning/1", "target": "native", "records": {}}))
    code, out, err = cli(capsys, "compile", conv_model, "--tuning-db", db, "-o", tmp_path / "a")
    assert code == 0 and "has no record for any kernel of this build" in caplog.text, err
    db.write_text(json.dumps({"format": "qcompiler-tuning/1", "target": "arm64", "records": {}}))
    code, _, err = cli(capsys, "compile", conv_model, "--tuning-db", db, "-o", tmp_path / "b")
    assert code == 2 and "tuned for 'arm64', not 'native'" in err, err
    db.write_text("[1, 2]")
    code, _, err = cli(capsys, "compile", conv_model, "--tuning-db", db, "-o", tmp_path / "c")
    assert code == 2 and "not a tuning database" in err, err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_targets_that_cannot_be_timed_here_are_refused(conv_model, capsys):
    code, _, err = cli(capsys, "tune", conv_model, "--target", "arm64-dotprod")
    assert code == 2 and "give --rpc HOST:PORT:KEY" in err, err
    code, _, err = cli(capsys, "tune", conv_model, "--target", "hexagon-v68")
    assert code == 2 and "qemu has no timing model" in err, err


def test_durations():
    assert [duration(t) for t in ("90", "90s", "30m", "1.5h")] == [90, 90, 1800, 5400]
    with pytest.raises(Exception, match="not a duration"):
        duration("ten minutes")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(*args) -> subprocess.Popen:
    """A process in a group of its own (an RPC server forks its worker: both are killed together)."""
    return subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@pytest.fixture
def tracker():
    """A TVM RPC tracker and two servers of key "dev" on 127.0.0.1, as TVM ships them."""
    port = _free_port()
    processes = [_start("tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port), "--port-end",
                        str(port + 1))]
    time.sleep(2)
    for _ in range(2):
        server = _free_port()
        processes.append(_start("tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{port}", "--key", "dev",
                                "--host", "127.0.0.1", "--port", str(server), "--port-end", str(server + 1)))
    deadline = time.time() + 30
    while time.time() < deadline:
        status = subprocess.run([sys.executable, "-m", "qcompiler", "rpc", "status", "--tracker", f"127.0.0.1:{port}"],
                                capture_output=True, text=True)
        if "dev" in status.stdout and "2 free" in status.stdout:
            break
        time.sleep(1)
    else:
        pytest.fail(f"the tracker and servers did not come up: {status.stdout} {status.stderr}")
    yield port, processes
    for process in processes:
        _kill(process)


def test_tuning_through_a_tracker_survives_a_server_killed_midway(tracker, conv_model, tmp_path, capsys):
    port, processes = tracker
    model, expected = conv_model, _task_count(conv_model)
    db = tmp_path / "tuning.json"
    tune = subprocess.Popen([sys.executable, "-m", "qcompiler", "tune", str(model), "--rpc", f"127.0.0.1:{port}:dev",
                             "--trials", "2", "--db", str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    for line in tune.stderr:
        lines.append(line)
        if line.startswith("[2/"):
            _kill(processes[1])   # one of the two devices goes away while kernels are still to be timed
            break
    rest, err = tune.communicate(timeout=600)
    assert tune.returncode == 0, "".join(lines) + err
    records = json.loads(db.read_text())["records"]
    assert len(records) == expected and all(len(r["points"]) >= 1 for r in records.values()), records.keys()

    status = subprocess.run([sys.executable, "-m", "qcompiler", "rpc", "status", "--tracker", f"127.0.0.1:{port}"],
                            capture_output=True, text=True)
    assert "1 free" in status.stdout, status.stdout
    code, out, err = cli(capsys, "compile", model, "--tuning-db", db, "-o", tmp_path / "tuned")
    assert code == 0 and f"tuning: {expected} kernel(s)" in out, err
    code, _, err = cli(capsys, "compile", model, "-o", tmp_path / "untuned")
    assert code == 0, err
    feeds = {"x": np.random.default_rng(2).normal(0, 1, (1, 8, 12, 12)).astype(np.float32)}
    _assert_same_outputs(tmp_path / "tuned", tmp_path / "untuned", feeds)


def test_an_unreachable_tracker_or_a_key_without_devices_is_exit_7(tracker, conv_model, capsys):
    port, _ = tracker
    start = time.time()
    code, _, err = cli(capsys, "tune", conv_model, "--rpc", f"127.0.0.1:{_free_port()}:dev")
    assert code == 7 and "no RPC tracker at" in err and time.time() - start < 20, err
    code, _, err = cli(capsys, "tune", conv_model, "--rpc", f"127.0.0.1:{port}:phone")
    assert code == 7 and "no free device with key 'phone' (it has: dev x2)" in err, err
    code, _, err = cli(capsys, "tune", conv_model, "--rpc", "localhost:dev")
    assert code == 2 and "expected HOST:PORT:KEY" in err, err


def test_the_latency_table_times_kernels_through_a_tracker(tracker, tmp_path, monkeypatch):
    """Mixed precision's per-layer latency table measured on the device behind a tracker (here a
    server on this host): every kernel timed there, cached under that device apart from local
    timings, and read back from the cache the second time."""
    from qcompiler.backends.tvm.layer_costs import kernel_task, layer_shapes, measure_latency
    from qcompiler.backends.tvm.targets import get_target
    from qcompiler.driver import build_pipeline
    from qcompiler.ir import load

    port, _ = tracker
    monkeypatch.setenv("QCOMPILER_CACHE", str(tmp_path))
    model = build_pipeline()(load(ROOT / "models" / "fashion_mobilenetv2.onnx")).model
    spec = get_target("native")
    every = layer_shapes(model, [n.name for n in model.graph.nodes if n.op == "Conv"])
    shapes = {n: s for n, s in every.items() if kernel_task(s, 8, spec) is not None}
    shapes = dict(list(shapes.items())[:2])
    remote = measure_latency(shapes, (4, 8), spec, rpc=f"127.0.0.1:{port}:dev", repeats=2)
    assert remote.device == f"127.0.0.1:{port}:dev" and remote.seconds > 0
    assert all(remote.ms[n][b] > 0 for n in shapes for b in (4, 8)), remote.ms
    local = measure_latency(shapes, (4, 8), spec, repeats=2)
    assert local.device == "local" and local.seconds > 0, "the device's timings are not the host's cache entry"
    again = measure_latency(shapes, (4, 8), spec, rpc=f"127.0.0.1:{port}:dev")
    assert again.ms == remote.ms, "read back from the device's cache entry"
