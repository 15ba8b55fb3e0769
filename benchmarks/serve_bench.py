"""Benchmark the gRPC service against in-process ONNX Runtime and ddddocr on the same images.

    python benchmarks/serve_bench.py [--onnx model.onnx | --run RUN_DIR] [--images 512] [--seconds 4]

Starts `captcha serve` in a subprocess on a loopback port, drives it from this process with the
asyncio gRPC client at each concurrency (unary Recognize, RecognizeBatch of --batch images, and
RecognizeStream with one stream per concurrent client), then measures the in-process ONNX
Runtime ceiling and ddddocr (from its own venv, in a subprocess). Every loop is bounded in count
and time. Prints a Markdown table naming the machine.

ddddocr runs in a separate virtualenv, never in the project's environment: it pulls in the CPU
`onnxruntime` package, which conflicts with `onnxruntime-gpu`. `--ddddocr-python PY` uses that
interpreter; otherwise (or when PY does not exist) the venv at `--ddddocr-venv` (default
~/.cache/captchakit/ddddocr-venv) is used, created with `pip install ddddocr` on first use.
`--no-ddddocr` skips the column; so does a failed install, with the reason printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc
import numpy as np

from serving._proto.captcha.v1 import recognizer_pb2 as pb
from serving._proto.captcha.v1 import recognizer_pb2_grpc as pb_grpc

_DDDDOCR_SCRIPT = r"""
import json, sys, time
import ddddocr
paths = json.load(sys.stdin)
ocr = ddddocr.DdddOcr(show_ad=False)
data = [open(p, "rb").read() for p in paths]
ocr.classification(data[0])
t = time.perf_counter(); texts = [ocr.classification(d) for d in data]; dt = time.perf_counter() - t
print(json.dumps({"texts": texts, "seconds": dt}))
"""


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


async def _drive(address: str, mode: str, concurrency: int, payloads: list[bytes], seconds: float, batch: int, max_images: int) -> dict:
    """Keep `concurrency` calls (or streams) busy for up to `seconds` / `max_images` images."""
    latencies: list[float] = []
    done = 0
    errors = 0
    deadline = time.perf_counter() + seconds
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub = pb_grpc.RecognizerStub(channel)

        async def worker(k: int) -> None:
            nonlocal done, errors
            i = k
            while time.perf_counter() < deadline and done < max_images:
                t = time.perf_counter()
                try:
                    if mode == "unary":
                        await stub.Recognize(pb.RecognizeRequest(image=payloads[i % len(payloads)]), timeout=30)
                        n = 1
                    elif mode == "batch":
                        imgs = [payloads[(i + j) % len(payloads)] for j in range(batch)]
                        await stub.RecognizeBatch(pb.RecognizeBatchRequest(images=imgs), timeout=30)
                        n = batch
                    else:  # one stream per worker, `batch` images per stream, each latency timed
                        call = stub.RecognizeStream(timeout=30)
                        sent: list[float] = []
                        for j in range(batch):
                            sent.append(time.perf_counter())
                            await call.write(pb.RecognizeRequest(image=payloads[(i + j) % len(payloads)], id=str(j)))
                        await call.done_writing()
                        async for reply in call:
                            latencies.append(time.perf_counter() - sent[int(reply.id)])
                        n = batch
                except grpc.aio.AioRpcError:
                    errors += 1
                    n = 0
                if mode != "stream":
                    latencies.append(time.perf_counter() - t)
                done += n
                i += concurrency * max(1, batch if mode != "unary" else 1)

        start = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {"images_per_s": done / elapsed, "p50_ms": _percentile(latencies, 50), "p99_ms": _percentile(latencies, 99), "images": done, "errors": errors}


def _start_server(onnx: Path, port: int, args: argparse.Namespace) -> subprocess.Popen:
    code = (
        "import sys; sys.argv = ['captcha'] + sys.argv[1:]; import argparse, serving.cli as c; "
        "p = argparse.ArgumentParser(); c.register(p.add_subparsers()); a = p.parse_args(); sys.exit(a.func(a))"
    )
    cmd = [sys.executable, "-c", code, "serve", str(onnx), "--host", "127.0.0.1", "--port", str(port),
           "--max-batch", str(args.max_batch), "--max-delay-ms", str(args.max_delay_ms), "--max-queue", "4096",
           "--preprocess-processes", str(args.preprocess_processes), "--ort-threads", str(args.ort_threads)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_serving(address: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    from serving.health_probe import check

    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError("server exited:\n" + (proc.stdout.read() if proc.stdout else ""))
        if check(address, timeout=1):
            return
        time.sleep(0.2)
    raise RuntimeError("server did not become SERVING in time")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ort_ceiling(onnx: Path, payloads: list[bytes], batch: int, seconds: float) -> dict:
    """In-process: model-only images/s at `batch`, and decode+preprocess+model with a thread pool."""
    from serving.model import ServedModel

    model = ServedModel("bench", onnx, "auto")
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        t = time.perf_counter()
        tensors = list(pool.map(model.preprocess, payloads))
        prep_s = time.perf_counter() - t
    x = np.stack(tensors)
    model.run(x[:batch])
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds and n < 200_000:
        for i in range(0, len(x), batch):
            model.run(x[i : i + batch])
        n += len(x)
    run_s = (time.perf_counter() - t) / n
    return {"model_only": 1.0 / run_s, "end_to_end": 1.0 / (run_s + prep_s / len(payloads)), "provider": model.provider}


def default_ddddocr_venv() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "captchakit" / "ddddocr-venv"


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _has_ddddocr(python: Path) -> bool:
    try:
        return subprocess.run([str(python), "-c", "import ddddocr"], check=False, capture_output=True, timeout=120).returncode == 0
    except (subprocess.SubprocessError, OSError):
        return False


def _same_environment(python: Path) -> bool:
    """True when `python` runs in this process's environment (where ddddocr must never go)."""
    try:
        out = subprocess.run([str(python), "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, timeout=60, check=True)
    except (subprocess.SubprocessError, OSError):
        return False
    return Path(out.stdout.strip()).resolve() == Path(sys.prefix).resolve()


def ensure_ddddocr(python: str | None, venv: str | None, log=print) -> tuple[Path | None, str]:
    """An interpreter that can `import ddddocr`, and a note on where it came from (or why there is none).

    `python` given and present: used as it is (nothing is installed into it). Otherwise the venv
    at `venv` (default `default_ddddocr_venv()`) is used, and created with `pip install ddddocr`
    when it has no ddddocr yet. Returns (None, reason) when that fails.
    """
    if python:
        given = Path(python)
        if given.exists():
            if _has_ddddocr(given):
                return given, f"ddddocr from {given}"
            return None, f"{given} cannot import ddddocr (install it there, or leave out --ddddocr-python to use a separate venv)"
        log(f"ddddocr: {given} does not exist; using a separate venv instead")
    root = Path(venv).expanduser() if venv else default_ddddocr_venv()
    target = _venv_python(root)
    if target.exists() and _has_ddddocr(target):
        return target, f"ddddocr from {root}"
    step = f"{sys.executable} -m venv {root}"
    try:
        if not target.exists():
            log(f"ddddocr: creating a virtualenv at {root} (kept out of this environment: ddddocr needs the CPU onnxruntime)")
            root.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, capture_output=True, text=True, timeout=300)
        if _same_environment(target):
            return None, f"{root} is this project's own environment; refusing to install ddddocr into it"
        step = f"{target} -m pip install ddddocr"
        log(f"ddddocr: {step} ...")
        subprocess.run([str(target), "-m", "pip", "install", "--disable-pip-version-check", "-q", "ddddocr"],
                       check=True, capture_output=True, text=True, timeout=900)
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip().splitlines()
        return None, f"could not set up ddddocr: `{step}` failed ({detail[-1] if detail else f'exit {exc.returncode}'})"
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"could not set up ddddocr: `{step}` failed ({exc})"
    if not _has_ddddocr(target):
        return None, f"ddddocr was installed into {root} but does not import"
    return target, f"ddddocr from {root} (installed now)"


def ddddocr_bench(venv_python: Path, paths: list[Path], labels: list[str], timeout: float) -> dict | None:
    try:
        out = subprocess.run([str(venv_python), "-c", _DDDDOCR_SCRIPT], input=json.dumps([str(p) for p in paths]),
                             capture_output=True, text=True, timeout=timeout, check=True)
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"ddddocr failed: {exc}", file=sys.stderr)
        return None
    result = json.loads(out.stdout.strip().splitlines()[-1])
    accuracy = sum(t.lower() == l.lower() for t, l in zip(result["texts"], labels)) / len(labels)
    return {"images_per_s": len(paths) / result["seconds"], "accuracy": accuracy}


