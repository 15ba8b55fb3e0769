"""benchmarks/serve_bench.py finds ddddocr without touching the project's environment."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


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


def test_compare_variant_syntax(compare) -> None:
    assert compare._parse_variant("old=b45321e:--grpc-threads 300") == ("old", "b45321e", ["--grpc-threads", "300"])
    assert compare._parse_variant("now=.") == ("now", ".", [])
    for bad in ("no-equals", "=HEAD", "name="):
        with pytest.raises(Exception, match="NAME=REV"):
            compare._parse_variant(bad)


def test_compare_runs_a_server_and_prints_a_table(compare, capsys) -> None:
    """One round, one short cell, the working tree's server with a flag: a row with a figure."""
    assert compare.main(["--variant", "now=.:--max-batch 4", "--cells", "unary:2", "--rounds", "1", "--seconds", "0.5", "--images", "16"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| Recognize |"))
    median = float(row.split("|")[3].split("(")[0])
    assert median > 0 and "Machine:" in out
