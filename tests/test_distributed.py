"""Two gloo processes launched by torchrun train the same run as one process would."""

import json
import os
import subprocess
import sys

import pytest


def _train(launcher, data, out, cache, batch_size, module=("-m", "captcha")):
    # No augmentation: one process and two draw their random augmentations differently, which on
    # this tiny run moves accuracy by more than the distribution itself ever should.
    cmd = [*launcher, *module, "train", "--data", str(data), "--out", str(out), "--epochs", "2",
           "--batch-size", str(batch_size), "--cache-dir", str(cache), "--device", "cpu", "--augment", "none"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_torchrun_two_processes_match_one(easy_data, tmp_path):
    # --batch-size is per process: one process at 128 takes the same optimiser steps, on the same
    # images (each rank takes every second image of the shuffled order), as two processes at 64.
    single = _train([sys.executable], easy_data, tmp_path / "single", tmp_path / "c1", 128)
    assert single.returncode == 0, single.stderr[-3000:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    double = _train(launcher, easy_data, tmp_path / "ddp", tmp_path / "c2", 64)
    assert double.returncode == 0, double.stderr[-3000:]

    # Rank 0 alone logs: one train line per epoch, and it counts every sample once.
    lines = [line for line in double.stdout.splitlines() if "phase: train" in line]
    assert len(lines) == 2 and all("samples: 600," in line for line in lines)
    assert double.stdout.count("Run saved in") == 1 and double.stdout.count("Test: per-character") == 1  # the summary too
    # Rank 0 alone writes: one best and one last checkpoint, nothing half-written.
    written = sorted(p.name for p in (tmp_path / "ddp").iterdir())
    assert written == ["best.pt", "confusion_matrix.png", "last.pt", "learning_curves.png", "metrics.csv", "metrics.json"]

    one = json.loads((tmp_path / "single" / "metrics.json").read_text())
    two = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert one["test"]["samples"] == two["test"]["samples"] == 100
    assert abs(one["val"]["sequence_accuracy"] - two["val"]["sequence_accuracy"]) < 0.15


PROBE = """
import json, sys
import captcha.distributed as d
out = sys.argv.pop(1)
real = d.shard
def shard(order, n):
    mine = real(order, n)
    with open(out + f".rank{d.rank()}", "a") as f:
        f.write(json.dumps(mine.tolist()) + "\\n")
    return mine
d.shard = shard
from captcha.cli import main
sys.exit(main())
"""


@pytest.mark.slow
def test_torchrun_ranks_share_one_shuffle_and_take_disjoint_halves(easy_data, tmp_path):
    # Each rank must take its own half of the same shuffled order every epoch: drawn from per-rank
    # seeds, the orders differed and the halves overlapped (a quarter of the images twice, a quarter never).
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    run = _train(launcher, easy_data, tmp_path / "ddp", tmp_path / "c", 64, module=(str(probe), str(tmp_path / "shards")))
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [[set(json.loads(line)) for line in (tmp_path / f"shards.rank{r}").read_text().splitlines()] for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2  # one shard per epoch
    for mine, theirs in zip(*ranks):
        assert not mine & theirs and len(mine | theirs) == 600
