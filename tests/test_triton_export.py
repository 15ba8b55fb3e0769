"""`captcha export RUN --format triton`: a Triton repository whose ensemble takes encoded image
bytes and answers, image for image, what `captcha predict` answers; checked here without Triton.

- Every config.pbtxt parses with protobuf's `text_format` against tests/triton_model_config.proto
  (Triton's own message, field and enum names and numbers, compiled with grpc_tools.protoc into a
  temporary folder), so a field Triton does not define fails; the ensemble's steps are checked to
  connect tensors of matching names, types and dims, as Triton checks when it loads an ensemble.
- The two Python-backend models run from the written 1/model.py files with a stand-in for
  `triton_python_backend_utils` (below, with the signatures of Triton's python_backend:
  `Tensor(name, array)`, `InferenceResponse(output_tensors, error)`, `TritonError(message, code)`,
  `get_input_tensor_by_name`); the ONNX model runs on ONNX Runtime with the requests of a step
  concatenated along the batch axis, as Triton's dynamic batcher hands them over.

The module imports neither torch nor the training code at the top, so that a fresh interpreter can
import its stand-in and show that the Python models run without torch.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from captcha.imageio import list_images

TESTS = Path(__file__).resolve().parent
PROTO = TESTS / "triton_model_config.proto"


# --- a stand-in for triton_python_backend_utils -------------------------------------------------

class TritonError:
    """Like pb_utils.TritonError: `TritonError(message, code=INTERNAL)`, `.message()`, `.code()`."""

    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, message: str, code: int = 1) -> None:
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class Tensor:
    """Like pb_utils.Tensor: `Tensor(name, numpy_array)`, `.name()`, `.as_numpy()`, `.shape()`."""

    def __init__(self, name: str, array: np.ndarray) -> None:
        if not isinstance(array, np.ndarray):
            raise TypeError(f"Tensor {name!r}: a numpy array is needed, not {type(array).__name__}")
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def shape(self) -> list[int]:
        return list(self._array.shape)


class InferenceRequest:
    """The part of pb_utils.InferenceRequest a model reads: `.inputs()`."""

    def __init__(self, inputs: list[Tensor]) -> None:
        self._inputs = inputs

    def inputs(self) -> list[Tensor]:
        return self._inputs


class InferenceResponse:
    """Like pb_utils.InferenceResponse(output_tensors=[], error=None, parameters=None)."""

    def __init__(self, output_tensors: list[Tensor] | None = None, error: TritonError | None = None, parameters: dict | None = None) -> None:
        self._outputs, self._error = list(output_tensors or []), error

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


def _by_name(tensors: list[Tensor], name: str) -> Tensor | None:
    return next((t for t in tensors if t.name() == name), None)


def stand_in_module() -> ModuleType:
    """A module to put in sys.modules as `triton_python_backend_utils`."""
    module = ModuleType("triton_python_backend_utils")
    module.TritonError, module.Tensor, module.InferenceRequest, module.InferenceResponse = TritonError, Tensor, InferenceRequest, InferenceResponse
    module.get_input_tensor_by_name = lambda request, name: _by_name(request.inputs(), name)
    module.get_output_tensor_by_name = lambda response, name: _by_name(response.output_tensors(), name)
    return module


# --- Triton's schema and checks, and an ensemble run without Triton ------------------------------

@pytest.fixture(scope="module")
def schema(tmp_path_factory) -> ModuleType:
    """tests/triton_model_config.proto compiled into a temporary folder and imported."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("triton_schema")
    assert protoc.main(["grpc_tools.protoc", f"-I{TESTS}", f"--python_out={out}", PROTO.name]) == 0
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", out / "triton_model_config_pb2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_config(schema: ModuleType, path: Path):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), schema.ModelConfig())  # an unknown field raises ParseError


def config_dict(config) -> dict[str, Any]:
    """The JSON form Triton hands a Python model as args['model_config']."""
    from google.protobuf import json_format

    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def _declared(tensors, name: str):
    return next((t for t in tensors if t.name == name), None)


