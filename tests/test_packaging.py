"""Packaging: the serving path imports without PyTorch, requirements/serve.txt agrees with
pyproject.toml, and two throwaway environments built from PyPI the way a user builds them:

- the serving set + the project + `tritonclient[grpc]` in one install (pip picks the protobuf
  tritonclient allows), then `captcha serve` from there answering tritonclient's gRPC client;
- the oldest supported protobuf and gRPC packages (docs/compatibility.md), where the server must
  still answer and the committed stubs must be exactly what the pinned grpcio-tools writes.

The environment tests need PyPI; they are skipped, with the reason, only when it cannot be reached.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
SERVE_REQUIREMENTS = ROOT / "requirements" / "serve.txt"
TRAINING_ONLY = ("torch", "torchvision", "onnx", "onnxscript")
# What the Dockerfile copies before `pip install --no-deps .`: the same set is installed here.
PROJECT_FILES = ("pyproject.toml", "README.md", "captcha", "serving", "protos")
# The floor of docs/compatibility.md: the oldest releases the serving path is supported on.
OLDEST = ("protobuf==5.29.0", "grpcio==1.64.0", "grpcio-health-checking==1.64.0", "grpcio-reflection==1.64.0")
PIP_TIMEOUT_S = 900
START_TIMEOUT_S = 120
CALL_TIMEOUT_S = 60


def _serving_modules() -> list[str]:
    """Every module of the `serving` package, generated stubs included."""
    names = []
    for path in sorted((ROOT / "serving").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_serving_modules_import_without_torch() -> None:
    """A guard on sys.meta_path makes `import torch` (and the other training-only packages) fail;
    every serving module and the serve/client verbs of the `captcha` command must still load. The
    Triton Python-backend models import `triton_python_backend_utils`, which only Triton provides:
    an empty stand-in lets them load here, so their own imports are checked too."""
    guard = (
        "import importlib.abc, sys, types\n"
        "sys.modules['triton_python_backend_utils'] = types.ModuleType('triton_python_backend_utils')\n"
        "class Blocked(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.partition('.')[0] in {TRAINING_ONLY!r}:\n"
        "            raise ImportError(f'{name} is not part of the serving install')\n"
        "sys.meta_path.insert(0, Blocked())\n"
    )
    check = (
        "import importlib, json\n"
        "try:\n    import torch\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('the guard let torch in')\n"
        "for name in json.loads(sys.argv[1]):\n    importlib.import_module(name)\n"
        "from captcha.cli import main\n"
        "for verb in ('serve', 'client'):\n"
        "    try:\n        main([verb, '--help'])\n    except SystemExit as stop:\n        assert stop.code == 0, (verb, stop.code)\n"
        f"loaded = sorted(m for m in sys.modules if m.partition('.')[0] in {TRAINING_ONLY!r})\n"
        "assert not loaded, loaded\n"
        "print('imported', len(json.loads(sys.argv[1])), 'modules')\n"
    )
    modules = _serving_modules()
    assert "serving.server" in modules and "serving._proto.inference.grpc_service_pb2_grpc" in modules
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", guard + check, json.dumps(modules)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"imported {len(modules)} modules" in done.stdout


def _requirement_lines(path: Path) -> list[str]:
    lines = (line.split(" #")[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_serve_requirements_are_the_projects_own_and_leave_out_torch() -> None:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {str(Requirement(line)) for line in project}
    serve = [Requirement(line) for line in _requirement_lines(SERVE_REQUIREMENTS)]
    assert {r.name for r in serve} >= {"numpy", "opencv-python-headless", "onnxruntime-gpu", "onnxruntime", "grpcio",
                                       "grpcio-health-checking", "grpcio-reflection", "protobuf", "prometheus-client"}
    assert not [str(r) for r in serve if str(r) not in declared], "requirements/serve.txt disagrees with pyproject.toml"
    assert not [r.name for r in serve if r.name in TRAINING_ONLY]


# ----------------------------------------------------------------------------- throwaway environments


def _index_url() -> str:
    return os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")


@pytest.fixture(scope="module")
def pypi() -> str:
    """The package index pip will use; the module's environment tests skip when it cannot be reached."""
    url = f"{_index_url()}/tritonclient/"
    try:
        with urllib.request.urlopen(url, timeout=15) as reply:
            reply.read(1)
    except OSError as exc:
        pytest.skip(f"the package index cannot be reached ({url}: {exc}); these tests install from it")
    return _index_url()


