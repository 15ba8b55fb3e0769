"""The serving benchmarks: serve_bench.py finds ddddocr without touching the project's environment;
serve_compare.py and the GPU machine's script (serve_gpu.sh, here on the CPU with small counts)
run real servers and print their tables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> str:
    """A model trained for one short epoch: the benchmarks measure speed, not accuracy."""
    from captcha.export import export_onnx
    from captcha.generate import GeneratorConfig, generate_dataset
    from captcha.train import TrainConfig, fit

    tmp = tmp_path_factory.mktemp("bench")
    generate_dataset(tmp / "data", GeneratorConfig(splits={"train": 32, "val": 8}, seed=17))
    fit(TrainConfig(data=str(tmp / "data"), out=str(tmp / "run"), epochs=1, cache_dir=str(tmp / "cache")), log=lambda s: None)
    return str(export_onnx(tmp / "run", tmp / "model.onnx", verify_images=0, log=lambda s: None, tta=1).path)


@pytest.fixture(scope="module")
def bench(benchmark_script):
    return benchmark_script("serve_bench")


def test_default_venv_is_a_user_cache_not_a_fixed_path(bench, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert bench.default_ddddocr_venv() == tmp_path / "captchakit" / "ddddocr-venv"
    args = ["--help"]
    with pytest.raises(SystemExit):
        bench.main(args)


def test_an_interpreter_without_ddddocr_is_never_installed_into(bench, monkeypatch, tmp_path: Path) -> None:
    calls: list[list[str]] = []
    real_run = bench.subprocess.run

    def spy(cmd, *a, **kw):
        calls.append([str(c) for c in cmd])
        return real_run(cmd, *a, **kw)

    monkeypatch.setattr(bench.subprocess, "run", spy)
    python, reason = bench.ensure_ddddocr(sys.executable, str(tmp_path / "venv"), log=lambda _m: None)
    assert python is None and "cannot import ddddocr" in reason
    assert not any("pip" in c for cmd in calls for c in cmd) and not (tmp_path / "venv").exists()
    assert bench._same_environment(Path(sys.executable))


def test_failed_setup_is_reported_not_raised(bench, monkeypatch, tmp_path: Path) -> None:
    def fail(cmd, *a, **kw):
        if "-m" in cmd and "venv" in cmd:
            raise bench.subprocess.CalledProcessError(1, cmd, output="", stderr="Error: no ensurepip here")
        return bench.subprocess.CompletedProcess(cmd, 1, "", "")

    monkeypatch.setattr(bench.subprocess, "run", fail)
    python, reason = bench.ensure_ddddocr(str(tmp_path / "missing" / "python"), str(tmp_path / "venv"), log=lambda _m: None)
    assert python is None and "venv" in reason and "no ensurepip here" in reason


@pytest.fixture(scope="module")
def compare(benchmark_script):
    return benchmark_script("serve_compare")


def test_compare_variant_syntax(compare, tiny_onnx) -> None:
    assert compare._parse_variant("old=b45321e:--grpc-threads 300") == ("old", "b45321e", ["--grpc-threads", "300"], None)
    assert compare._parse_variant("now=.") == ("now", ".", [], None)
    assert compare._parse_variant(f"int8@{tiny_onnx}=.:--processes 1") == ("int8", ".", ["--processes", "1"], Path(tiny_onnx).resolve())
    for bad in ("no-equals", "=HEAD", "name=", "@m.onnx=."):
        with pytest.raises(Exception, match=r"NAME\[@MODEL.onnx\]=REV"):
            compare._parse_variant(bad)
    with pytest.raises(Exception, match="no such model file"):
        compare._parse_variant("x@/nowhere/m.onnx=.")


def test_compare_runs_a_server_and_prints_a_table(compare, tiny_onnx, capsys) -> None:
    """One round, one short cell, the working tree's server with a flag: a row with a figure."""
    assert compare.main(["--onnx", tiny_onnx, "--variant", "now=.:--max-batch 4 --processes 1", "--cells", "unary:2", "--rounds", "1",
                         "--seconds", "0.5", "--images", "16"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| Recognize |"))
    median = float(row.split("|")[3].split("(")[0])
    assert median > 0 and "Machine:" in out


def test_the_gpu_script_runs_on_the_cpu_and_prints_the_table(tiny_onnx) -> None:
    """benchmarks/serve_gpu.sh as it runs on the GPU machine, with the CPU provider and small counts:
    a row per --processes value and API, the speed-up line and the in-process ceilings."""
    args = ["--device", "cpu", "--processes", "1", "2", "--modes", "unary", "batch", "--concurrency", "2", "--seconds", "0.3",
            "--images", "16", "--onnx", tiny_onnx, "--ceiling-batches", "4", "8", "--clients", "2"]
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "serve_gpu.sh"), *args], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHON": sys.executable})
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in out.stdout.splitlines() if line.startswith("| cpu |")]
    cells = {(r[1].strip(), r[2].split("(")[0].strip()): r for r in rows}
    assert set(cells) == {("1", "Recognize"), ("2", "Recognize"), ("1", "RecognizeBatch"), ("2", "RecognizeBatch")}
    for row in cells.values():
        assert float(row[4]) > 0 and row[7].strip() == "0"  # images/s, errors
    assert "cpu: unary, best over concurrency: --processes 2 answers" in out.stdout
    assert "ORT model only (batch 8)" in out.stdout and "Machine:" in out.stdout
