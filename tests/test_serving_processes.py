"""Several server processes on one port (`captcha serve --processes N`), for real on loopback:
health turns SERVING only once every process is warm, a killed process is replaced while the
others answer, SIGTERM drains every process and the server is gone soon after the grace whatever
is still decoding, and `/metrics` sums every process. Plus the start-up refusals of issue #32
(an empty token, a bad TLS file) and the options declared once in `ServeConfig`.

Slow paths are held by construction (a file gate before a worker loads, a decode that sleeps far
longer than any bound here); no test asserts a wall-clock time.
"""

from __future__ import annotations

import argparse
import functools
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from serving_hooks import held_worker

from captcha.options import config_from_args, dest_of
from serving._proto.captcha.v1 import recognizer_pb2 as pb
from serving._proto.captcha.v1 import recognizer_pb2_grpc as pb_grpc
from serving.config import ServeConfig
from serving.metrics import SummedMetrics
from serving.server import CaptchaServer
from serving.supervisor import Supervisor

WAIT_S = 60  # upper bound for waiting on a condition (never an expected duration)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    """A model trained for one short epoch (what it reads does not matter here), and its images."""
    from captcha.export import export_onnx
    from captcha.generate import GeneratorConfig, generate_dataset
    from captcha.train import TrainConfig, fit

    tmp = tmp_path_factory.mktemp("procs")
    generate_dataset(tmp / "data", GeneratorConfig(splits={"train": 32, "val": 8, "test": 4}, seed=13))
    fit(TrainConfig(data=str(tmp / "data"), out=str(tmp / "run"), epochs=1, cache_dir=str(tmp / "cache")), log=lambda s: None)
    export_onnx(tmp / "run", tmp / "model.onnx", verify_images=0, log=lambda s: None)
    return tmp


@pytest.fixture(scope="module")
def onnx(artifacts) -> str:
    return str(artifacts / "model.onnx")


@pytest.fixture(scope="module")
def image(artifacts) -> bytes:
    return sorted((artifacts / "data" / "test").glob("*.png"))[0].read_bytes()


def _until(condition, what: str, timeout: float = WAIT_S):
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _fresh_channel(port: int) -> grpc.Channel:
    """A channel with a connection of its own (the kernel picks a process per connection)."""
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])


def _health(port: int) -> int | None:
    """The health status a new connection gets, or None when nothing answers."""
    with _fresh_channel(port) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status
        except grpc.RpcError:
            return None


def _recognize(port: int, image: bytes) -> str:
    with _fresh_channel(port) as channel:
        return pb_grpc.RecognizerStub(channel).Recognize(pb.RecognizeRequest(image=image), timeout=30, wait_for_ready=True).text


def _per_process(metrics: SummedMetrics, tmp: Path, name: str, **labels) -> dict[int, float]:
    """pid -> that process's own value of a sample (its files alone, summed by the same collector)."""
    files = list(Path(metrics.directory).glob("*.db"))
    out = {}
    for pid in {int(f.stem.rsplit("_", 1)[1]) for f in files}:
        folder = tmp / f"pid-{pid}-{time.monotonic_ns()}"
        folder.mkdir()
        for f in files:
            if f.stem.endswith(f"_{pid}"):
                shutil.copy(f, folder)
        out[pid] = SummedMetrics(folder).value(name, **labels)
    return out


def _config(onnx: str, **overrides) -> ServeConfig:
    return ServeConfig(models=[onnx], host="127.0.0.1", port=0, processes=2, grace_s=1, **overrides)


# ------------------------------------------------------------------------ health and restarts


def test_health_turns_serving_only_once_every_process_is_warm(onnx, image, tmp_path) -> None:
    (tmp_path / "hold-1").touch()  # process 1 waits before it loads anything
    srv = Supervisor(_config(onnx), worker_main=functools.partial(held_worker, str(tmp_path)))
    errors: list[BaseException] = []
    starting = threading.Thread(target=lambda: _catch(srv.start, errors))
    starting.start()
    try:
        first = _until(lambda: _health(srv.port) is not None and "answered", "process 0 to answer")
        assert first and srv.ready_slots() == [0]
        # every new connection lands on process 0, warm and answering calls, yet health says NOT_SERVING
        assert {_health(srv.port) for _ in range(6)} == {health_pb2.HealthCheckResponse.NOT_SERVING}
        assert _recognize(srv.port, image)
        (tmp_path / "hold-1").unlink()
        starting.join(WAIT_S)
        assert not starting.is_alive() and not errors
        assert srv.ready_slots() == [0, 1]
        assert {_health(srv.port) for _ in range(6)} == {health_pb2.HealthCheckResponse.SERVING}
    finally:
        (tmp_path / "hold-1").unlink(missing_ok=True)
        starting.join(WAIT_S)
        srv.stop(0).wait(30)


