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
    """The decimal numbers in the README after each mention of `link` up to the paragraph's end,
    and the named results files' text."""
    pieces = README.split(f"[benchmarks/results/{link}]")[1:]
    numbers = [n for piece in pieces for n in re.findall(r"\d+\.\d+", piece.split("\n\n", 1)[0])]
    results = "".join((ROOT / "benchmarks" / "results" / name).read_text() for name in files)
    return numbers, results


#: (the README paragraph's link, the results files its numbers come from, at least how many numbers)
PARAGRAPHS = [
    ("latency.md", ("latency.md",), 6),
    ("latency_threads.md", ("latency_threads.md",), 6),
    ("latency_threads_avx2.md", ("latency_threads_avx2.md",), 2),
    ("latency_avx2.md", ("latency_avx2.md",), 5),
    ("depthwise_tiles_avx2.md", ("depthwise_tiles_avx2.md",), 2),
    ("lowbit.md", ("lowbit.md",), 10),
    ("mixed.md", ("mixed.md", "mixed_w2a4.md", "mixed_searches.md"), 12),
    ("tune.md", ("tune.md", "tune_arm.md", "depthwise_tiles_avx2.md"), 8),
    ("tune_avx2.md", ("tune_avx2.md",), 6),
    ("mixed_latency.md", ("mixed_latency.md",), 4),
    ("mixed_latency_avx2.md", ("mixed_latency_avx2.md",), 6),
    ("mixed_imagenet_latency_avx2.md", ("mixed_imagenet_latency_avx2.md",), 8),
    ("mixed_imagenet.md", ("mixed_imagenet.md", "mixed_imagenet_latency.md", "mixed_imagenet_brecq.md",
                           "imagenet_generalization.md"), 5),
    ("grouped_conv_avx2.md", ("grouped_conv_avx2.md",), 5),
    ("wild.md", ("wild.md",), 3),
    ("wild_avx2.md", ("wild_avx2.md",), 3),
]

#: Numbers a paragraph may state that no results file holds: the issue's targets.
TARGETS = {"latency.md": ("3.8", "1.5")}


@pytest.mark.parametrize("link, files, at_least", PARAGRAPHS, ids=[p[0] for p in PARAGRAPHS])
def test_paragraph_numbers_come_from_the_benchmark_files(link, files, at_least):
    """Every decimal number in the README paragraph after a results link is in its results files."""
    numbers, results = _paragraph_numbers(link, files)
    assert len(numbers) >= at_least
    for number in numbers:
        if number not in TARGETS.get(link, ()):
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