def check_ensemble_wiring(configs: dict[str, Any], name: str) -> None:
    """What Triton checks when it loads an ensemble: every step names a model in the repository
    and its inputs and outputs; every tensor a step reads is an ensemble input or an earlier
    step's output, of the same type and dims; every ensemble output is produced; no composing
    model batches less than the ensemble."""
    ensemble = configs[name]
    known = {t.name: (t.data_type, list(t.dims)) for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        assert model.max_batch_size >= ensemble.max_batch_size > 0
        for key, value in step.input_map.items():
            tensor = _declared(model.input, key)
            assert tensor is not None, f"{step.model_name} has no input {key!r}"
            assert known[value] == (tensor.data_type, list(tensor.dims)), f"{value!r} does not fit {step.model_name}'s {key!r}"
        assert set(step.input_map) == {t.name for t in model.input}, f"{step.model_name}: an input is left unfed"
        for key, value in step.output_map.items():
            tensor = _declared(model.output, key)
            assert tensor is not None, f"{step.model_name} has no output {key!r}"
            known[value] = (tensor.data_type, list(tensor.dims))
    for tensor in ensemble.output:
        assert known.get(tensor.name) == (tensor.data_type, list(tensor.dims)), f"ensemble output {tensor.name!r} is not produced as declared"


def check_tensor(declared, array: np.ndarray, max_batch_size: int, schema: ModuleType) -> None:
    """An array as Triton takes it for a declared tensor: [batch, *dims], of the declared type."""
    assert 1 <= array.shape[0] <= max_batch_size
    assert list(array.shape[1:]) == list(declared.dims), f"{declared.name}: shape {array.shape} for dims {list(declared.dims)}"
    if declared.data_type == schema.TYPE_STRING:
        assert array.dtype == np.object_ and all(isinstance(x, bytes) for x in array.reshape(-1)), declared.name
    else:
        assert declared.data_type == schema.TYPE_FP32 and array.dtype == np.float32, declared.name


def load_python_model(model_dir: Path, config) -> Any:
    """The written 1/model.py, imported and initialised as Triton's python backend does."""
    spec = importlib.util.spec_from_file_location(f"triton_{model_dir.name}", model_dir / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config_dict(config)), "model_instance_kind": "CPU", "model_instance_device_id": "0",
                      "model_repository": str(model_dir), "model_version": "1", "model_name": model_dir.name})
    return model


class Ensemble:
    """Runs a written repository's ensemble: its steps in order, each composing model once for
    all live requests (the Python models get them as one `execute` list, the ONNX model one
    concatenated batch), a request that errs dropping out with its error."""

    def __init__(self, repo: Path, name: str, schema: ModuleType) -> None:
        import onnxruntime as ort

        self.schema, self.name = schema, name
        self.configs = {d.name: parse_config(schema, d / "config.pbtxt") for d in repo.iterdir() if (d / "config.pbtxt").is_file()}
        check_ensemble_wiring(self.configs, name)
        self.models: dict[str, Any] = {}
        for model, config in self.configs.items():
            if config.backend == "python":
                self.models[model] = load_python_model(repo / model, config)
            elif config.platform == "onnxruntime_onnx":
                self.models[model] = ort.InferenceSession(str(repo / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])

    def _run(self, model: str, inputs: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray] | TritonError]:
        config = self.configs[model]
        for request in inputs:
            for key, array in request.items():
                check_tensor(_declared(config.input, key), array, config.max_batch_size, self.schema)
        if config.backend == "python":
            responses = self.models[model].execute([InferenceRequest([Tensor(k, v) for k, v in r.items()]) for r in inputs])
            assert len(responses) == len(inputs) and all(isinstance(r, InferenceResponse) for r in responses)
            results = [r.error() if r.has_error() else {t.name(): t.as_numpy() for t in r.output_tensors()} for r in responses]
        else:
            names = [t.name for t in config.output]
            (key,) = inputs[0]
            counts = np.cumsum([len(r[key]) for r in inputs])[:-1]
            outputs = self.models[model].run(names, {key: np.concatenate([r[key] for r in inputs])})
            results = [dict(zip(names, parts)) for parts in zip(*(np.split(o, counts) for o in outputs))]
        for result in results:
            if isinstance(result, dict):
                assert set(result) == {t.name for t in config.output}, f"{model} answered {sorted(result)}"
                for key, array in result.items():
                    check_tensor(_declared(config.output, key), array, config.max_batch_size, self.schema)
        return results

    def infer(self, requests: list[list[bytes]]) -> list[dict[str, np.ndarray] | TritonError]:
        """One answer per request (a list of encoded images): the ensemble's outputs, or its error."""
        states: list[Any] = [{"image": np.array([[b] for b in images], dtype=np.object_)} for images in requests]
        for step in self.configs[self.name].ensemble_scheduling.step:
            live = [i for i, s in enumerate(states) if isinstance(s, dict)]
            if not live:
                break
            results = self._run(step.model_name, [{k: states[i][v] for k, v in step.input_map.items()} for i in live])
            for i, result in zip(live, results):
                if isinstance(result, TritonError):
                    states[i] = result
                else:
                    states[i].update({value: result[key] for key, value in step.output_map.items()})
        outputs = [t.name for t in self.configs[self.name].output]
        return [s if isinstance(s, TritonError) else {k: s[k] for k in outputs} for s in states]