def _catch(fn, errors: list) -> None:
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
        errors.append(exc)


def test_a_killed_process_is_replaced_while_the_others_answer(onnx, image, tmp_path, caplog) -> None:
    srv = Supervisor(_config(onnx), worker_main=functools.partial(held_worker, str(tmp_path))).start()
    try:
        before = srv.worker_pids()
        (tmp_path / "hold-0").touch()  # the replacement for process 0 waits for the test
        os.kill(before[0], signal.SIGKILL)
        replacement = _until(lambda: srv.worker_pids().get(0) not in (None, before[0]) and srv.worker_pids()[0], "a replacement")
        texts = [_recognize(srv.port, image) for _ in range(8)]  # new connections, while process 0 is not ready
        assert all(texts) and srv.ready_slots() == [1]
        assert _health(srv.port) == health_pb2.HealthCheckResponse.SERVING
        (tmp_path / "hold-0").unlink()
        _until(lambda: srv.ready_slots() == [0, 1], "the replacement to be ready")
        assert f"server process 0 (pid {before[0]}) exited with signal SIGKILL; starting another" in caplog.text
        # the replacement answers too: new connections until one of them lands on it
        _until(lambda: _recognize(srv.port, image) and _per_process(srv.metrics, tmp_path, "captcha_requests_total",
                                                                    method="Recognize", code="OK").get(replacement), "a call on the replacement")
        assert srv.worker_pids() == {0: replacement, 1: before[1]}
    finally:
        (tmp_path / "hold-0").unlink(missing_ok=True)
        srv.stop(0).wait(30)


def test_metrics_sum_every_process(onnx, image, tmp_path) -> None:
    srv = Supervisor(_config(onnx, metrics_port=0)).start()
    try:
        calls = 0

        def both_served() -> bool:
            nonlocal calls
            _recognize(srv.port, image)
            calls += 1
            per = _per_process(srv.metrics, tmp_path, "captcha_requests_total", method="Recognize", code="OK")
            return calls >= 4 and sum(v > 0 for v in per.values()) == 2

        _until(both_served, "calls on both processes")
        per = _per_process(srv.metrics, tmp_path, "captcha_images_total", model="model")
        text = urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics", timeout=10).read().decode()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}
        assert samples[("captcha_requests_total", (("code", "OK"), ("method", "Recognize")))] == calls
        assert samples[("captcha_images_total", (("model", "model"),))] == calls == sum(per.values())
        assert samples[("captcha_request_latency_seconds_count", (("method", "Recognize"),))] == calls
        assert ("captcha_queue_depth", (("model", "model"),)) in samples
    finally:
        srv.stop(0).wait(30)


def test_old_connections_move_to_other_processes_with_max_connection_age(onnx, image, tmp_path) -> None:
    """One long-lived client channel reaches one process; with --max-connection-age it reconnects
    now and then (no call fails) and so reaches the others too."""
    srv = Supervisor(_config(onnx, max_connection_age_s=0.2)).start()
    try:
        with _fresh_channel(srv.port) as channel:
            stub = pb_grpc.RecognizerStub(channel)

            def both_served() -> bool:
                assert stub.Recognize(pb.RecognizeRequest(image=image), timeout=30).text
                per = _per_process(srv.metrics, tmp_path, "captcha_requests_total", method="Recognize", code="OK")
                return sum(v > 0 for v in per.values()) == 2

            _until(both_served, "calls of one channel on both processes")
        assert srv.metrics.value("captcha_requests_total", method="Recognize", code="OK") > 0
    finally:
        srv.stop(0).wait(30)


# ------------------------------------------------------------------------- SIGTERM, for real


