"""The serving benchmarks: serve_bench.py finds ddddocr without touching the project's environment;
serve_compare.py and the GPU machine's script (serve_gpu.sh, here on the CPU with small counts)
run real servers and print their tables."""

from __future__ import annotations

import os
import shutil
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


@pytest.fixture(scope="module")
def h2(benchmark_script):
    benchmark_script("load_generator")  # h2load_generator imports it by its bare name, as the benchmarks run
    return benchmark_script("h2load_generator")


def test_h2load_bodies_are_grpc_messages_the_server_reads(h2) -> None:
    """A body is gRPC's framing (flag, big-endian length) around the request that the Python
    generator would send; a stream is refused (h2load times it as a whole)."""
    from serving._proto.captcha.v1 import recognizer_pb2 as pb

    body = h2.request_body("unary", b"png-bytes", 16)
    assert body[0] == 0 and int.from_bytes(body[1:5], "big") == len(body) - 5
    assert pb.RecognizeRequest.FromString(body[5:]).image == b"png-bytes"
    batch = pb.RecognizeBatchRequest.FromString(h2.request_body("batch", b"x", 3)[5:])
    assert list(batch.images) == [b"x"] * 3
    with pytest.raises(ValueError, match="stream"):
        h2.request_body("stream", b"x", 3)


def test_h2load_errors_come_from_the_servers_metrics_and_latencies_from_its_log(h2, tmp_path: Path, monkeypatch) -> None:
    """gRPC failures travel in trailers h2load does not read: they are the server's non-OK codes,
    less the calls h2load cancels at its deadline; latencies are the log's 2xx rows, in ms."""
    text = "\n".join([
        'captcha_requests_total{code="OK",method="Recognize"} 120.0',
        'captcha_requests_total{code="CANCELLED",method="Recognize"} 8.0',
        'captcha_requests_total{code="RESOURCE_EXHAUSTED",method="Recognize"} 3.0',
        'captcha_requests_total{code="INVALID_ARGUMENT",method="RecognizeBatch"} 1.0',
        'captcha_images_total{model="m"} 500.0',
    ])

    class Reply:
        def read(self) -> bytes:
            return text.encode()

    monkeypatch.setattr(h2.urllib.request, "urlopen", lambda url, timeout: Reply())
    assert h2.failed_calls("127.0.0.1:9") == 4.0
    assert h2.failed_calls(None) is None
    log = tmp_path / "requests.log"
    log.write_text("1700000000000000\t200\t1500\n1700000000000100\t200\t2500\n1700000000000200\t-1\t9000\n")
    assert list(h2._latencies_ms(log)) == [1.5, 2.5]


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load is not installed (apt-get install nghttp2-client)")
def test_serve_bench_with_h2load_measures_a_real_server(bench, tiny_onnx, capsys) -> None:
    """serve_bench.py --load-generator h2load: rows with images/s, no errors, a client far cheaper
    than the server; and it refuses stream calls, which it cannot time per image."""
    assert bench.main(["--onnx", tiny_onnx, "--processes", "1", "--modes", "unary", "batch", "--concurrency", "2", "--seconds", "0.5",
                       "--images", "8", "--no-ddddocr", "--load-generator", "h2load", "--ceiling-batches", "4"]) == 0
    out = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| auto | 1 |")]
    assert {r[2].split("(")[0].strip() for r in rows} == {"Recognize", "RecognizeBatch"}
    for row in rows:
        assert float(row[4]) > 0 and row[7].strip() == "0" and float(row[9]) < float(row[8])  # images/s, errors, client < server CPU
    assert "load from h2load" in out
    with pytest.raises(SystemExit):
        bench.parse_args(["--load-generator", "h2load", "--modes", "unary", "stream"])