def _clean_env() -> dict[str, str]:
    """The test's environment without PYTHONPATH, so a throwaway venv runs what it installed."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _outer_pip() -> bool:
    """True when this environment's pip can install into another venv (`pip --python`, pip 22.3+),
    so the throwaway venvs need no pip of their own (saves installing one into each)."""
    try:
        import pip
    except ImportError:
        return False
    return tuple(int(part) for part in re.findall(r"\d+", pip.__version__)[:2]) >= (22, 3)


def _run_pip(python: Path, *args: str) -> None:
    """pip for the venv of `python`: this environment's (`--python`) when it can, else the venv's own."""
    prefix = [sys.executable, "-m", "pip", "--python", str(python)] if _outer_pip() else [str(python), "-m", "pip"]
    cmd = [*prefix, *args, "--disable-pip-version-check"]
    done = subprocess.run(cmd, env=_clean_env(), capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"


def _new_venv(path: Path) -> Path:
    pip = ["--without-pip"] if _outer_pip() else []
    subprocess.run([sys.executable, "-m", "venv", *pip, str(path)], check=True, timeout=300)
    return path / "bin" / "python"


@pytest.fixture(scope="module")
def project_wheel(pypi, tmp_path_factory) -> Path:
    """The project built once as a wheel, from the files the Dockerfile copies."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    for name in PROJECT_FILES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    builder = Path(sys.executable) if _outer_pip() else _new_venv(tmp / "builder")
    _run_pip(builder, "wheel", "--no-deps", "-w", str(tmp / "dist"), str(source))
    (wheel,) = (tmp / "dist").glob("captchakit-*.whl")
    return wheel


def _venv(path: Path, wheel: Path, *requirements: str) -> Path:
    """A fresh virtual environment with the serving set and `requirements` in one install (pip
    resolves them together), then the project's wheel without its dependencies."""
    python = _new_venv(path)
    _run_pip(python, "install", "--only-binary=:all:", "-r", str(SERVE_REQUIREMENTS), *requirements)
    _run_pip(python, "install", "--no-deps", str(wheel))
    return python


def _versions(python: Path, *packages: str) -> dict[str, str]:
    code = "import importlib.metadata as m, json, sys; print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))"
    done = subprocess.run([str(python), "-c", code, *packages], env=_clean_env(), capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


@contextmanager
def _serving(python: Path, model: Path, cwd: Path):
    """`captcha serve` from the venv of `python` on a free loopback port; yields the port."""
    captcha = python.parent / "captcha"
    log = cwd / "serve.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen([str(captcha), "serve", "--host", "127.0.0.1", "--port", "0", f"captcha={model}"], cwd=cwd,
                                env=_clean_env(), stdout=subprocess.PIPE, stderr=stderr, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put(None)], daemon=True).start()
    try:
        found, seen, deadline = None, [], time.monotonic() + START_TIMEOUT_S
        while not found and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:  # the server exited
                break
            seen.append(line)
            found = re.search(r" on 127\.0\.0\.1:(\d+)", line)
        if not found:
            proc.kill()
            proc.wait()
            pytest.fail(f"captcha serve did not start: {''.join(seen)!r}\n{log.read_text()[-4000:]}")
        yield int(found.group(1))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A one-epoch run exported to ONNX with this environment's torch, and a few test images."""
    from captcha.export import export_onnx
    from captcha.generate import GeneratorConfig, generate_dataset
    from captcha.train import TrainConfig, fit

    tmp = tmp_path_factory.mktemp("packaging")
    generate_dataset(tmp / "data", GeneratorConfig(splits={"train": 64, "val": 16, "test": 16}, seed=11))
    fit(TrainConfig(data=str(tmp / "data"), out=str(tmp / "run"), epochs=1, batch_size=32, init="none", cache_dir=str(tmp / "cache")),
        log=lambda s: None)
    onnx_path = export_onnx(tmp / "run", tmp / "captcha.onnx", verify_images=4, log=lambda s: None).path
    return {"run": tmp / "run", "onnx": Path(onnx_path), "images": sorted((tmp / "data" / "test").glob("*.png"))[:3]}


def _expected(tiny_model) -> tuple[list[str], list[float]]:
    from captcha.inference import Predictor

    predictions = Predictor.from_run(tiny_model["run"], "cpu").predict_paths(tiny_model["images"])
    return [p.text for p in predictions], [p.confidence for p in predictions]