def _prepare(args: argparse.Namespace, tmp: Path) -> tuple[Path, list[Path], list[str], str | None]:
    from captcha.export import export_onnx
    from captcha.generate import GeneratorConfig, generate_dataset

    run = args.run
    if args.onnx:
        onnx = Path(args.onnx)
    else:
        if not run:
            from captcha.train import TrainConfig, fit

            generate_dataset(tmp / "train-data", GeneratorConfig(splits={"train": 200, "val": 50}))
            fit(TrainConfig(data=str(tmp / "train-data"), out=str(tmp / "run"), epochs=2, cache_dir=str(tmp / "cache")), log=lambda s: None)
            run = str(tmp / "run")
        onnx = export_onnx(run, tmp / "model.onnx", verify_images=8, log=lambda s: None).path
    generate_dataset(tmp / "bench", GeneratorConfig(splits={"test": args.images}, seed=7))
    paths = sorted((tmp / "bench" / "test").glob("*.png"))
    return onnx, paths, [p.stem.split("_", 1)[0] for p in paths], run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", help="exported model (default: export --run, or train a tiny one)")
    parser.add_argument("--run", help="run directory to export and to measure accuracy with")
    parser.add_argument("--images", type=int, default=512, help="generated CAPTCHA PNGs to use")
    parser.add_argument("--seconds", type=float, default=4.0, help="time bound per table cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--modes", nargs="+", default=["unary", "batch", "stream"], choices=["unary", "batch", "stream"])
    parser.add_argument("--batch", type=int, default=16, help="images per RecognizeBatch call / per stream")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-delay-ms", type=float, default=2.0)
    parser.add_argument("--preprocess-processes", type=int, default=0, help="server's --preprocess-processes (default 0: threads)")
    parser.add_argument("--ort-threads", type=int, default=0, help="server's --ort-threads (default 0: its own default)")
    parser.add_argument("--ddddocr-python", help="interpreter that has ddddocr (e.g. /work/ddddocr-venv/bin/python); "
                        "default, or when it does not exist: the --ddddocr-venv one")
    parser.add_argument("--ddddocr-venv", help=f"venv for ddddocr, created with `pip install ddddocr` when missing (default {default_ddddocr_venv()})")
    parser.add_argument("--no-ddddocr", action="store_true", help="skip the ddddocr comparison")
    args = parser.parse_args(argv)

    dddd_python, dddd_note = (None, "skipped (--no-ddddocr)") if args.no_ddddocr else ensure_ddddocr(args.ddddocr_python, args.ddddocr_venv, log=lambda m: print(m, file=sys.stderr))
    if dddd_python is None:
        print(f"ddddocr: {dddd_note}; its column is left out", file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        onnx, paths, labels, run = _prepare(args, tmp)
        payloads = [p.read_bytes() for p in paths]
        port = _free_port()
        address = f"127.0.0.1:{port}"
        proc = _start_server(onnx, port, args)
        rows = []
        try:
            _wait_serving(address, proc)
            for mode in args.modes:
                for c in args.concurrency:
                    r = asyncio.run(_drive(address, mode, c, payloads, args.seconds, args.batch, max_images=200_000))
                    rows.append((mode, c, r))
                    print(f"{mode:6s} c={c:<4d} {r['images_per_s']:8.1f} img/s  p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  errors {r['errors']}", file=sys.stderr)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        ceiling = ort_ceiling(onnx, payloads, args.max_batch, args.seconds)
        ours_acc = None
        if run:
            from captcha.inference import Predictor

            texts = [p.text for p in Predictor.from_run(run, "cpu").predict_paths(paths)]
            ours_acc = sum(t == l for t, l in zip(texts, labels)) / len(labels)
        dddd = ddddocr_bench(dddd_python, paths, labels, timeout=600) if dddd_python else None

    print(f"\nMachine: {machine()}; ONNX Runtime provider: {ceiling['provider']}; {len(paths)} generated CAPTCHA PNGs; "
          f"server --max-batch {args.max_batch} --max-delay-ms {args.max_delay_ms:g} --preprocess-processes {args.preprocess_processes}; batch/stream calls carry {args.batch} images\n")
    print("| API | concurrency | images/s | p50 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, c, r in rows:
        name = {"unary": "Recognize (unary)", "batch": f"RecognizeBatch ({args.batch}/call)", "stream": f"RecognizeStream ({args.batch}/stream)"}[mode]
        print(f"| {name} | {c} | {r['images_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} |")
    print(f"| in-process ORT, model only (batch {args.max_batch}) | - | {ceiling['model_only']:.0f} | | | |")
    print(f"| in-process ORT, decode+preprocess+model | - | {ceiling['end_to_end']:.0f} | | | |")
    acc = f"{ours_acc * 100:.1f}%" if ours_acc is not None else "n/a"
    print(f"\nAccuracy on these images: captchakit model {acc}")
    if dddd:
        print(f"ddddocr (pretrained, 1 process, sequential; {dddd_note}): {dddd['images_per_s']:.0f} images/s, "
              f"whole-string accuracy {dddd['accuracy'] * 100:.1f}%")
    else:
        print(f"ddddocr: not measured ({dddd_note if dddd_python is None else 'its run failed, see above'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