def captcha_predict(run: Path, paths: list[Path]) -> list[dict[str, Any]]:
    """`captcha predict RUN PATHS --json`, one dict per image."""
    from captcha.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["predict", str(run), *map(str, paths), "--json", "--device", "cpu"]) == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


def assert_same_answer(answer: dict[str, np.ndarray], row: int, expected: dict[str, Any]) -> None:
    """One image's ensemble outputs against `captcha predict`'s line for it."""
    text = answer["text"][row, 0].decode("utf-8")
    assert text == expected["text"], expected["path"]
    assert answer["confidence"][row, 0] == pytest.approx(expected["confidence"], abs=1e-4)
    chars = answer["char_confidences"][row]
    count = len(expected["char_confidences"])
    np.testing.assert_allclose(chars[:count], expected["char_confidences"], atol=1e-4)
    assert (chars[count:] == -1.0).all()  # the documented padding past the end of the text


# --- runs and their exports ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def captcha_data(tmp_path_factory) -> Path:
    from captcha.generate import GeneratorConfig, generate_dataset

    data = tmp_path_factory.mktemp("triton_data")
    generate_dataset(data, GeneratorConfig(splits={"train": 64, "val": 16, "test": 16}, seed=3))
    return data


def _train(tmp: Path, data: Path, **config: Any) -> Path:
    from captcha.train import TrainConfig, fit

    fit(TrainConfig(data=str(data), out=str(tmp / "run"), epochs=1, cache_dir=str(tmp / "cache"), **config), log=lambda s: None)
    return tmp / "run"


def _export(kind: str, tmp: Path, captcha_data: Path) -> dict[str, Any]:
    """A tiny run of `kind` exported with `export_triton`, and six of its test images."""
    from captcha.export_triton import export_triton

    if kind == "classifier":
        import captcha.classify  # noqa: F401  (registers the classifiers)
        from captcha.classify.recipes import build_recipe
        from captcha.classify.shapes import write_shapes
        from captcha.classify.train import train_classifier

        shapes = write_shapes(tmp / "shapes", per_class=8, size=36, splits=True, mixed_formats=True)
        recipe = build_recipe("default", model="cnn", epochs=[1], input_size=(32, 32), lr=[3e-3], batch_size=16, channels=3)
        train_classifier(shapes, tmp / "run", recipe, device="cpu", log=lambda _line: None, cache_dir=False)
        run, images = tmp / "run", list_images(shapes / "test", recursive=True)
    else:
        run = _train(tmp, captcha_data, head=kind, tta=1 if kind == "ctc" else 5)
        images = list_images(captcha_data / "test")
    written = export_triton(run, tmp / "repo", "captcha", verify_images=4, log=lambda s: None)
    return {"kind": kind, "run": run, "repo": tmp / "repo", "written": written, "images": images[:6]}


@pytest.fixture(scope="module")
def export_of(tmp_path_factory, captcha_data):
    """`export_of(kind)`: the export of a run of that kind, made once per module."""
    made: dict[str, dict[str, Any]] = {}

    def get(kind: str) -> dict[str, Any]:
        if kind not in made:
            made[kind] = _export(kind, tmp_path_factory.mktemp(f"triton_{kind}"), captcha_data)
        return made[kind]

    return get


@pytest.fixture(params=["attention", "ctc", "classifier"])
def exported(request, export_of) -> dict[str, Any]:
    """A fixed-length recognizer (attention head), a CTC recognizer and an image classifier."""
    return export_of(request.param)


@pytest.fixture
def pb_utils(monkeypatch) -> ModuleType:
    module = stand_in_module()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
    return module