def _serve(args: list[str], env: dict | None = None, script: Path | None = None) -> tuple[subprocess.Popen, int]:
    """`captcha serve ARGS` (or `python SCRIPT serve ARGS`) in a subprocess; returns it and its port."""
    command = [sys.executable, str(script)] if script else [sys.executable, "-m", "captcha"]
    proc = subprocess.Popen([*command, "serve", *args, "--host", "127.0.0.1", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        banner = lines.get(timeout=WAIT_S)
    except queue.Empty:
        proc.kill()
        raise AssertionError(f"the server did not start: {proc.stderr.read() if proc.poll() is not None else ''}") from None
    return proc, int(banner.split("127.0.0.1:")[1].split()[0])


def _workers(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


def _connections(pids: list[int], port: int) -> dict[int, int]:
    """pid -> established TCP connections it holds on `port` (from /proc)."""
    owner = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                owner[target[8:-1]] = pid
    counts = dict.fromkeys(pids, 0)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] in owner:
                counts[owner[fields[9]]] += 1
    return counts


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_drains_every_process(onnx, image) -> None:
    proc, port = _serve([onnx, "--processes", "2", "--grace", "10"])
    try:
        workers = _until(lambda: len(_workers(proc.pid)) == 2 and _workers(proc.pid), "two workers")
        streams: list[tuple[grpc.Channel, queue.Queue, object]] = []

        def open_stream() -> bool:
            channel, gate = _fresh_channel(port), queue.Queue()

            def feed():
                yield pb.RecognizeRequest(image=image, id="0")
                second = gate.get(timeout=WAIT_S)  # sent only after SIGTERM
                if second is not None:
                    yield second

            replies = pb_grpc.RecognizerStub(channel).RecognizeStream(feed(), timeout=WAIT_S)
            assert next(replies).text  # established and in flight on one of the processes
            streams.append((channel, gate, replies))
            return len(streams) >= 2 and all(_connections(workers, port).values())

        _until(open_stream, "calls in flight on both processes")
        proc.send_signal(signal.SIGTERM)
        for _channel, gate, _replies in streams:
            gate.put(pb.RecognizeRequest(image=image, id="1"))
        for channel, _gate, replies in streams:
            last = next(replies)
            assert last.id == "1" and last.text  # finished during the drain, on every process
            assert list(replies) == []
            channel.close()
        assert proc.wait(WAIT_S) == 0
        assert all(_gone(w) for w in workers)
    finally:
        proc.kill()
        proc.wait(WAIT_S)


# A server whose every image decode is slow by construction: it sleeps far longer than the test
# waits. Spawned workers re-import this file as `__mp_main__`, so they are slowed down too.
SLOW_SERVE = '''
import os, sys, time
from pathlib import Path

import captcha.imageio as imageio

_decode = imageio.decode_image


def slow_decode(data, source="<bytes>", *args, **kwargs):
    Path(os.environ["SLOW_DECODE_STARTED"]).touch()
    time.sleep(600)
    return _decode(data, source, *args, **kwargs)


imageio.decode_image = slow_decode

if __name__ == "__main__":
    from captcha.cli import main

    sys.exit(main(sys.argv[1:]))
'''


@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_ends_the_server_soon_after_the_grace_whatever_is_decoding(onnx, image, tmp_path, processes) -> None:
    """Issue #32: callers got UNAVAILABLE on time, but Python then waited for the decode threads."""
    script, started = tmp_path / "slow_serve.py", tmp_path / "decoding"
    script.write_text(SLOW_SERVE)
    proc, port = _serve([onnx, "--processes", str(processes), "--grace", "1"], {"SLOW_DECODE_STARTED": str(started)}, script)
    try:
        workers = _workers(proc.pid) if processes > 1 else []
        with _fresh_channel(port) as channel:
            call = pb_grpc.RecognizerStub(channel).RecognizeBatch.future(pb.RecognizeBatchRequest(images=[image, image]), timeout=WAIT_S)
            _until(started.exists, "the slow decode to start")
            proc.send_signal(signal.SIGTERM)
            proc.wait(WAIT_S)  # the decode sleeps 600 s: a server that waits for it never gets here
            assert call.exception(WAIT_S).code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert all(_gone(w) for w in workers)
    finally:
        proc.kill()
        proc.wait(WAIT_S)


# ------------------------------------------------------------------------- refused at start


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_an_empty_token_is_refused_at_start(onnx, how) -> None:
    """Issue #32: `--token ""` (or CAPTCHA_TOKEN set but empty) served every call unauthenticated."""
    args, env = ([onnx, "--token", ""], {}) if how == "flag" else ([onnx], {"CAPTCHA_TOKEN": ""})
    out = subprocess.run([sys.executable, "-m", "captcha", "serve", *args, "--host", "127.0.0.1", "--port", "0", "--processes", "1"],
                         capture_output=True, text=True, timeout=WAIT_S, env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and "token is empty" in out.stderr
    with pytest.raises(ValueError, match="token is empty"):
        CaptchaServer(ServeConfig(models=[onnx], host="127.0.0.1", port=0, token=" "))


def _pem_files(folder: Path) -> dict[str, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to write certificates")
    for name in ("a", "b"):
        subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                        "-keyout", str(folder / f"{name}.key"), "-out", str(folder / f"{name}.crt"), "-days", "2", "-subj", "/CN=localhost"],
                       check=True, capture_output=True, timeout=60)
    subprocess.run([openssl, "ec", "-in", str(folder / "a.key"), "-aes256", "-passout", "pass:x", "-out", str(folder / "enc.key")],
                   check=True, capture_output=True, timeout=60)
    (folder / "garbage.crt").write_text("not a certificate\n")
    return {p.name: p for p in folder.iterdir()}


@pytest.mark.parametrize("cert, key, message", [
    ("garbage.crt", "a.key", "--tls-cert {cert}: no PEM certificate in it"),
    ("a.crt", "b.key", "--tls-key {key} does not belong to the certificate in --tls-cert {cert}"),
    ("a.crt", "enc.key", "--tls-key {key}: the key is encrypted"),
    ("a.crt", "a.crt", "--tls-key {key}: no PEM private key in it"),
    ("missing.crt", "a.key", "--tls-cert {cert}: cannot read the file"),
])
def test_a_bad_tls_file_is_named_not_a_failed_bind(onnx, tmp_path, capsys, cert, key, message) -> None:
    """Issue #32: a bad certificate or key said "Failed to bind to address"."""
    from captcha.cli import main

    files = _pem_files(tmp_path)
    cert_path, key_path = str(files.get(cert, tmp_path / cert)), str(files.get(key, tmp_path / key))
    for processes in ("1", "2"):
        assert main(["serve", onnx, "--host", "127.0.0.1", "--port", "0", "--processes", processes, "--tls-cert", cert_path, "--tls-key", key_path]) == 2
        err = capsys.readouterr().err
        assert message.format(cert=cert_path, key=key_path) in err and "bind" not in err


def test_a_taken_port_is_one_error_line_with_several_processes(onnx, capsys) -> None:
    import socket

    from captcha.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", onnx, "--host", "127.0.0.1", "--port", str(port), "--processes", "2"]) == 2
    assert f"error: cannot listen on 127.0.0.1:{port}:" in capsys.readouterr().err


# ------------------------------------------------------------------------- options, declared once


def test_every_serve_flag_is_a_config_field_with_its_default() -> None:
    from dataclasses import fields

    from serving import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    serve = parser._subparsers._group_actions[0].choices["serve"]
    help_text = serve.format_help()
    flags = {a.dest: a.option_strings for a in serve._actions}
    for f in fields(ServeConfig):
        assert dest_of(f) in flags and f.metadata["help"].split("(")[0].strip()[:30] in " ".join(help_text.split())
    assert config_from_args(parser.parse_args(["serve", "m.onnx"]), ServeConfig) == ServeConfig(models=["m.onnx"])
    argv = ["serve", "a.onnx", "b=c.onnx", "--grace", "3", "--processes", "4", "--metrics-port", "9", "--device", "cpu"]
    given = config_from_args(parser.parse_args(argv), ServeConfig)
    assert given == ServeConfig(models=["a.onnx", "b=c.onnx"], grace_s=3.0, processes=4, metrics_port=9, device="cpu")


def test_automatic_processes_and_threads_share_the_cpus() -> None:
    auto = ServeConfig(models=["m"])
    assert (auto.resolved(cpus=16).processes, auto.resolved(cpus=16).ort_threads, auto.resolved(cpus=16).workers) == (16, 1, 1)
    assert auto.resolved(cpus=64).processes == 32 and auto.resolved(cpus=64).ort_threads == 2
    one = ServeConfig(models=["m"], processes=1).resolved(cpus=16)
    assert (one.ort_threads, one.workers) == (15, 16)  # one process: the model leaves a core to the event loop
    four = ServeConfig(models=["m"], processes=4, ort_threads=3).resolved(cpus=16)
    assert (four.processes, four.ort_threads, four.workers) == (4, 3, 4)
    for bad, flag in (({"processes": -1}, "--processes"), ({"port": 70000}, "--port"), ({"ort_threads": -2}, "--ort-threads")):
        with pytest.raises(ValueError, match=flag):
            ServeConfig(models=["m"], **bad).check()
