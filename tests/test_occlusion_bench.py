"""benchmarks/occlusion.py: a style's test split drawn again without its noise curves, read by a run."""

from __future__ import annotations

import cv2
import numpy as np
import pytest


@pytest.fixture(scope="module")
def occlusion(benchmark_script):
    return benchmark_script("occlusion")


def test_leaving_the_curves_out_changes_only_the_curves(occlusion, tmp_path):
    """The same labels and the same pixels away from the curves: the curves take their random
    numbers before they are painted, so nothing drawn after them moves."""
    from captcha.generate import GeneratorConfig, generate_dataset

    config = GeneratorConfig(alphabet=occlusion.ALPHABET_36, styles=("eval-thin",), seed=5, splits={"train": 0, "val": 0, "test": 6})
    generate_dataset(tmp_path / "drawn", config)
    with occlusion.curves_drawn_by(occlusion.VARIANTS["no curves"]):
        generate_dataset(tmp_path / "bare", config)
    assert cv2.polylines is occlusion._polylines  # put back after the block
    names = sorted(p.name for p in (tmp_path / "drawn" / "test").glob("*.png"))
    assert names == sorted(p.name for p in (tmp_path / "bare" / "test").glob("*.png")) and len(names) == 6
    for name in names:
        drawn, bare = (cv2.imread(str(tmp_path / d / "test" / name)).astype(int) for d in ("drawn", "bare"))
        changed = np.abs(drawn - bare).max(axis=2) > 0
        assert 0.01 < changed.mean() < 0.4, name  # a curve's worth of pixels, not a different image


def test_the_table_reads_both_sets_with_the_run(occlusion, tmp_path, capsys):
    from captcha.generate import GeneratorConfig, generate_dataset
    from captcha.train import TrainConfig, fit

    data = tmp_path / "data"
    generate_dataset(data, GeneratorConfig(alphabet=occlusion.ALPHABET_36, styles=("eval-thin",), seed=9, splits={"train": 40, "val": 8}))
    fit(TrainConfig(data=str(data), out=str(tmp_path / "run"), epochs=1, cache_dir=str(tmp_path / "cache"), alphabet=occlusion.ALPHABET_36),
        log=lambda s: None)
    assert occlusion.main(["--run", str(tmp_path / "run"), "--test", "8", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| as drawn |") or line.startswith("| no curves |")]
    assert len(rows) == 2 and all(line.split("|")[2].strip().endswith("%") for line in rows)
    assert "eval-thin test split, 8 images" in out
