"""Soak the gRPC server with good, hostile and deadline-bound calls; print what a regression moves.

    python benchmarks/soak.py [--onnx model.onnx | --run RUN_DIR] [--calls 2000] [--concurrency 16] [--workers 0]

Starts `captcha serve` in a subprocess on a loopback port, then sends a fixed number of calls
from `--concurrency` asyncio clients: first good calls only (the baseline), then the same number
drawn (seeded) from a fixed mix of good calls, hostile ones and calls whose deadline is too short
to be met. Hostile kinds: the hand-made files of tests/hostile, a real 16-bit image just over the
decoded-bytes limit and one well under it, junk bytes, KServe raw tensors of a million empty
items, RecognizeBatch calls of a million empty images, 20,000-character model names, and
malformed KServe requests. Prints a Markdown table
naming the machine: per kind, the calls and the status codes they ended with; the p50 and p99
of the good Recognize calls in each phase; and the server's resident memory (at start, peak,
and at the end), read from /proc. Not a test: every loop is bounded by --calls and
--max-seconds, and traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib.util
import os
import random
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from serving._proto.captcha.v1 import recognizer_pb2 as pb  # noqa: E402
from serving._proto.captcha.v1 import recognizer_pb2_grpc as pb_grpc  # noqa: E402
from serving._proto.inference import grpc_service_pb2 as kpb  # noqa: E402
from serving._proto.inference import grpc_service_pb2_grpc as kpb_grpc  # noqa: E402

# Share of each kind of call in the mixed phase (the baseline phase sends good_unary only).
MIX = {
    "good_unary": 50, "good_batch": 10, "deadline": 10, "hostile_file": 8, "junk": 5, "deep_over_limit": 3,
    "deep_under_limit": 2, "kserve_million_empty": 2, "batch_million_empty": 2, "long_model_name": 3, "kserve_malformed": 5,
}
DEADLINE_S = 0.002  # the too-short deadline of "deadline" calls
TIMEOUT_S = 60.0  # every other call's deadline


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _machine() -> str:
    return _load(ROOT / "benchmarks" / "_machine.py", "bench_machine").describe()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in bytes; empty where /proc is not there."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {key: int(value) * 1024 for key, value in re.findall(r"(VmRSS|VmHWM):\s+(\d+) kB", status)}


def _prepare_model(args: argparse.Namespace, tmp: Path) -> Path:
    """The ONNX model to serve: --onnx, or --run exported, or a tiny run trained here."""
    if args.onnx:
        return Path(args.onnx)
    from captcha.export import export_onnx

    run = args.run
    if not run:
        from captcha.generate import GeneratorConfig, generate_dataset
        from captcha.train import TrainConfig, fit

        generate_dataset(tmp / "train-data", GeneratorConfig(splits={"train": 200, "val": 50}))
        fit(TrainConfig(data=str(tmp / "train-data"), out=str(tmp / "run"), epochs=1, cache_dir=str(tmp / "cache")), log=lambda s: None)
        run = str(tmp / "run")
    return export_onnx(run, tmp / "model.onnx", verify_images=0, log=lambda s: None).path


def _good_images(tmp: Path, count: int) -> list[bytes]:
    from captcha.generate import GeneratorConfig, generate_dataset

    generate_dataset(tmp / "soak", GeneratorConfig(splits={"test": count}, seed=7))
    return [p.read_bytes() for p in sorted((tmp / "soak" / "test").glob("*.png"))]


def _hostile_payloads() -> dict[str, list[bytes]]:
    hostile = _load(ROOT / "tests" / "hostile" / "make_hostile.py", "make_hostile")
    return {
        "hostile_file": [case.make() for case in hostile.HOSTILE.values()],
        "deep_over_limit": [hostile.LARGE["rgba16_4500x4500.png"].make()],
        "deep_under_limit": [hostile.LARGE["rgba16_2000x2000.png"].make()],
    }


def _start_server(onnx: Path, port: int, args: argparse.Namespace) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "captcha", "serve", str(onnx), "--host", "127.0.0.1", "--port", str(port),
           "--workers", str(args.workers), "--max-message-mb", "4"]
    return subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_serving(address: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    from serving.health_probe import check

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError("server exited:\n" + (proc.stdout.read() if proc.stdout else ""))
        if check(address, timeout=1):
            return
        time.sleep(0.2)
    raise RuntimeError(f"server did not become SERVING within {timeout:g} s")


class Calls:
    """One coroutine per kind of call; each returns the status code's name."""

    def __init__(self, channel: grpc.aio.Channel, good: list[bytes], hostile: dict[str, list[bytes]], rng: random.Random):
        self.recognizer = pb_grpc.RecognizerStub(channel)
        self.kserve = kpb_grpc.GRPCInferenceServiceStub(channel)
        self.good, self.hostile, self.rng = good, hostile, rng
        self.million_empty = struct.pack("<I", 0) * 1_000_000  # 4,000,000 bytes: within --max-message-mb 4
        self.million_images = pb.RecognizeBatchRequest(images=[b""] * 1_000_000)  # 2 MB

    async def _code(self, call) -> str:
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        return "OK"

    def _recognize(self, image: bytes, model: str = "", timeout: float = TIMEOUT_S):
        return self.recognizer.Recognize(pb.RecognizeRequest(image=image, model=model), timeout=timeout)

    def _infer(self, tensor, raw: list[bytes]):
        return self.kserve.ModelInfer(kpb.ModelInferRequest(model_name="", inputs=[tensor], raw_input_contents=raw), timeout=TIMEOUT_S)

    async def run(self, kind: str) -> str:
        rng, tensor = self.rng, kpb.ModelInferRequest.InferInputTensor
        if kind == "good_unary":
            return await self._code(self._recognize(rng.choice(self.good)))
        if kind == "good_batch":
            return await self._code(self.recognizer.RecognizeBatch(pb.RecognizeBatchRequest(images=rng.sample(self.good, 8)), timeout=TIMEOUT_S))
        if kind == "deadline":
            return await self._code(self._recognize(rng.choice(self.good), timeout=DEADLINE_S))
        if kind in self.hostile:
            return await self._code(self._recognize(rng.choice(self.hostile[kind])))
        if kind == "junk":
            return await self._code(self._recognize(rng.randbytes(rng.randint(0, 4096))))
        if kind == "kserve_million_empty":
            return await self._code(self._infer(tensor(name="image", datatype="BYTES", shape=[1_000_000]), [self.million_empty]))
        if kind == "batch_million_empty":
            return await self._code(self.recognizer.RecognizeBatch(self.million_images, timeout=TIMEOUT_S))
        if kind == "long_model_name":
            return await self._code(self._recognize(rng.choice(self.good), model="m" * 20_000))
        image = rng.choice(self.good)  # kserve_malformed: a shape Triton refuses
        raw = struct.pack("<I", len(image)) + image
        return await self._code(self._infer(tensor(name="image", datatype="BYTES", shape=rng.choice([[-1, -1], [1, 2], []])), [raw]))


