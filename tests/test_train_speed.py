"""What makes training fast without changing what it computes (issue #36): no host read of a
tensor inside a training step, an EMA that keeps torch's numbers, --compile that falls back."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

from captcha.ema import DeviceEMA


def test_a_training_step_reads_no_tensor_value_on_the_host(tiny_data, tmp_path, benchmark_script):
    """Outside the optimizer (whose fused CPU kernel reads its step count on the host; the CUDA
    one reads it on the device), a step never waits for a tensor's value, EMA included."""
    from torch.profiler import ProfilerActivity, profile

    from captcha.train import TrainConfig, fit

    step_profile = benchmark_script("step_profile")
    config = TrainConfig(data=str(tiny_data), out=str(tmp_path / "run"), model="resnet18_mod", epochs=1, batch_size=16,
                         init="none", device="cpu", cache_dir=str(tmp_path / "cache"), ema=0.99)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fit(config, log=lambda s: None)
    steps, inside, waits = step_profile.step_ops(prof)
    assert steps == 8  # 120 images in steps of 16
    assert waits["elsewhere"] == 0, {k: v for k, v in inside.items() if k in step_profile.SYNC_OPS}


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def test_the_ema_averages_as_torchs_averaged_model_and_saves_the_same_state():
    model = _net()
    ours = DeviceEMA(model, 0.9)
    theirs = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9), use_buffers=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        model(torch.randn(8, 1, 8, 8)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        ours.update_parameters(model)
        theirs.update_parameters(model)
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    restored = DeviceEMA(_net(), 0.9)
    restored.load_state_dict(a)
    assert restored.updates == 5  # a resumed run goes on averaging, not copying


def test_compile_that_fails_falls_back_to_the_plain_model_with_one_warning(tiny_data, tmp_path, monkeypatch):
    from captcha import train

    class Broken(nn.Module):
        def __init__(self, model):
            super().__init__()
            self._orig_mod = model

        def forward(self, x):
            raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda model, **kw: Broken(model))
    config = train.TrainConfig(data=str(tiny_data), out=str(tmp_path / "run"), model="resnet18_mod", epochs=1, init="none",
                               device="cpu", cache_dir=str(tmp_path / "cache"), compile=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train.fit(config, log=lambda s: None)
    assert result.val is not None
    messages = [str(w.message) for w in caught if "--compile" in str(w.message)]
    assert len(messages) == 1 and "no C++ compiler" in messages[0]


@pytest.mark.parametrize("native, expected", [(True, True), (False, False)])
def test_bf16_autocast_only_where_the_cpu_has_bf16_arithmetic(monkeypatch, native, expected):
    from captcha.runtime import bf16_pays

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert bf16_pays(torch.device("cpu")) is expected
    assert bf16_pays(torch.device("cuda")) is True


def test_the_gpu_training_script_runs_on_the_cpu_and_prints_the_table(tiny_data):
    """benchmarks/train_gpu.sh as it runs on the GPU machine (step profile, then train_speed.py's
    table), here on the CPU with one epoch of a small set: a row per recipe with a time, an
    accuracy, and the ratio to the naive loop of the same round."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(["bash", str(root / "benchmarks" / "train_gpu.sh"), "--device", "cpu", "--epochs", "1", "--repeat", "1",
                          "--data", str(tiny_data), "--rows", "naive", "course", "course-b128"],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| host reads of a tensor's value, outside the optimizer | 0.00 |" in out.stdout, out.stdout[-2000:]  # the step profile
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| row |"))
    rows = [line.split("|")[1:-1] for line in lines[header + 2 :] if line.startswith("| ")]
    table = {r[0].strip(): r for r in rows}
    assert len(table) == 3 and all(float(r[3]) > 0 for r in table.values())  # training seconds
    for name, row in table.items():
        assert row[6].strip().endswith("%"), name  # test whole-string accuracy
        assert (row[5].strip() == "") == name.startswith("naive"), name  # the ratio, for every row but the reference
    assert "Machine:" in out.stdout and "median training / naive, course:" in out.stdout


def test_the_step_timer_runs_the_shipped_and_the_plain_bf16_step(benchmark_script):
    step_time = benchmark_script("step_time")
    shipped, float32_layers = step_time.make_step("sepnet", 2, True)
    plain, _ = step_time.make_step("sepnet", 2, False)
    times = step_time.time_rounds({"shipped": shipped, "plain": plain}, rounds=2, per_round=1)
    assert float32_layers == 2  # sepnet's two depthwise convolutions that halve the height only
    assert all(len(ms) == 2 and min(ms) > 0 for ms in times.values())


def test_the_width_timer_builds_each_variant_at_the_widths_it_names(benchmark_script):
    """`width_cost.py` rebuilds `sepnet` exactly from its widths, so a variant differs only in width."""
    import argparse

    from captcha.models import create_model
    from captcha.models.sepnet import SEPNET_STAGES

    width_cost = benchmark_script("width_cost")
    shipped = create_model("sepnet", num_classes=36, length=4, in_channels=1, head="attention")
    name, (stem, widths) = width_cost.parse_variant(f"same=16:{','.join(str(w) for w, _, _ in SEPNET_STAGES)}")
    rebuilt = width_cost.build(stem, widths)
    assert name == "same" and rebuilt.state_dict().keys() == shipped.state_dict().keys()
    assert all(rebuilt.state_dict()[k].shape == v.shape for k, v in shipped.state_dict().items())
    assert width_cost.describe_widths(shipped) == "16 : 24, 48, 80, 112"
    wide = create_model("sepnet_wide", num_classes=36, length=4, in_channels=1, head="attention")
    assert width_cost.describe_widths(wide) == "32 : 48, 96, 160, 224"
    step, params = width_cost.make_step(width_cost.build(16, (24, 48, 160, 224)), batch=2, size=(40, 104))
    step()
    assert params > sum(p.numel() for p in shipped.parameters())
    with pytest.raises(argparse.ArgumentTypeError, match="W1,W2,W3,W4"):
        width_cost.parse_variant("late=16:24,48")
