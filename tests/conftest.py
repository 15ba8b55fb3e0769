"""Shared fixtures: tiny generated CAPTCHA sets and one tiny trained run, made once per session."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

from captcha.generate import GeneratorConfig, generate_dataset

torch.set_num_threads(2)

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _import_benchmark(name: str) -> ModuleType:
    """Import `benchmarks/<name>.py` (a script folder, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def benchmark_script():
    """`benchmark_script("serve_bench")` imports benchmarks/serve_bench.py."""
    return _import_benchmark


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small 4-character course-style set with train/val/test folders."""
    out = tmp_path_factory.mktemp("tiny_data")
    generate_dataset(out, GeneratorConfig(splits={"train": 120, "val": 40, "test": 40}, seed=3))
    return out


@pytest.fixture(scope="session")
def easy_data(tmp_path_factory) -> Path:
    """A learnable set: 2 characters from 4 symbols, so a short run is far above chance."""
    out = tmp_path_factory.mktemp("easy_data")
    generate_dataset(out, GeneratorConfig(alphabet="27bx", length=2, splits={"train": 600, "val": 100, "test": 100}, seed=5))
    return out


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, easy_data) -> Path:
    from captcha.train import TrainConfig, fit

    out = tmp_path_factory.mktemp("run")
    cache = tmp_path_factory.mktemp("cache")
    fit(TrainConfig(data=str(easy_data), out=str(out), epochs=8, head="attention", cache_dir=str(cache), lr=5e-3), log=lambda s: None)
    return out
