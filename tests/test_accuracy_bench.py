"""benchmarks/accuracy.py's harness: typed `--try` changes, `--workdir` and the label curve (training replaced by a stub)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from captcha.train import RunResult, TrainConfig


@pytest.fixture(scope="module")
def accuracy(benchmark_script):
    return benchmark_script("accuracy")


def test_try_changes_are_typed_as_the_fields_are_declared(accuracy):
    changes = accuracy._parse_changes(["lr=2e-2", "epochs=30", "channels_last=false", "augment=none",
                                       "eval_batch_size=64", "length=4", "init=none", "input_size=75,195"])
    assert changes == {"lr": 0.02, "epochs": 30, "channels_last": False, "augment": "none",
                       "eval_batch_size": 64, "length": 4, "init": "none",  # `int | None` fields read as int
                       "input_size": (75, 195)}  # a tuple field's values are comma-separated
    for bad, message in ((["nope=1"], "not KEY=VALUE"), (["epochs"], "not KEY=VALUE"),
                         (["input_size=1"], "2 comma-separated values"), (["input_size=7,x"], "takes int int values"),
                         (["epochs=x"], "takes int values")):
        with pytest.raises(SystemExit, match=message):
            accuracy._parse_changes(bad)


def _stub_run(accuracy, monkeypatch, argv):
    """Run accuracy.main with drawing and training replaced: returns the (data, config) it used."""
    drawn, configs = [], []

    def draw(out, config):
        Path(out, "train").mkdir(parents=True)
        drawn.append((Path(out), config))

    def train(config, log=print):
        Path(config.out).mkdir(parents=True)
        (Path(config.out) / "best.pt").write_bytes(b"stub")
        configs.append(config)
        return RunResult(Path(config.out), 1, {}, {"per_char_accuracy": [0.5] * 4, "sequence_accuracy": 0.25}, 81_804, 1.0)

    monkeypatch.setattr(accuracy, "generate_dataset", draw)
    monkeypatch.setattr(accuracy, "fit", train)
    monkeypatch.setattr(sys, "argv", ["accuracy.py", *argv])
    accuracy.main()
    return drawn, configs


def test_workdir_keeps_the_drawn_data_and_the_runs(accuracy, monkeypatch, tmp_path, capsys):
    work = tmp_path / "work"
    drawn, configs = _stub_run(accuracy, monkeypatch, ["--styles", "eval-plain", "--recipes", "0", "2",
                                                       "--try", "epochs=30", "--workdir", str(work)])
    assert [d for d, _ in drawn] == [work / "eval-plain"]
    assert drawn[0][1].seed == accuracy.DATA_SEED and drawn[0][1].styles == ("eval-plain",)
    assert [c.epochs for c in configs] == [TrainConfig().epochs, 30]  # recipe 0 is the default, recipe 2 the --try
    for config in configs:
        assert Path(config.data) == work / "eval-plain" and Path(config.out).parent == work
        assert (Path(config.out) / "best.pt").exists()  # kept after the script ends
    assert (work / "eval-plain" / "train").is_dir()
    assert "| eval-plain | 4,000 | default + epochs=30 |" in capsys.readouterr().out


def test_without_workdir_everything_is_removed(accuracy, monkeypatch):
    drawn, configs = _stub_run(accuracy, monkeypatch, ["--styles", "eval-lines", "--recipes", "0"])
    assert len(configs) == 1
    assert not drawn[0][0].exists() and not Path(configs[0].out).exists()


def test_several_label_counts_make_a_learning_curve_with_a_plot(accuracy, monkeypatch, tmp_path, capsys):
    plot = tmp_path / "curve.png"
    drawn, configs = _stub_run(accuracy, monkeypatch, ["--styles", "eval-thin", "--recipes", "0", "--train", "1000", "2000",
                                                       "--workdir", str(tmp_path / "w"), "--plot", str(plot)])
    assert [d.name for d, _ in drawn] == ["eval-thin-1000", "eval-thin-2000"]
    assert [c.splits for _, c in drawn] == [{"train": n, "val": 1000, "test": 3000} for n in (1000, 2000)]
    assert [Path(c.data).name for c in configs] == ["eval-thin-1000", "eval-thin-2000"]
    out = capsys.readouterr().out
    assert "| eval-thin | 1,000 | default recipe |" in out and "| eval-thin | 2,000 | default recipe |" in out
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_plot_from_a_csv_of_earlier_runs_draws_without_training(accuracy, monkeypatch, tmp_path, capsys):
    table = tmp_path / "curve.csv"
    table.write_text("series,labels,whole_string,machine\n"
                     "eval-thin a,1000,77.3,AMD EPYC\neval-thin a,4000,90.9,AMD EPYC\neval-thin b,1000,51.4,Intel Xeon\n")
    plot = tmp_path / "curve.png"
    drawn, configs = _stub_run(accuracy, monkeypatch, ["--plot-from", str(table), "--plot", str(plot)])
    assert drawn == [] and configs == []  # nothing drawn or trained
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert accuracy._read_curve(str(table)) == ([("eval-thin a", 1000, 77.3), ("eval-thin a", 4000, 90.9),
                                                ("eval-thin b", 1000, 51.4)], "AMD EPYC; Intel Xeon")


def test_plot_from_names_the_line_that_is_wrong(accuracy, monkeypatch, tmp_path):
    table = tmp_path / "curve.csv"
    table.write_text("series,labels,whole_string\neval-thin,1000,77.3\neval-thin,lots,80\n")
    with pytest.raises(SystemExit, match="curve.csv line 3 needs series, labels"):
        _stub_run(accuracy, monkeypatch, ["--plot-from", str(table), "--plot", str(tmp_path / "c.png")])
    with pytest.raises(SystemExit):  # --plot-from without --plot is a usage error
        _stub_run(accuracy, monkeypatch, ["--plot-from", str(table)])