async def _phase(address: str, kinds: list[str], concurrency: int, calls: Calls, max_seconds: float) -> dict:
    """Send the calls of `kinds` (in order) from `concurrency` clients; codes per kind, good latencies."""
    codes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    latencies: list[float] = []
    queue = list(reversed(kinds))
    deadline = time.monotonic() + max_seconds

    async def client() -> None:
        while queue and time.monotonic() < deadline:
            kind = queue.pop()
            started = time.perf_counter()
            code = await calls.run(kind)
            if kind == "good_unary" and code == "OK":
                latencies.append(time.perf_counter() - started)
            codes[kind][code] += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return {"codes": codes, "latencies": latencies, "unsent": len(queue)}


async def _soak(address: str, pid: int, args: argparse.Namespace, good: list[bytes], hostile: dict[str, list[bytes]]) -> list[dict]:
    """The good-only phase, then the mixed one; each with the server's memory after it."""
    rng = random.Random(args.seed)
    mixed = rng.choices(list(MIX), weights=list(MIX.values()), k=args.calls)
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    phases = []
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        calls = Calls(channel, good, hostile, rng)
        for kinds in (["good_unary"] * args.calls, mixed):
            phase = await _phase(address, kinds, args.concurrency, calls, args.max_seconds)
            phases.append({**phase, "memory": _memory(pid)})
    return phases


def _ms(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q) * 1000:.1f}" if values else "n/a"


def _report(phases: list[dict], serving: dict[str, int], args: argparse.Namespace) -> str:
    mib = lambda key, m: f"{m[key] / 2**20:.0f}" if key in m else "n/a"  # noqa: E731
    lines = [f"Soak of `captcha serve` ({args.calls} calls a phase, {args.concurrency} clients, --workers {args.workers or 'default'}) "
             f"on {_machine()}", "",
             "| phase | good Recognize p50 ms | p99 ms | calls not sent (time bound) | server RSS after, MiB | server peak RSS, MiB |",
             "|---|---|---|---|---|---|"]
    for name, phase in zip(("good only", "mixed"), phases):
        mem = phase["memory"]
        lines.append(f"| {name} | {_ms(phase['latencies'], 50)} | {_ms(phase['latencies'], 99)} | {phase['unsent']} | {mib('VmRSS', mem)} | {mib('VmHWM', mem)} |")
    lines += ["", f"Server RSS when SERVING: {mib('VmRSS', serving)} MiB.", "",
              "| kind (mixed phase) | calls | status codes |", "|---|---|---|"]
    for kind in MIX:
        counter = phases[1]["codes"].get(kind, collections.Counter())
        lines.append(f"| {kind} | {sum(counter.values())} | {', '.join(f'{c} {n}' for c, n in counter.most_common())} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", help="exported model (default: export --run, or train a tiny one)")
    parser.add_argument("--run", help="run directory to export")
    parser.add_argument("--calls", type=int, default=2000, help="calls in each phase")
    parser.add_argument("--concurrency", type=int, default=16, help="clients sending at once")
    parser.add_argument("--workers", type=int, default=0, help="the server's --workers (default 0: its own default)")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="time bound of each phase")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.calls < 1 or args.concurrency < 1:
        parser.error("--calls and --concurrency must be at least 1")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        onnx = _prepare_model(args, tmp)
        good, hostile = _good_images(tmp, 64), _hostile_payloads()
        port = _free_port()
        proc = _start_server(onnx, port, args)
        try:
            address = f"127.0.0.1:{port}"
            _wait_serving(address, proc)
            serving = _memory(proc.pid)
            phases = asyncio.run(_soak(address, proc.pid, args, good, hostile))
        finally:
            proc.terminate()
            proc.wait(30)
    print(_report(phases, serving, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