# --- tests ---------------------------------------------------------------------------------------

def test_every_config_parses_against_tritons_schema(exported, schema) -> None:
    import onnx
    from google.protobuf import text_format

    repo, written = exported["repo"], exported["written"]
    assert sorted(p.name for p in repo.iterdir()) == ["captcha", "captcha_onnx", "captcha_postprocess", "captcha_preprocess"]
    assert written.ensemble == repo / "captcha" and sorted(written.models) == sorted(repo.iterdir())
    assert written.onnx.path == repo / "captcha_onnx" / "1" / "model.onnx" and written.onnx.agree
    configs = {d.name: parse_config(schema, d / "config.pbtxt") for d in repo.iterdir()}
    assert all(config.name == folder for folder, config in configs.items())  # Triton requires the folder's name
    check_ensemble_wiring(configs, "captcha")
    ensemble, onnx_model = configs["captcha"], configs["captcha_onnx"]
    assert ensemble.platform == "ensemble" and (repo / "captcha" / "1").is_dir() and not ensemble.instance_group
    assert onnx_model.platform == "onnxruntime_onnx" and (repo / "captcha_onnx" / "1" / "model.onnx").is_file()
    assert {c.max_batch_size for c in configs.values()} == {64}
    for model in ("captcha_preprocess", "captcha_onnx", "captcha_postprocess"):
        assert configs[model].HasField("dynamic_batching")
    props = {p.key: p.value for p in onnx.load(str(repo / "captcha_onnx" / "1" / "model.onnx")).metadata_props}
    for model in ("captcha_preprocess", "captcha_postprocess"):
        config = configs[model]
        assert config.backend == "python" and [g.kind for g in config.instance_group] == [schema.ModelInstanceGroup.KIND_CPU]
        assert (repo / model / "1" / "model.py").is_file()
        assert {k: v.string_value for k, v in config.parameters.items()} == {k: v for k, v in props.items() if k != "metrics"}
    assert list(ensemble.output[2].dims) == list(onnx_model.output[0].dims[:1])  # one char confidence per output position
    with pytest.raises(text_format.ParseError, match="max_batch"):  # the schema is strict: a field Triton lacks fails
        text_format.Parse((repo / "captcha" / "config.pbtxt").read_text() + "max_batch: 8\n", schema.ModelConfig())


def test_ensemble_answers_as_captcha_predict(exported, schema, pb_utils) -> None:
    """Three requests of 1, 3 and 2 images (PNG and JPEG files as they are), batched together."""
    paths = exported["images"]
    expected = captcha_predict(exported["run"], paths)
    ensemble = Ensemble(exported["repo"], "captcha", schema)
    groups = [paths[:1], paths[1:4], paths[4:6]]
    answers = ensemble.infer([[p.read_bytes() for p in group] for group in groups])
    rows = [(answer, row) for answer, group in zip(answers, groups) for row in range(len(group))]
    assert len(rows) == len(expected) == len(paths) == 6
    for (answer, row), want in zip(rows, expected):
        assert_same_answer(answer, row, want)
    if exported["kind"] == "classifier":
        assert {a["text"][r, 0].decode() for a, r in rows} <= set(json.loads(ensemble.configs["captcha_postprocess"].parameters["class_names"].string_value))


def test_a_bad_image_fails_its_request_alone(exported, schema, pb_utils) -> None:
    good = exported["images"][0]
    expected = captcha_predict(exported["run"], [good])[0]
    ensemble = Ensemble(exported["repo"], "captcha", schema)
    truncated = good.read_bytes()[:40]
    answers = ensemble.infer([[good.read_bytes()], [good.read_bytes(), b"not an image"], [b""], [truncated], [good.read_bytes()]])
    assert_same_answer(answers[0], 0, expected)
    assert_same_answer(answers[4], 0, expected)
    for answer, reason in zip(answers[1:4], ("image 1 of the request: not a readable image", "image 0 of the request: empty image data",
                                             "image 0 of the request: ")):
        assert isinstance(answer, TritonError) and answer.code() == TritonError.INVALID_ARG
        assert answer.message().startswith(reason)


