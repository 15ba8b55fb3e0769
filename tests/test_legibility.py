"""benchmarks/legibility.py: a blind reading sheet from accuracy.py's test split, and its score."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import cv2
import pytest


@pytest.fixture(scope="module")
def legibility(benchmark_script):
    return benchmark_script("legibility")


def test_score_counts_whole_strings_and_characters(legibility):
    assert legibility.score(["ab12", "cd34"], ["ab12", "cd35"]) == (0.5, 7 / 8)
    assert legibility.score(["ab12"], ["ab"]) == (0.0, 0.5)  # a short reading misses the rest
    with pytest.raises(ValueError, match="1 readings for 2 images"):
        legibility.score(["ab12", "cd34"], ["ab12"])


def test_sheet_then_score_with_a_model_beside_the_reader(legibility, trained_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "sheet"
    key = legibility.make_sheet("eval-plain", 6, seed=1, out=out)
    assert [n for n, _, _ in key] == list(range(6))
    assert cv2.imread(str(out / "sheet.png")) is not None and cv2.imread(str(out / "study.png")) is not None
    with open(out / "key.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all((out / r["file"]).exists() and Path(r["file"]).name.startswith(r["label"] + "_") for r in rows)
    # The sheet's images are benchmarks/accuracy.py's test images: same seed, same split stream.
    assert all(len(r["label"]) == 4 and set(r["label"]) <= set(legibility.ALPHABET_36) for r in rows)

    answers = tmp_path / "answers.txt"
    answers.write_text(" ".join([rows[0]["label"]] + ["????"] * 5))
    monkeypatch.setattr(sys, "argv", ["legibility.py", "score", str(out / "key.csv"), str(answers), "--run", str(trained_run)])
    legibility.main()
    printed = capsys.readouterr().out
    assert "| reader | 16.7% | 16.7% |" in printed
    assert f"| model ({trained_run}) |" in printed

    answers.write_text("abcd")
    monkeypatch.setattr(sys, "argv", ["legibility.py", "score", str(out / "key.csv"), str(answers)])
    with pytest.raises(SystemExit, match="1 readings for 6 images"):
        legibility.main()

    monkeypatch.setattr(sys, "argv", ["legibility.py", "score", str(out / "key.csv"), str(tmp_path / "missing.txt")])
    with pytest.raises(SystemExit, match="missing.txt"):
        legibility.main()