# What the KServe test runs inside the throwaway venv, where tritonclient is installed.
TRITON_CALLS = """
import json, sys
import numpy as np
import tritonclient.grpc as triton

port, paths = sys.argv[1], sys.argv[2:]
client = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
live = client.is_server_live(client_timeout=TIMEOUT)
meta = client.get_model_metadata("captcha", client_timeout=TIMEOUT)
image = triton.InferInput("image", [len(paths)], "BYTES")
image.set_data_from_numpy(np.array([open(p, "rb").read() for p in paths], dtype=np.object_))
wanted = [triton.InferRequestedOutput("text"), triton.InferRequestedOutput("confidence")]
result = client.infer("captcha", [image], outputs=wanted, client_timeout=TIMEOUT)
print(json.dumps({
    "live": live,
    "inputs": [(t.name, t.datatype) for t in meta.inputs],
    "outputs": [(t.name, t.datatype) for t in meta.outputs],
    "text": [t.decode() for t in result.as_numpy("text")],
    "confidence": result.as_numpy("confidence").tolist(),
}))
""".replace("TIMEOUT", str(CALL_TIMEOUT_S))


def test_tritonclient_installs_beside_the_project_and_calls_the_server(project_wheel, tiny_model, tmp_path) -> None:
    python = _venv(tmp_path / "venv", project_wheel, "tritonclient[grpc]")
    versions = _versions(python, "protobuf", "grpcio", "grpcio-health-checking", "tritonclient")
    paths = [str(p) for p in tiny_model["images"]]
    with _serving(python, tiny_model["onnx"], tmp_path) as port:
        done = subprocess.run([str(python), "-c", TRITON_CALLS, str(port), *paths], cwd=tmp_path, env=_clean_env(),
                              capture_output=True, text=True, timeout=2 * CALL_TIMEOUT_S)
    assert done.returncode == 0, f"{versions}\n{done.stderr[-4000:]}"
    reply = json.loads(done.stdout)
    texts, confidences = _expected(tiny_model)
    assert reply["live"] is True
    assert reply["inputs"] == [["image", "BYTES"]]
    assert ["text", "BYTES"] in reply["outputs"] and ["confidence", "FP32"] in reply["outputs"]
    assert reply["text"] == texts, versions
    np.testing.assert_allclose(reply["confidence"], confidences, rtol=1e-3, atol=1e-6)


def test_oldest_supported_protobuf_and_grpc_serve_and_regenerate_the_committed_stubs(project_wheel, tiny_model, tmp_path) -> None:
    from serving import gen_protos

    try:
        python = _venv(tmp_path / "venv", project_wheel, *OLDEST, gen_protos.GRPCIO_TOOLS)
    except AssertionError as exc:
        if "No matching distribution found for grpc" in str(exc):
            pytest.skip(f"the oldest gRPC releases have no wheel for Python {sys.version_info[0]}.{sys.version_info[1]}")
        raise
    assert _versions(python, "protobuf", "grpcio", "grpcio-health-checking", "grpcio-reflection") == {
        name: version for name, _, version in (pin.partition("==") for pin in OLDEST)}

    fresh = tmp_path / "stubs"
    env = {**_clean_env(), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([str(python), "-m", "serving.gen_protos", "--out", str(fresh)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    committed = gen_protos.OUT_DIR
    names = sorted(p.relative_to(fresh) for p in fresh.rglob("*.py*"))
    assert names == sorted(p.relative_to(committed) for p in committed.rglob("*.py*") if "__pycache__" not in p.parts)
    stale = [str(n) for n in names if (fresh / n).read_bytes() != (committed / n).read_bytes()]
    assert not stale, f"stale generated stubs (run protos/generate.sh): {stale}"

    paths = [str(p) for p in tiny_model["images"]]
    with _serving(python, tiny_model["onnx"], tmp_path) as port:
        probe = subprocess.run([str(python), "-m", "serving.health_probe", "--address", f"127.0.0.1:{port}"], cwd=tmp_path,
                               env=_clean_env(), capture_output=True, text=True, timeout=CALL_TIMEOUT_S)
        client = subprocess.run([str(python.parent / "captcha"), "client", "--address", f"127.0.0.1:{port}", *paths], cwd=tmp_path,
                                env=_clean_env(), capture_output=True, text=True, timeout=CALL_TIMEOUT_S)
    assert probe.returncode == 0, probe.stdout + probe.stderr
    assert client.returncode == 0, client.stderr[-3000:]
    texts, _ = _expected(tiny_model)
    assert [line.split("\t")[1] for line in client.stdout.splitlines()] == texts
