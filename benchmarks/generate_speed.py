"""Synthetic CAPTCHA drawing speed: images per second on one core and on every core.

    python benchmarks/generate_speed.py [--images 1000] [--styles course mix mix+fonts] [--workers 1 0]
                                        [--preprocess gray] [--write]

Draws `--images` labeled images of each style with `captcha.synth_stream.stream_batches` (batches
of 64, preprocessed by `--preprocess` into the training layout, as a pre-training run would read
them), once per `--workers` setting (1: this process; 0: one process per core), and prints a
Markdown table naming the machine: wall-clock images/s, images/s per worker process, and CPU
milliseconds per image (this process and its workers, user + system) and its inverse, images per
CPU-second: what one free core draws, which a busy shared machine disturbs less than the wall
clock. `mix+fonts` writes in the installed Debian font packages
(`captcha.font_packages`; vetting them first takes about half a minute, not counted); without
them that row is left out. `--write` adds rows for `captcha generate`'s path (drawing and
writing PNG files with `generate_dataset(workers=...)`). A pool's start (spawning workers and
importing OpenCV in each) is counted, as a run pays it once.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import describe  # noqa: E402

# Only torch-free modules at the top: spawned workers import this script again, and torch costs
# each of them seconds (captcha.pretrained, which holds the alphabet, imports it in main()).
from captcha.generate import GENERATE_CHUNK, GeneratorConfig, generate_dataset, seeds_per_image  # noqa: E402
from captcha.parallel import worker_count  # noqa: E402
from captcha.synth_stream import stream_batches  # noqa: E402


def _cpu_seconds() -> float:
    """User + system time of this process and of its finished (joined) children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed(draw) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of `draw()`."""
    wall, cpu = time.perf_counter(), _cpu_seconds()
    draw()
    return time.perf_counter() - wall, _cpu_seconds() - cpu


def _configs(names: list[str], alphabet: str) -> dict[str, GeneratorConfig]:
    configs = {}
    for name in names:
        fonts: tuple[str, ...] = ()
        if name == "mix+fonts":
            from captcha.font_packages import find_package_fonts

            try:
                fonts = find_package_fonts(alphabet).files
            except ValueError as exc:
                print(f"mix+fonts left out: {exc}", file=sys.stderr)
                continue
        configs[name] = GeneratorConfig(alphabet=alphabet, styles=(name.split("+")[0],), seed=0, fonts=fonts)
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--styles", nargs="+", default=["course", "mix", "mix+fonts"])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 0], help="1: this process; 0: one per core")
    parser.add_argument("--preprocess", default="gray", help="the stream's preprocessor ('none': raw BGR)")
    parser.add_argument("--write", action="store_true", help="also time captcha generate's path (PNG files)")
    args = parser.parse_args()
    preprocess = None if args.preprocess == "none" else args.preprocess
    from captcha.pretrained import PRETRAIN_ALPHABET

    rows = []
    for name, config in _configs(args.styles, PRETRAIN_ALPHABET).items():
        for requested in args.workers:
            workers = worker_count(requested)
            stream = lambda: sum(len(b.labels) for b in stream_batches(config, 64, preprocess=preprocess, stop=args.images, workers=workers))  # noqa: E731
            rows.append((name, f"stream, {args.preprocess}", workers, *_timed(stream)))
            if args.write:
                with tempfile.TemporaryDirectory() as tmp:
                    written = replace(config, splits={"train": args.images})
                    tasks = -(-args.images // GENERATE_CHUNK) if seeds_per_image(written) else 1  # a named style's split is one task
                    rows.append((name, "write PNG files", min(workers, tasks), *_timed(lambda: generate_dataset(tmp, written, workers=workers))))
            print(f"done: {name}, {workers} worker(s)", file=sys.stderr, flush=True)

    print(f"\nMachine: {describe()}; load average {os.getloadavg()[0]:.1f} at the end\n")
    print(f"{args.images} images of 50 x 130 pixels per row, {len(PRETRAIN_ALPHABET)} symbols, 4 characters\n")
    print("| style | path | worker processes | wall s | images/s | images/s per worker | CPU ms per image | images per CPU-second |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, path, workers, wall, cpu in rows:
        rate = args.images / wall
        print(f"| {name} | {path} | {workers} | {wall:.1f} | {rate:.0f} | {rate / workers:.0f} | {cpu / args.images * 1000:.1f} | {args.images / cpu:.0f} |")


if __name__ == "__main__":
    main()
