"""`captcha.options`: environment-variable fallbacks, positional fields, and configs built from the
parsed flags by field name (what `captcha serve` needs from it)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

import pytest

from captcha.options import add_options, config_from_args, dest_of, given_values, is_positional, option


@dataclass
class Settings:
    paths: list[str] = option(help="input files", metavar="FILE")
    token: str | None = option(None, "bearer token", env="OPTIONS_TEST_TOKEN")
    name: str = option("anon", "a name with a default", env="OPTIONS_TEST_NAME")
    grace_s: float = option(10.0, "seconds to drain", flag="--grace")


@dataclass
class Overrides:
    epochs: int = option(help="no default, but a flag of its own: an optional flag", nargs="+", flag="--epochs")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="test")
    add_options(parser, Settings)
    return parser


def _config(argv: list[str]) -> Settings:
    return config_from_args(_parser().parse_args(argv), Settings)


@pytest.fixture(autouse=True)
def _no_variables(monkeypatch):
    monkeypatch.delenv("OPTIONS_TEST_TOKEN", raising=False)
    monkeypatch.delenv("OPTIONS_TEST_NAME", raising=False)


def test_an_environment_variable_is_read_when_its_flag_is_not_given(monkeypatch) -> None:
    assert _config(["a"]).token is None and _config(["a"]).name == "anon"
    monkeypatch.setenv("OPTIONS_TEST_TOKEN", "from-env")
    assert _config(["a"]).token == "from-env"
    assert _config(["a", "--token", "from-flag"]).token == "from-flag"  # the flag wins
    assert _config(["a", "--token", ""]).token == ""  # even empty: the config refuses it, not the parser


def test_an_empty_environment_variable_stays_empty(monkeypatch) -> None:
    monkeypatch.setenv("OPTIONS_TEST_TOKEN", "")
    monkeypatch.setenv("OPTIONS_TEST_NAME", "")
    config = _config(["a"])
    assert config.token == "" and config.name == ""  # not None, not the default: set but empty


def test_the_help_names_the_environment_variable() -> None:
    text = " ".join(_parser().format_help().split())
    assert "bearer token (default $OPTIONS_TEST_TOKEN)" in text
    assert "a name with a default (default $OPTIONS_TEST_NAME, else anon)" in text


def test_a_field_without_a_default_is_a_positional_argument() -> None:
    assert is_positional(fields(Settings)[0]) and not is_positional(fields(Overrides)[0])  # a flag of its own keeps it a flag
    assert _config(["a", "b"]).paths == ["a", "b"]
    assert _parser().format_usage().endswith("[--grace GRACE] FILE [FILE ...]\n")
    with pytest.raises(SystemExit):
        _parser().parse_args(["--grace", "1"])  # the positional is required
    parser = argparse.ArgumentParser()
    add_options(parser, Overrides)
    assert given_values(parser.parse_args([]), Overrides) == {} and parser.parse_args(["--epochs", "2", "4"]).epochs == [2, 4]


def test_a_field_whose_flag_is_not_its_name_comes_back_by_field_name() -> None:
    grace = next(f for f in fields(Settings) if f.name == "grace_s")
    assert dest_of(grace) == "grace"
    args = _parser().parse_args(["a", "--grace", "3"])
    assert given_values(args, Settings) == {"paths": ["a"], "grace": 3.0}  # keyed by destination
    assert config_from_args(args, Settings).grace_s == 3.0  # by field name
    assert _config(["a"]).grace_s == 10.0  # not given: the field's default


def test_serve_reads_captcha_token_and_refuses_it_empty(monkeypatch) -> None:
    from serving import cli
    from serving.config import ServeConfig

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    serve = lambda *argv: config_from_args(parser.parse_args(["serve", "m.onnx", *argv]), ServeConfig)  # noqa: E731
    monkeypatch.delenv("CAPTCHA_TOKEN", raising=False)
    assert serve() == ServeConfig(models=["m.onnx"])
    monkeypatch.setenv("CAPTCHA_TOKEN", "secret")
    assert serve().token == "secret" and serve("--token", "other").token == "other"
    monkeypatch.setenv("CAPTCHA_TOKEN", "")
    with pytest.raises(ValueError, match=r"the token is empty \(--token \"\" or CAPTCHA_TOKEN set but empty\)"):
        serve().check()
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "m.onnx", "--device", "gpu"])


def test_a_serve_config_made_in_python_refuses_a_device_it_cannot_use() -> None:
    from serving.config import ServeConfig

    with pytest.raises(ValueError, match="--device must be auto, cpu or cuda, not 'gpu'"):
        ServeConfig(models=["m.onnx"], device="gpu").check()
    ServeConfig(models=["m.onnx"], device="cpu").check()
