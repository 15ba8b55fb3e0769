"""The shape of the code, kept true by tests: layers that point one way, no reaching into another
module's private names, the trainer imported only from above, short functions, and no
measurements in comments.

Everything here reads the source of `captcha/` (and, for imports and comments, `serving/`) with
`ast` and `tokenize`; nothing is trained.
"""

from __future__ import annotations

import ast
import json
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "captcha"
SERVING = ROOT / "serving"

# Every module of `captcha/` and its layer; an import may point to its own layer or a lower one.
# RUNTIME is what reads a trained model (checkpoints, inference, evaluation, the task contract);
# TRAINING is what makes one; TOP the verbs and pipelines that drive both.
UTILITIES, DATA, RUNTIME, TRAINING, TOP = range(5)
LAYERS = {
    "captcha": UTILITIES, "captcha.constants": UTILITIES, "captcha.alphabet": UTILITIES, "captcha.imageio": UTILITIES,
    "captcha.decoding": UTILITIES, "captcha.metrics": UTILITIES, "captcha.plots": UTILITIES, "captcha.tensorboard_log": UTILITIES,
    "captcha.distributed": UTILITIES, "captcha.ema": UTILITIES, "captcha.tta": UTILITIES, "captcha.augment": UTILITIES, "captcha.options": UTILITIES,
    "captcha.parallel": UTILITIES,
    "captcha.fonts": DATA, "captcha.font_packages": DATA, "captcha.generate": DATA, "captcha.synth_stream": DATA, "captcha.preprocess": DATA, "captcha.data": DATA, "captcha.recognition_data": DATA,
    "captcha.models": DATA, "captcha.models._heads": DATA, "captcha.models._registry": DATA, "captcha.models.cnn": DATA,
    "captcha.models.resnet": DATA, "captcha.models.sepnet": DATA, "captcha.models.classifiers": DATA,
    "captcha.classify": DATA, "captcha.classify.data": DATA, "captcha.classify.shapes": DATA,
    "captcha.runtime": RUNTIME, "captcha.checkpoint": RUNTIME, "captcha.pretrained": RUNTIME, "captcha.distill": RUNTIME,
    "captcha.tasks": RUNTIME, "captcha.inference": RUNTIME, "captcha.classify.recipes": RUNTIME, "captcha.classify.evaluate": RUNTIME,
    "captcha.classify.svm": RUNTIME, "captcha.quantize": RUNTIME,
    "captcha.train_config": TRAINING, "captcha.recognition": TRAINING, "captcha.pseudo_labels": TRAINING, "captcha.train": TRAINING,
    "captcha.sweep": TRAINING, "captcha.classify.train": TRAINING, "captcha.classify.sweep": TRAINING,
    "captcha.cli": TOP, "captcha.__main__": TOP, "captcha.export": TOP, "captcha.export_triton": TOP, "captcha.pretrain": TOP, "captcha.classify.cli": TOP,
}
# The modules that may import the trainer: the CLI, the sweeps, pre-training and the
# classification task's entry point (benchmarks and tests, outside the package, may too).
TRAINER_USERS = {"captcha.cli", "captcha.sweep", "captcha.pretrain", "captcha.classify.train", "captcha.classify.sweep"}
MAX_FUNCTION_LINES = 60
# A figure measured in a run: a percentage, a time, or a speed-up.
MEASUREMENT = re.compile(r"\d%|\b\d+(?:\.\d+)?\s?(?:ms|s|sec|seconds|min|minutes)\b|\b\d+(?:\.\d+)?x (?:faster|slower|more|less)\b")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in SOURCES.items()}
# The server sits above the whole library: it may import any layer of `captcha`, but no private
# name and not the trainer. Its generated gRPC stubs are left out (protoc writes them).
SERVING_SOURCES = {_module_name(p): p for p in sorted(SERVING.rglob("*.py")) if not p.name.endswith(("_pb2.py", "_pb2_grpc.py"))}
TREES.update({name: ast.parse(path.read_text(), str(path)) for name, path in SERVING_SOURCES.items()})


