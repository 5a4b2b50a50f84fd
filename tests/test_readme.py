"""The README's two commands are the ones that work: CI runs the test command verbatim."""

from __future__ import annotations

import re

import pytest

from graphs import ROOT

README = (ROOT / "README.md").read_text()


def readme_commands() -> list[str]:
    section = README.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\n(.*?)\n```", section, re.S)


def test_exactly_two_commands():
    commands = readme_commands()
    assert len(commands) == 2
    assert commands[0].endswith("qcompiler demo")
    assert commands[1].endswith("pytest")


def test_ci_runs_the_readme_test_command():
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci_lines


def test_ptq_numbers_in_the_readme_come_from_the_benchmark_file():
    numbers, results = _paragraph_numbers("ptq.md", ("ptq.md", "ptq_paired.md"))
    assert len(numbers) >= 8
    for number in numbers:
        assert number in results or f"+{number}" in results or f"{float(number):.2f}" in results, number


def _paragraph_numbers(link: str, files: tuple[str, ...]) -> tuple[list[str], str]:
    """The decimal numbers in the README paragraph after `link`, and the named results files' text."""
    paragraph = README.split(f"[benchmarks/results/{link}]", 1)[1].split("\n\n", 1)[0]
    results = "".join((ROOT / "benchmarks" / "results" / name).read_text() for name in files)
    return re.findall(r"\d+\.\d+", paragraph), results


def test_latency_numbers_in_the_readme_come_from_the_benchmark_file():
    numbers, results = _paragraph_numbers("latency.md", ("latency.md",))
    assert len(numbers) >= 6
    for number in numbers:
        if number in ("3.8",):      # the targets, from the issue
            continue
        assert number in results, number


def test_thread_numbers_in_the_readme_come_from_the_benchmark_file():
    numbers, results = _paragraph_numbers("latency_threads.md", ("latency_threads.md",))
    assert len(numbers) >= 6
    for number in numbers:
        assert number in results, number


def test_avx2_latency_numbers_in_the_readme_come_from_the_benchmark_file():
    numbers, results = _paragraph_numbers("latency_avx2.md", ("latency_avx2.md",))
    assert len(numbers) >= 5
    for number in numbers:
        assert number in results, number


def test_depthwise_tile_numbers_in_the_readme_come_from_the_benchmark_file():
    numbers, results = _paragraph_numbers("depthwise_tiles_avx2.md", ("depthwise_tiles_avx2.md",))
    assert len(numbers) >= 2
    for number in numbers:
        assert number in results, number


def test_lowbit_numbers_in_the_readme_come_from_the_benchmark_file():
    numbers, results = _paragraph_numbers("lowbit.md", ("lowbit.md",))
    assert len(numbers) >= 10
    for number in numbers:
        assert number in results, number


def test_mixed_numbers_in_the_readme_come_from_the_benchmark_file():
    numbers, results = _paragraph_numbers("mixed.md", ("mixed.md", "mixed_w2a4.md", "mixed_searches.md"))
    assert len(numbers) >= 12
    for number in numbers:
        assert number in results, number


def test_avx2_tuning_numbers_in_the_readme_come_from_the_benchmark_file():
    numbers, results = _paragraph_numbers("tune_avx2.md", ("tune_avx2.md",))
    assert len(numbers) >= 6
    for number in numbers:
        assert number in results, number


def test_mixed_latency_numbers_in_the_readme_come_from_the_benchmark_file():
    numbers, results = _paragraph_numbers("mixed_latency.md", ("mixed_latency.md",))
    assert len(numbers) >= 4
    for number in numbers:
        assert number in results, number


def test_avx2_mixed_latency_numbers_in_the_readme_come_from_the_benchmark_file():
    numbers, results = _paragraph_numbers("mixed_latency_avx2.md", ("mixed_latency_avx2.md",))
    assert len(numbers) >= 6
    for number in numbers:
        assert number in results, number


def test_avx2_imagenet_mixed_latency_numbers_in_the_readme_come_from_the_benchmark_file():
    numbers, results = _paragraph_numbers("mixed_imagenet_latency_avx2.md", ("mixed_imagenet_latency_avx2.md",))
    assert len(numbers) >= 8
    for number in numbers:
        assert number in results, number


def test_mixed_imagenet_numbers_in_the_readme_come_from_the_benchmark_file():
    numbers, results = _paragraph_numbers("mixed_imagenet.md", ("mixed_imagenet.md", "mixed_imagenet_latency.md",
                                                                "mixed_imagenet_brecq.md",
                                                                "imagenet_generalization.md"))
    assert len(numbers) >= 5
    for number in numbers:
        assert number in results, number


def test_grouped_conv_numbers_in_the_readme_come_from_the_benchmark_file():
    numbers, results = _paragraph_numbers("grouped_conv_avx2.md", ("grouped_conv_avx2.md",))
    assert len(numbers) >= 5
    for number in numbers:
        assert number in results, number


@pytest.mark.parametrize("results_file", ["wild.md", "wild_avx2.md"])
def test_wild_numbers_in_the_readme_come_from_the_benchmark_file(results_file):
    numbers, results = _paragraph_numbers(results_file, (results_file,))
    assert len(numbers) >= 3
    for number in numbers:
        assert number in results, number


def test_python_compile_example_runs(tmp_path, capsys):
    """The README's qcompiler.compile example, as written (paths made absolute, output in tmp)."""
    section = README.split("The same from Python, from the float model", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 8
    code = code.replace('"models/', f'"{ROOT}/models/').replace('output_dir="out"', f'output_dir="{tmp_path / "out"}"')
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("integer ops: ") and "float fallback: none" in lines[0]
    assert re.search(r"logits: max (0|1)\.00 LSB", lines[0])
    assert re.fullmatch(r"\[(\d ){9}\d\]", lines[1])
    assert (tmp_path / "out" / "model.so").exists() and (tmp_path / "out" / "report.html").exists()
