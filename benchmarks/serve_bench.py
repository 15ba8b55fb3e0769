"""Benchmark the gRPC service against in-process ONNX Runtime and ddddocr on the same images.

    python benchmarks/serve_bench.py [--onnx model.onnx | --run RUN_DIR] [--processes 1 2] [--clients 1]
        [--device auto] [--modes unary batch stream] [--concurrency 1 8 64 256] [--images 512] [--seconds 4]

For each `--device` and each `--processes` value, starts `captcha serve` in a subprocess on a
loopback port and drives it with `benchmarks/load_generator.py` from `--clients` processes of
their own (unary Recognize, RecognizeBatch of --batch images, RecognizeStream with --batch images
per stream) at each concurrency, or with `h2load` (`--load-generator h2load`, unary and batch
calls, far less client CPU a call: `benchmarks/h2load_generator.py`); then measures the in-process
ONNX Runtime ceiling and ddddocr (from its own venv, in a subprocess). Every loop is bounded in count and time. Prints a Markdown
table naming the machine, the speed-up of each --processes value over the first for unary calls,
and how close the batch API comes to the in-process ceiling.

ddddocr runs in a separate virtualenv, never in the project's environment: it pulls in the CPU
`onnxruntime` package, which conflicts with `onnxruntime-gpu`. `--ddddocr-python PY` uses that
interpreter; otherwise (or when PY does not exist) the venv at `--ddddocr-venv` (default
~/.cache/captchakit/ddddocr-venv) is used, created with `pip install ddddocr` on first use.
`--no-ddddocr` skips the column; so does a failed install, with the reason printed.
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(ROOT / "benchmarks"))  # load_generator, for this process and the spawned clients

import _process_tree as process_tree  # noqa: E402
import numpy as np  # noqa: E402

from serving.batcher import GPU_MAX_BATCH  # noqa: E402

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


def _nvidia_smi(query: str) -> str | None:
    """The first GPU's answer to `nvidia-smi --query-gpu=QUERY`, if there is a GPU."""
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def gpu_name() -> str | None:
    return _nvidia_smi("name")