def _path(name: str) -> Path:
    return SOURCES.get(name) or SERVING_SOURCES[name]


def _imports(name: str) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) for every import of a `captcha` module in `name`,
    at module level or inside functions."""
    package = name if _path(name).name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names if alias.name.split(".")[0] == "captcha"]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against the package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            if module.split(".")[0] == "captcha":
                names = [alias.name for alias in node.names]
                submodules = [f"{module}.{n}" for n in names if f"{module}.{n}" in SOURCES]
                found.append((node.lineno, module, [n for n in names if f"{module}.{n}" not in SOURCES]))
                found += [(node.lineno, sub, []) for sub in submodules]
    return found


def _is_private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def test_every_module_has_a_layer():
    missing = sorted(set(SOURCES) - set(LAYERS))
    assert not missing, f"give these modules a layer in LAYERS: {missing}"


def test_imports_point_down_the_layers():
    upward = [f"{name}:{line} imports {target} (layer {LAYERS[target]} above {LAYERS[name]})"
              for name in SOURCES for line, target, _ in _imports(name) if target in LAYERS and LAYERS[target] > LAYERS[name]]
    assert not upward, "\n".join(upward)


def test_nothing_imports_another_modules_private_names():
    leaks = []
    for name in [*SOURCES, *SERVING_SOURCES]:
        package = name if _path(name).name == "__init__.py" else name.rpartition(".")[0]
        for line, target, names in _imports(name):
            private_part = next((p for p in target.split(".") if _is_private(p)), None)
            if private_part and not target.startswith(package + ".") and target != name:
                leaks.append(f"{name}:{line} imports the private module {target}")
            leaks += [f"{name}:{line} imports {target}.{n}" for n in names if _is_private(n)]
    assert not leaks, "\n".join(leaks)


def _imported_closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        for _, target, _ in _imports(name):
            for module in (target, target.rpartition(".")[0]):
                if module in SOURCES and module not in seen:
                    seen.add(module)
                    todo.append(module)
    return seen


def test_inference_does_not_depend_on_the_trainer():
    for module in ("captcha.inference", "captcha.classify.evaluate", "captcha.runtime", "captcha.export", *SERVING_SOURCES):
        assert "captcha.train" not in _imported_closure(module), module


def test_only_the_cli_sweeps_and_pretraining_import_the_trainer():
    users = {name for name in SOURCES for _, target, _ in _imports(name) if target == "captcha.train"}
    assert users <= TRAINER_USERS, sorted(users - TRAINER_USERS)


def test_the_model_registry_imports_no_classification_track():
    models = [name for name in SOURCES if name == "captcha.models" or name.startswith("captcha.models.")]
    reached = set().union(*(_imported_closure(name) for name in models))
    assert not {m for m in reached if m.startswith("captcha.classify")}


def test_every_function_is_short():
    long = []
    for name, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length >= MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name} (line {node.lineno}): {length} lines")
    assert not long, "\n".join(long)


def _comments(path: Path) -> list[tuple[int, str]]:
    with open(path) as f:
        return [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(f.readline) if tok.type == tokenize.COMMENT]


def test_the_measurement_pattern_tells_figures_from_facts():
    """The examples live in a data file, so that no line of code carries a measurement."""
    examples = json.loads((Path(__file__).parent / "measurement_examples.json").read_text())
    for figure in examples["figures"]:
        assert MEASUREMENT.search(figure), figure
    for fact in examples["facts"]:
        assert not MEASUREMENT.search(fact), fact


def test_no_measurement_in_a_comment():
    paths = [*SOURCES.values(), *SERVING_SOURCES.values()]
    found = [f"{path.relative_to(ROOT)}:{line}: {text.strip()}" for path in paths for line, text in _comments(path)
             if MEASUREMENT.search(text)]
    assert not found, "figures belong in docs/ or benchmarks/ output:\n" + "\n".join(found)
