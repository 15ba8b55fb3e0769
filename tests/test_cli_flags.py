"""Training flags are built from the config dataclasses (`captcha.options`), and they are still
the flags users typed before: the same names, defaults, choices and arities (tests/cli_flags.json
holds the parsers' flags as they were when each one was written by hand in `captcha/cli.py`)."""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

import pytest

CLI = Path(__file__).resolve().parent.parent / "captcha" / "cli.py"


def _hand_written_flags(tree: ast.AST) -> dict[str, list[str]]:
    """verb -> the `--flags` added with `add_argument` after `add_parser(verb)`, in source order."""
    verb, flags = None, {}
    calls = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.args),
                   key=lambda n: (n.lineno, n.col_offset))
    for node in calls:
        first = node.args[0]
        if node.func.attr == "add_parser" and isinstance(first, ast.Constant):
            verb = first.value
        elif node.func.attr == "add_argument" and isinstance(first, ast.Constant) and str(first.value).startswith("--"):
            flags.setdefault(verb, []).append(first.value)
    return flags


def test_cli_declares_no_training_flag_by_hand():
    from captcha.train import TrainConfig

    tree = ast.parse(CLI.read_text())
    functions = {node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    assert not _hand_written_flags(functions["_add_training_flags"])
    by_verb = _hand_written_flags(tree)
    assert not by_verb.get("train") and not by_verb.get("sweep")
    assert {"generate", "models", "evaluate"} <= set(by_verb)  # the scan does see the other verbs' flags
    fields = {f"--{name.replace('_', '-')}" for name in TrainConfig.__dataclass_fields__}
    assert fields & set(by_verb["generate"])  # generate's --alphabet, --length, --seed are its own, not training flags


def _subparser(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def _describe(parser: argparse.ArgumentParser) -> dict[str, dict]:
    """What a user can type: each flag's spellings, destination, default, choices and arity."""
    out = {}
    for a in parser._actions:
        if not a.option_strings or isinstance(a, argparse._HelpAction):
            continue
        out[a.option_strings[0]] = json.loads(json.dumps({
            "options": list(a.option_strings), "dest": a.dest, "default": a.default,
            "choices": list(a.choices) if a.choices is not None else None, "nargs": a.nargs, "const": a.const,
            "required": a.required, "type": getattr(a.type, "__name__", None), "action": type(a).__name__,
            "metavar": list(a.metavar) if isinstance(a.metavar, tuple) else a.metavar,
        }, default=list))
    return out


# Flags added since the flags were generated from the dataclasses: classifiers resume and keep an EMA;
# --compile: training steps compiled with torch.compile (issue #36); --ink-curves: occlusion practice (issue #35).
NEW_FLAGS = {"classify train": {"--resume", "--ema"}, "train": {"--compile", "--validate-from", "--ink-curves"},
             "sweep": {"--compile", "--validate-from", "--ink-curves"},
             "pretrain": {"--stream", "--workers", "--input-size"}}  # pre-training on the synthetic stream, at any size (issue #35)


@pytest.mark.parametrize("verb", ["train", "sweep", "pretrain", "classify train", "classify sweep"])
def test_generated_flags_are_the_flags_users_typed_before(verb):
    from captcha.cli import build_parser

    before = json.loads((Path(__file__).parent / "cli_flags.json").read_text())[verb]
    now = _describe(_subparser(build_parser(), *verb.split()))
    assert set(now) - set(before) == NEW_FLAGS.get(verb, set())
    for flag, spec in before.items():
        assert flag in now, f"{verb} {flag} is gone"
        # A registry may gain entries (a new model is a new --model choice, and one more row of
        # sweep's default grid); none may go.
        for key in ("choices", "default"):
            was, listed = spec.pop(key), now[flag].pop(key)
            if isinstance(was, list) and isinstance(listed, list):
                assert set(was) <= set(listed), f"{verb} {flag} lost a {key}"
            else:
                assert listed == was, f"{verb} {flag} changed its {key}"
        assert now[flag] == spec, f"{verb} {flag} changed"


def test_the_train_and_sweep_flags_are_the_config_fields():
    from captcha.cli import build_parser
    from captcha.options import cli_fields, flag_of
    from captcha.sweep import GridConfig
    from captcha.train import TrainConfig

    parser = build_parser()
    assert set(_describe(_subparser(parser, "train"))) == {flag_of(f) for f in cli_fields(TrainConfig)}
    sweep = {flag_of(f) for f in cli_fields(TrainConfig, skip=("model", "preprocess", "out", "resume"))}
    assert set(_describe(_subparser(parser, "sweep"))) == sweep | {flag_of(f) for f in cli_fields(GridConfig)}