def start_server(onnx: Path, port: int, processes: int, device: str, args: argparse.Namespace, log: Path,
                 metrics_port: int | None = None) -> subprocess.Popen:
    """`captcha serve` in a subprocess, its output to `log` (a pipe nobody reads would fill and stall it)."""
    cmd = [sys.executable, "-m", "captcha", "serve", str(onnx), "--host", "127.0.0.1", "--port", str(port), "--processes", str(processes),
           "--device", device, "--max-queue", "4096", "--ort-threads", str(args.ort_threads), "--workers", str(args.workers)]
    if args.max_batch is not None:
        cmd += ["--max-batch", str(args.max_batch)]
    if args.max_delay_ms is not None:
        cmd += ["--max-delay-ms", str(args.max_delay_ms)]
    if metrics_port is not None:
        cmd += ["--metrics-port", str(metrics_port)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_serving(address: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    from serving.health_probe import check

    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError("server exited:\n" + log.read_text(errors="replace")[-4000:])
        if check(address, timeout=1):
            return
        time.sleep(0.2)
    raise RuntimeError("server did not become SERVING in time")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ort_ceiling(onnx: Path, payloads: list[bytes], batches: list[int], seconds: float, device: str = "auto") -> dict:
    """In-process: model-only images/s at each batch size, and decode+preprocess (a thread pool
    over every CPU, repeated for at least a second) + model at the first batch size."""
    from serving.model import ServedModel

    model = ServedModel("bench", onnx, device)
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        done, t = 0, time.perf_counter()
        while done == 0 or time.perf_counter() - t < 1.0:
            tensors = list(pool.map(model.preprocess, payloads))
            done += len(payloads)
        prep_s = (time.perf_counter() - t) / done
    x = np.stack(tensors)
    model_only = {}
    for batch in batches:
        x_b = np.concatenate([x] * -(-batch // len(x)))[: max(batch, len(x))]
        model.run(x_b[:batch])
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds / len(batches) and n < 2_000_000:
            for i in range(0, len(x_b) - batch + 1, batch):
                model.run(x_b[i : i + batch])
                n += batch
        model_only[batch] = n / (time.perf_counter() - t)
    return {"model_only": model_only, "end_to_end": 1.0 / (1.0 / model_only[batches[0]] + prep_s), "provider": model.provider}


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
        onnx = export_onnx(run, tmp / "model.onnx", verify_images=8, log=lambda s: None, tta=getattr(args, "tta", None),
                           quantize=getattr(args, "quantize", None)).path
    generate_dataset(tmp / "bench", GeneratorConfig(splits={"test": args.images}, seed=7))
    paths = sorted((tmp / "bench" / "test").glob("*.png"))
    return onnx, paths, [p.stem.split("_", 1)[0] for p in paths], run


API_NAMES = {"unary": "Recognize (unary)", "batch": "RecognizeBatch ({}/call)", "stream": "RecognizeStream ({}/stream)"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from serving.config import available_cpus

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", help="exported model (default: export --run, or train a tiny one)")
    parser.add_argument("--run", help="run directory to export and to measure accuracy with")
    parser.add_argument("--images", type=int, default=512, help="generated CAPTCHA PNGs to use")
    parser.add_argument("--tta", type=int, help="test-time views in the exported graph (default: the run's; 1: one view, the model's least work)")
    parser.add_argument("--quantize", choices=("int8",), help="serve the int8 export of --run (`captcha export --quantize int8`)")
    parser.add_argument("--seconds", type=float, default=4.0, help="time bound per table cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64, 256], help="calls (streams) in flight")
    parser.add_argument("--modes", nargs="+", default=["unary", "batch", "stream"], choices=["unary", "batch", "stream"])
    parser.add_argument("--batch", type=int, default=16, help="images per RecognizeBatch call / per stream")
    parser.add_argument("--processes", type=int, nargs="+", default=sorted({1, available_cpus()}), help="server's --processes, one server each")
    parser.add_argument("--device", nargs="+", default=["auto"], choices=["auto", "cpu", "cuda"], help="server's --device, one server each")
    parser.add_argument("--clients", type=int, default=1, help="load-generating processes (the client's share of the cores is not the server's)")
    parser.add_argument("--load-generator", choices=("python", "h2load"), default="python",
                        help="python: load_generator.py in --clients processes; h2load: nghttp2's C load tester in --clients "
                             "threads, far less client CPU a call (unary and batch only; h2load_generator.py)")
    parser.add_argument("--rounds", type=int, default=1, help="go through every server this many times, in turn; the table gives medians")
    parser.add_argument("--max-batch", type=int, help="server's --max-batch (default: the server's own)")
    parser.add_argument("--ceiling-batches", type=int, nargs="+", help=f"batch sizes of the in-process figures (default: {GPU_MAX_BATCH})")
    parser.add_argument("--max-delay-ms", type=float, help="server's --max-delay-ms (default: the server's own)")
    parser.add_argument("--ort-threads", type=int, default=0, help="server's --ort-threads (default 0: its own default)")
    parser.add_argument("--workers", type=int, default=0, help="server's --workers (default 0: its own default)")
    parser.add_argument("--ddddocr-python", help="interpreter that has ddddocr (e.g. /work/ddddocr-venv/bin/python); "
                        "default, or when it does not exist: the --ddddocr-venv one")
    parser.add_argument("--ddddocr-venv", help=f"venv for ddddocr, created with `pip install ddddocr` when missing (default {default_ddddocr_venv()})")
    parser.add_argument("--no-ddddocr", action="store_true", help="skip the ddddocr comparison")
    args = parser.parse_args(argv)
    if args.load_generator == "h2load" and "stream" in args.modes:
        parser.error("--load-generator h2load measures unary and batch calls only: leave stream out of --modes")
    args.ceiling_batches = args.ceiling_batches or [GPU_MAX_BATCH]
    args.gpu_memory = {}  # (device, processes) -> nvidia-smi's memory.used while that server runs
    return args


def measure_servers(onnx: Path, payloads: list[bytes], args: argparse.Namespace, tmp: Path) -> list[tuple]:
    """(device, processes, mode, concurrency, results of every round) for every server and cell.
    Rounds go through every server in turn, so a machine whose speed drifts affects all alike.
    A server that does not start (e.g. `--device cuda` without a usable GPU) is reported and skipped."""
    results: dict[tuple, list[dict]] = {}
    failed: set[tuple[str, int]] = set()
    with _load_generator(args, payloads) as load:
        for r in range(args.rounds):
            for device in args.device:
                for processes in args.processes:
                    if (device, processes) in failed:
                        continue
                    port, log = free_port(), tmp / f"serve-{device}-{processes}.log"
                    metrics_port = free_port() if args.load_generator == "h2load" else None  # where h2load's runs read gRPC errors
                    if metrics_port:
                        load.metrics_address = f"127.0.0.1:{metrics_port}"
                    proc = start_server(onnx, port, processes, device, args, log, metrics_port)
                    try:
                        wait_serving(f"127.0.0.1:{port}", proc, log)
                    except RuntimeError as exc:
                        print(f"--device {device} --processes {processes}: the server did not start, skipped: {exc}", file=sys.stderr)
                        failed.add((device, processes))
                        stop_server(proc)
                        continue
                    memory = _nvidia_smi("memory.used") if device != "cpu" else None
                    if memory and r == 0:
                        print(f"GPU memory used with --device {device} --processes {processes} serving: {memory}", file=sys.stderr)
                        args.gpu_memory[(device, processes)] = memory
                    try:
                        for mode in args.modes:
                            for c in args.concurrency:
                                key = (device, processes, mode, c)
                                results.setdefault(key, []).append(_cell(load, proc, port, key, args, r))
                    finally:
                        stop_server(proc)
    return [(*key, runs) for key, runs in results.items()]


def _load_generator(args: argparse.Namespace, payloads: list[bytes]):
    """The load generator `--load-generator` names, with `--clients` processes (threads for h2load)."""
    if args.load_generator == "h2load":
        from h2load_generator import H2LoadGenerator

        return H2LoadGenerator(args.clients, payloads)
    from load_generator import LoadGenerator

    return LoadGenerator(args.clients, payloads)


def _cell(load, proc: subprocess.Popen, port: int, key: tuple, args: argparse.Namespace, round_index: int) -> dict:
    """One table cell, key (device, processes, mode, concurrency): the load generator's figures
    plus the server's own CPU per image."""
    device, processes, mode, concurrency = key
    cpu = process_tree.cpu_seconds(proc.pid)
    out = load.measure(f"127.0.0.1:{port}", mode, concurrency, args.seconds, args.batch)
    loaded = out.get("loaded_s", args.seconds)  # seconds the server was under load (h2load's warm-up included)
    out["server_cpu_ms_per_image"] = 1000 * (process_tree.cpu_seconds(proc.pid) - cpu) / max(1, out["images_per_s"] * loaded)
    print(f"round {round_index + 1} {device:4s} processes={processes:<3d} {mode:6s} c={concurrency:<4d} {out['images_per_s']:8.1f} img/s  "
          f"p50 {out['p50_ms']:.1f} ms  p99 {out['p99_ms']:.1f} ms  "
          f"errors {out['errors']}  CPU/image: server {out['server_cpu_ms_per_image']:.2f} ms, client {out['client_cpu_ms_per_image']:.2f} ms",
          file=sys.stderr)
    return out


def _median(runs: list[dict], field: str) -> float:
    return float(np.median([run[field] for run in runs]))


def print_report(rows: list[tuple], ceilings: dict, args: argparse.Namespace, images: int, extra: list[str]) -> None:
    gpu = gpu_name()
    views = f"; model graph with {args.tta} test-time view(s)" if args.tta and not args.onnx else ""
    views += "; the int8 export" if getattr(args, "quantize", None) and not args.onnx else ""
    batching = " ".join(f"{flag} {value:g}" for flag, value in (("--max-batch", args.max_batch), ("--max-delay-ms", args.max_delay_ms))
                        if value is not None) or "its default batching"
    print(f"\nMachine: {machine()}{'; GPU: ' + gpu if gpu else ''}; {images} generated CAPTCHA PNGs{views}; server {batching}; load from {_load_words(args)} on the same machine, one connection per call "
          f"in flight; batch/stream calls carry {args.batch} images; {args.seconds:g} s per cell; medians over {args.rounds} interleaved round(s)\n")
    rounds = f" (each of {args.rounds} rounds)" if args.rounds > 1 else ""
    print(f"| device | processes | API | concurrency | images/s{rounds} | p50 ms | p99 ms | errors | CPU ms/image: server | client |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for device, processes, mode, c, runs in rows:
        per_round = ", ".join(f"{run['images_per_s']:.0f}" for run in runs)
        each = f" ({per_round})" if len(runs) > 1 else ""
        print(f"| {device} | {processes} | {API_NAMES[mode].format(args.batch)} | {c} | {_median(runs, 'images_per_s'):.0f}{each} | "
              f"{_median(runs, 'p50_ms'):.1f} | {_median(runs, 'p99_ms'):.1f} | {sum(run['errors'] for run in runs)} | "
              f"{_median(runs, 'server_cpu_ms_per_image'):.2f} | {_median(runs, 'client_cpu_ms_per_image'):.2f} |")
    for device, ceiling in ceilings.items():
        for batch, rate in ceiling["model_only"].items():
            print(f"| {device} ({ceiling['provider']}) | in-process | ORT model only (batch {batch}) | - | {rate:.0f} | | | | | |")
        print(f"| {device} ({ceiling['provider']}) | in-process | decode+preprocess+model (batch {args.ceiling_batches[0]}) | - | "
              f"{ceiling['end_to_end']:.0f} | | | | | |")
    print()
    for (device, processes), memory in args.gpu_memory.items():
        print(f"GPU memory used while --device {device} --processes {processes} served (all processes on the GPU): {memory}")
    for line in summary(rows, ceilings, args):
        print(line)
    for line in extra:
        print(line)


def _load_words(args: argparse.Namespace) -> str:
    if args.load_generator == "h2load":
        return f"h2load ({args.clients} thread(s), every call the same image)"
    return f"{args.clients} client process(es)"


def summary(rows: list[tuple], ceilings: dict, args: argparse.Namespace) -> list[str]:
    """Speed-up of each --processes value over the first (unary), and the batch API against the ceiling."""
    best = {}
    for device, processes, mode, c, runs in rows:
        key = (device, processes, mode)
        best[key] = max(best.get(key, 0.0), _median(runs, "images_per_s"))
    lines = []
    for device in args.device:
        base = best.get((device, args.processes[0], "unary"))
        for processes in args.processes[1:]:
            if base and (device, processes, "unary") in best:
                lines.append(f"{device}: unary, best over concurrency: --processes {processes} answers {best[(device, processes, 'unary')] / base:.2f}x "
                             f"the images/s of --processes {args.processes[0]}")
        for processes in args.processes:
            for mode in ("batch", "stream"):
                if (device, processes, mode) in best and device in ceilings:
                    share = best[(device, processes, mode)] / ceilings[device]["end_to_end"]
                    lines.append(f"{device}: {mode}, --processes {processes}: {share * 100:.0f}% of the in-process decode+preprocess+model ceiling")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dddd_python, dddd_note = (None, "skipped (--no-ddddocr)") if args.no_ddddocr else ensure_ddddocr(args.ddddocr_python, args.ddddocr_venv, log=lambda m: print(m, file=sys.stderr))
    if dddd_python is None:
        print(f"ddddocr: {dddd_note}; its column is left out", file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        onnx, paths, labels, run = _prepare(args, tmp)
        payloads = [p.read_bytes() for p in paths]
        rows = measure_servers(onnx, payloads, args, tmp)
        ceilings = {}
        for device in args.device:
            try:
                ceilings[device] = ort_ceiling(onnx, payloads, args.ceiling_batches, args.seconds, device)
            except RuntimeError as exc:  # --device cuda without a usable GPU
                print(f"in-process ceiling on {device}: skipped ({exc})", file=sys.stderr)
        extra = []
        if run:
            from captcha.inference import Predictor

            texts = [p.text for p in Predictor.from_run(run, "cpu").predict_paths(paths)]
            extra.append(f"\nAccuracy on these images: captchakit model {sum(t == l for t, l in zip(texts, labels)) / len(labels) * 100:.1f}%")
        dddd = ddddocr_bench(dddd_python, paths, labels, timeout=600) if dddd_python else None
    if dddd:
        extra.append(f"ddddocr (pretrained, 1 process, sequential; {dddd_note}): {dddd['images_per_s']:.0f} images/s, "
                     f"whole-string accuracy {dddd['accuracy'] * 100:.1f}%")
    elif not args.no_ddddocr:
        extra.append(f"ddddocr: not measured ({dddd_note if dddd_python is None else 'its run failed, see above'})")
    print_report(rows, ceilings, args, len(paths), extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
