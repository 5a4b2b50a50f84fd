"""The report in a real browser (Debian's chromium, headless): it renders without script errors,
its per-layer table sorts and filters (driven through the address: #sort=...&filter=...), and at
500 layers its plots stay a readable size (the old report drew a 16,000-pixel-tall image)."""

from __future__ import annotations

import base64
import re
import shutil
import struct
import subprocess

import numpy as np
import pytest

from graphs import ROOT
from qcompiler.cli import main
from qcompiler.evaluation import TensorError
from qcompiler.report import ReportData, write_html
from qcompiler.report_layers import LayerRow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def browser(*args: str) -> str:
    assert CHROMIUM, "the report tests need a headless chromium: apt-get install chromium (.ci/run does)"
    result = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--virtual-time-budget=5000", *args], capture_output=True, text=True, timeout=120)
    return result.stdout


def dom(path, fragment: str = "") -> str:
    return browser("--dump-dom", f"file://{path}{fragment}")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def layer_names_in_order(page: str) -> list[str]:
    body = page.split("<table id=\"layers\"", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr( style=\"display: none;\")?><td data-v=\"\d+\">\d+</td><td>([^<]*)</td>", body)
    return [(name, hidden == "") for hidden, name in rows]


def synthetic_report(count: int) -> ReportData:
    rng = np.random.default_rng(0)
    tensors, layers = [], []
    for i in range(count):
        w, a = rng.uniform(5, 45, 2)
        tensors += [TensorError(f"/net/block{i}/conv/weight", "weight", "int4 sym", float(w), -0.1 * (i + 1), 0.1),
                    TensorError(f"/net/block{i}/relu_output", "activation", "uint8 asym", float(a), 0.0,
                                float(10 ** rng.uniform(-2, 3)))]
        layers.append(LayerRow(i, f"/net/block{i}/conv", "Conv", 4, 8, "float" if i % 50 == 7 else "integer",
                               float(w), float(a), float(rng.uniform(0, 1)), int(rng.integers(100, 5000)), None))
    return ReportData(model_path="synthetic.onnx", preset="w4a8", observer="lp", calibration="random",
                      calibration_samples=16, evaluation=None, evaluation_source="", tensors=tensors,
                      float_bytes=10 ** 6, quant_bytes=10 ** 5, seconds=1.0, layers=layers)


def test_a_500_layer_report_renders_readably(tmp_path):
    page = write_html(synthetic_report(500))
    path = tmp_path / "report.html"
    path.write_text(page)
    for png in re.findall(r"base64,([A-Za-z0-9+/=]+)", page):
        width, height = png_size(base64.b64decode(png))
        assert height <= 1200 and width <= 1100, (width, height)
    rendered = dom(path)
    assert 'data-ready="1"' in rendered and "data-errors" not in rendered
    assert len(layer_names_in_order(rendered)) == 500
    shot = tmp_path / "shot.png"
    browser("--window-size=1200,2000", f"--screenshot={shot}", f"file://{path}")
    assert png_size(shot.read_bytes()) == (1200, 2000) and shot.stat().st_size > 50_000, "a page, not a blank"


def test_the_layer_table_sorts_and_filters_in_the_page(tmp_path):
    report = synthetic_report(60)
    path = tmp_path / "report.html"
    path.write_text(write_html(report))
    by_sensitivity = [r.name for r in sorted(report.layers, key=lambda r: -r.sensitivity)]
    rendered = layer_names_in_order(dom(path, "#sort=sensitivity&desc"))
    assert [name for name, _ in rendered] == by_sensitivity
    filtered = layer_names_in_order(dom(path, "#filter=float"))
    assert [name for name, shown in filtered if shown] == [r.name for r in report.layers if r.runs == "float"]


@pytest.mark.parametrize("model", ["fashion_mobilenetv2"])
def test_a_mixed_precision_report_renders(model, tmp_path, capsys):
    out = tmp_path / "q"
    code = main(["quantize", str(ROOT / "models" / f"{model}.onnx"), "--calib",
                 str(ROOT / "models" / "fashion_mnist_subset.npz"), "--calib-count", "32", "--preset", "w4a8",
                 "--bits", "auto", "--max-size", "40KB", "--target", "arm64-dotprod", "-o", str(out),
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    page = (out / "report.html").read_text()
    assert "Chosen bit widths and the Pareto front" in page
    rendered = dom(out / "report.html")
    assert 'data-ready="1"' in rendered and "data-errors" not in rendered
    import onnx

    weighted = [n for n in onnx.load(ROOT / "models" / f"{model}.onnx").graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(layer_names_in_order(rendered)) == len(weighted)
