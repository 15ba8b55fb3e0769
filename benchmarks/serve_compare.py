"""Compare gRPC servers from different commits (or flags) on the same images, interleaved.

    python benchmarks/serve_compare.py [--onnx model.onnx | --run RUN_DIR] \\
        --variant "before=b45321e:--grpc-threads 300" --variant "after=HEAD" [--rounds 3]

Each `--variant NAME[@MODEL.onnx]=REV[:SERVER ARGS]` checks REV out into a temporary git worktree
(`.` means the working tree as it is) and serves the model (or the variant's own MODEL.onnx, to
compare two exports of one run, e.g. float against int8) with that commit's `captcha serve`. Rounds go
through every variant in turn, so a machine whose speed drifts during the run affects all of them
alike; the table gives the median images/s over rounds (and each round's figure). The load
generator is `load_generator.py` in `--clients` processes, sharing the cores with the server.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "benchmarks"))

from load_generator import LoadGenerator  # noqa: E402
from serve_bench import _prepare, free_port, machine  # noqa: E402


def _parse_variant(text: str) -> tuple[str, str, list[str], Path | None]:
    label, sep, rest = text.partition("=")
    name, _, model = label.partition("@")
    if not sep or not name or not rest:
        raise argparse.ArgumentTypeError(f"--variant {text!r}: expected NAME[@MODEL.onnx]=REV[:SERVER ARGS]")
    if model and not Path(model).is_file():
        raise argparse.ArgumentTypeError(f"--variant {text!r}: no such model file {model}")
    rev, _, extra = rest.partition(":")
    return name, rev, shlex.split(extra), Path(model).resolve() if model else None


def _checkout(rev: str, into: Path) -> Path:
    if rev == ".":
        return ROOT
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(into), rev], check=True)
    return into


def _serve(code: Path, onnx: Path, port: int, extra: list[str]) -> subprocess.Popen:
    from serving.health_probe import check

    cmd = [sys.executable, "-m", "captcha", "serve", str(onnx), "--host", "127.0.0.1", "--port", str(port), "--max-queue", "4096", *extra]
    proc = subprocess.Popen(cmd, cwd=code, env={**__import__("os").environ, "PYTHONPATH": str(code)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    end = time.time() + 120
    while not check(f"127.0.0.1:{port}", timeout=1):
        if proc.poll() is not None or time.time() > end:
            proc.kill()
            raise RuntimeError(f"server from {code} did not start:\n{proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.3)
    return proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", help="exported model (default: export --run, or train a tiny one)")
    parser.add_argument("--run", help="run directory to export")
    parser.add_argument("--variant", action="append", type=_parse_variant, required=True, help="NAME[@MODEL.onnx]=REV[:SERVER ARGS]; repeat")
    parser.add_argument("--cells", nargs="+", default=["unary:64", "batch:64", "stream:8"], help="MODE:CONCURRENCY per table row")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=3.0, help="time per cell per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="images per RecognizeBatch call / per stream")
    parser.add_argument("--clients", type=int, default=1, help="load-generating processes")
    args = parser.parse_args(argv)
    cells = [(m, int(c)) for m, _, c in (cell.partition(":") for cell in args.cells)]

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        onnx, paths, _, _ = _prepare(args, tmp)
        payloads = [p.read_bytes() for p in paths]
        codes = {name: (_checkout(rev, tmp / f"tree-{i}"), extra, model or onnx) for i, (name, rev, extra, model) in enumerate(args.variant)}
        load = LoadGenerator(args.clients, payloads)
        results: dict[tuple[str, tuple[str, int]], list[float]] = {(n, cell): [] for n in codes for cell in cells}
        try:
            for r in range(args.rounds):
                for name, (code, extra, model) in codes.items():
                    port = free_port()
                    proc = _serve(code, model, port, extra)
                    try:
                        for mode, c in cells:
                            out = load.measure(f"127.0.0.1:{port}", mode, c, args.seconds, args.batch)
                            results[(name, (mode, c))].append(out["images_per_s"])
                            print(f"round {r + 1} {name:10s} {mode:6s} c={c:<4d} {out['images_per_s']:8.1f} img/s  errors {out['errors']}", file=sys.stderr)
                    finally:
                        proc.terminate()
                        proc.wait(30)
        finally:
            load.close()
            for code, _, _ in codes.values():
                if code != ROOT:
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(code)], check=False)

    names = {"unary": "Recognize", "batch": f"RecognizeBatch ({args.batch}/call)", "stream": f"RecognizeStream ({args.batch}/stream)"}
    print(f"\nMachine: {machine()}; {len(paths)} generated CAPTCHA PNGs; {args.rounds} interleaved rounds of {args.seconds:g} s per cell; "
          "images/s, median (each round)\n")
    print("| API | concurrency | " + " | ".join(f"{n} ({rev}{' ' + ' '.join(x) if x else ''}{', ' + m.name if m else ''})"
                                               for n, rev, x, m in args.variant) + " |")
    print("|---|---:|" + "---:|" * len(codes))
    for mode, c in cells:
        row = [f"{statistics.median(v):.0f} ({', '.join(f'{x:.0f}' for x in v)})" for v in (results[(n, (mode, c))] for n in codes)]
        print(f"| {names[mode]} | {c} | " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