def test_python_models_run_without_torch(export_of, tmp_path) -> None:
    """Inside Triton only captchakit's torch-free modules are there: the written models import,
    initialise and answer in a fresh interpreter that never loads torch."""
    exported = export_of("attention")
    image = exported["images"][0]
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(TESTS)!r})
        import numpy as np
        from test_triton_export import config_dict, load_python_model, stand_in_module, InferenceRequest, Tensor
        sys.modules["triton_python_backend_utils"] = stand_in_module()
        from google.protobuf import text_format
        from grpc_tools import protoc
        assert protoc.main(["grpc_tools.protoc", "-I{TESTS}", "--python_out={tmp_path}", "{PROTO.name}"]) == 0
        sys.path.insert(0, {str(tmp_path)!r})
        import triton_model_config_pb2 as schema
        repo = __import__("pathlib").Path({str(exported["repo"])!r})
        models = {{}}
        for name in ("captcha_preprocess", "captcha_postprocess"):
            config = text_format.Parse((repo / name / "config.pbtxt").read_text(), schema.ModelConfig())
            models[name] = load_python_model(repo / name, config)
        image = np.array([[open({str(image)!r}, "rb").read()]], dtype=np.object_)
        (pre,) = models["captcha_preprocess"].execute([InferenceRequest([Tensor("image", image)])])
        batch = pre.output_tensors()[0].as_numpy()
        logits = np.zeros((1, 4, 19), np.float32)
        (post,) = models["captcha_postprocess"].execute([InferenceRequest([Tensor("logits", logits)])])
        loaded = sorted(m for m in ("torch", "torchvision", "onnxruntime", "onnx") if m in sys.modules)
        print(json.dumps({{"shape": list(batch.shape), "text": post.output_tensors()[0].as_numpy()[0, 0].decode(), "loaded": loaded}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    from captcha.checkpoint import load_checkpoint  # here: the script above imports this module where torch must not load

    height, width = load_checkpoint(exported["run"] / "best.pt")["meta"]["input_size"]  # the run's reading size
    assert result == {"shape": [1, 1, height, width], "text": "2222", "loaded": []}


def test_cli_replaces_its_own_models_and_keeps_the_rest(export_of, tmp_path, capsys, monkeypatch) -> None:
    exported = export_of("attention")
    import captcha.export_triton
    from captcha.export import register

    repo = tmp_path / "repo"
    (repo / "other" / "1").mkdir(parents=True)
    (repo / "other" / "config.pbtxt").write_text('name: "other"\n')
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["export", str(exported["run"]), "--format", "triton", "--out", str(repo), "--name", "ocr", "--verify-images", "2"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"Verified {repo / 'ocr_onnx' / '1' / 'model.onnx'}" in out and "ocr_preprocess, ocr_onnx, ocr_postprocess" in out
    assert sorted(p.name for p in repo.iterdir()) == ["ocr", "ocr_onnx", "ocr_postprocess", "ocr_preprocess", "other"]
    assert 'name: "ocr_preprocess"' in (repo / "ocr_preprocess" / "config.pbtxt").read_text()
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}

    def fails(*args, **kwargs):
        raise RuntimeError("ONNX Runtime and torch predict different text")

    monkeypatch.setattr(captcha.export_triton, "export_onnx", fails)
    with pytest.raises(RuntimeError, match="different text"):
        args.func(args)
    assert {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before  # the earlier export stands, no staging left
    for name in ("", "a/b", ".hidden", "a b"):
        with pytest.raises(ValueError, match="a Triton model name is one folder name"):
            captcha.export_triton.export_triton(exported["run"], repo, name)
    with pytest.raises(ValueError, match="a file; name the Triton model repository folder"):
        captcha.export_triton.export_triton(exported["run"], repo / "other" / "config.pbtxt")


def test_text_format_strings_round_trip(schema) -> None:
    """Parameter values (alphabets, class names) with quotes, backslashes, newlines and
    non-ASCII characters read back from config.pbtxt exactly as written."""
    from google.protobuf import text_format
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from captcha.export_triton import pbtxt_string

    @settings(max_examples=100, deadline=None)
    @given(st.text(st.characters(blacklist_categories=("Cs",))))
    def round_trip(value: str) -> None:
        config = text_format.Parse(f'name: "m"\nparameters {{\n  key: "k"\n  value: {{ string_value: {pbtxt_string(value)} }}\n}}\n', schema.ModelConfig())
        assert config.parameters["k"].string_value == value

    round_trip()
