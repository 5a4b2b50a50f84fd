"""The progress bar off a terminal: a line per tenth of the work, and a closing note printed once."""

from __future__ import annotations

from qcompiler.progress import Progress


def _lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line]


def test_a_line_per_tenth_and_the_final_line_once(capsys):
    bar = Progress("epoch 1/1", 4)
    for _ in range(4):
        bar.advance(1, "loss 0.5")
    bar.close("loss 0.5")   # the note the last line already shows: not printed again
    lines = _lines(capsys)
    assert len(lines) == 4 and lines[-1].startswith("epoch 1/1 ####################") and "4/4" in lines[-1]


def test_a_new_note_or_an_unfinished_bar_prints_the_last_line_again(capsys):
    bar = Progress("epoch 1/1", 4)
    bar.advance(4, "loss 0.5")
    bar.close("loss 0.4, held-out 91.2%")
    assert _lines(capsys)[-1].endswith("loss 0.4, held-out 91.2%")
    bar = Progress("calibrating", 20)
    bar.advance(19, "x")
    bar.advance(0, "y")   # the same tenth as the line before it: not printed
    bar.close("y")        # unfinished: its last state is printed on closing
    lines = _lines(capsys)
    assert lines[-2].endswith("x") and lines[-1].endswith("y") and "19/20" in lines[-1], lines
