"""The `speechssl` entry point: discovers commands and lists them in --help."""

from __future__ import annotations

import argparse
import subprocess
import sys

from speechssl.cli.main import _command_word, build_parser, command_names, main


def test_help_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse has no public API
    assert commands, "no command registered"
    for name in commands:
        assert name in out


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "speechssl", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("speechssl ")


def test_every_user_error_class_derives_from_speechssl_error():
    from speechssl.config import ConfigError
    from speechssl.data.audio import AudioError
    from speechssl.data.espeak import EspeakError
    from speechssl.downstream.tasks import DataCheckError
    from speechssl.errors import SpeechSSLError
    from speechssl.interop.fairseq_io import CheckpointKeyError
    from speechssl.interop.safe_pickle import UnsafeCheckpointError
    from speechssl.models.checkpoint import CheckpointError
    from speechssl.training.trainer import BadStepsError
    from speechssl.units.labels import LabelLengthError

    classes = (
        ConfigError,
        AudioError,
        EspeakError,
        DataCheckError,
        CheckpointKeyError,
        UnsafeCheckpointError,
        CheckpointError,
        BadStepsError,
        LabelLengthError,
    )
    for cls in classes:
        assert issubclass(cls, SpeechSSLError), cls
    # the second bases existing callers catch stay
    assert issubclass(ConfigError, ValueError) and issubclass(AudioError, ValueError)
    assert issubclass(CheckpointKeyError, KeyError) and issubclass(BadStepsError, RuntimeError)
    assert issubclass(EspeakError, RuntimeError)


def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
    import argparse

    import pytest

    from speechssl.cli import main as cli_main
    from speechssl.data.espeak import EspeakError
    from speechssl.interop.fairseq_io import CheckpointKeyError

    def parser_running(func):
        parser = argparse.ArgumentParser(prog="speechssl")
        parser.add_argument("-v", "--verbose", action="store_true")
        sub = parser.add_subparsers(dest="command")
        sub.add_parser("demo").set_defaults(func=func)
        return lambda *_: parser

    def espeak(_):
        raise EspeakError("espeak-ng is not installed")

    monkeypatch.setattr(cli_main, "build_parser", parser_running(espeak))
    assert cli_main.main(["demo"]) == 1
    assert capsys.readouterr().err == "speechssl demo: error: espeak-ng is not installed\n"

    def keys(_):
        raise CheckpointKeyError("x.pt: missing keys: a")

    monkeypatch.setattr(cli_main, "build_parser", parser_running(keys))
    assert cli_main.main(["demo"]) == 1
    assert capsys.readouterr().err == "speechssl demo: error: x.pt: missing keys: a\n"

    def bug(_):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli_main, "build_parser", parser_running(bug))
    with pytest.raises(RuntimeError, match="a bug"):
        cli_main.main(["demo"])


def _options_by_command() -> dict[str, set[str]]:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse has no public API
    options: dict[str, set[str]] = {}

    def walk(name, sub):
        options[name] = {opt for action in sub._actions for opt in action.option_strings}  # noqa: SLF001
        for action in sub._actions:  # noqa: SLF001
            if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
                for child, child_parser in action.choices.items():
                    walk(f"{name} {child}", child_parser)

    for name, sub in commands.items():
        walk(name, sub)
    return options


def test_one_name_per_option_across_commands():
    options = _options_by_command()
    assert "--upstream" in options["export"]  # any load_upstream source is --upstream, export included
    for command, names in options.items():
        assert "--checkpoint" not in names, command
        assert "--threads" not in names, f"{command}: torch threads are --num-threads"
    assert "--num-threads" in options["compare"] and "--num-threads" in options["features"]


def test_training_commands_take_num_threads(capsys):
    """pretrain, distill and prune accept --num-threads (several jobs on a small machine need it)
    and refuse a count below 1 in one line before reading anything."""
    import torch

    from speechssl.cli.common import set_num_threads

    for command in ("pretrain", "distill", "prune"):
        args = [command, "--config", "c.yaml", "--train", "d", "--out", "o", "--num-threads", "0"]
        if command != "pretrain":
            args += ["--teacher", "t"]
        assert main(args) == 1
        err = capsys.readouterr().err.strip()
        assert err.endswith("--num-threads must be >= 1, found 0") and "\n" not in err, command
    before = torch.get_num_threads()
    try:
        set_num_threads(1)
        assert torch.get_num_threads() == 1
        set_num_threads(None)  # torch's default stays as it is
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_command_imports_its_own_module_only_and_parses_as_in_the_whole_parser():
    """`speechssl CMD ...` builds CMD's parser alone (the others import torch and most of the
    library for nothing), so each command module must register the command of its own name."""
    whole = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001
    assert sorted(whole) == command_names()
    for name in command_names():
        alone = build_parser(name)._subparsers._group_actions[0].choices  # noqa: SLF001
        assert list(alone) == [name]
        assert alone[name].format_help() == whole[name].format_help()
    probe = """
import sys
from speechssl.cli.main import main
try:
    main(["data", "validate", "--help"])
finally:
    print(sorted(m for m in sys.modules if m.startswith("speechssl.cli.")), "torch._dynamo" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: speechssl data validate")
    last_line = result.stdout.splitlines()[-1]
    assert last_line == "['speechssl.cli.common', 'speechssl.cli.data', 'speechssl.cli.main'] False"
    assert _command_word(["-v", "synth", "--help"]) == "synth"
    assert _command_word(["-v", "--help", "synth"]) is None  # the top-level help, every command listed


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    from speechssl.cli import main as cli_main

    def interrupted(_):
        raise KeyboardInterrupt

    parser = argparse.ArgumentParser(prog="speechssl")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_subparsers(dest="command").add_parser("demo").set_defaults(func=interrupted)
    monkeypatch.setattr(cli_main, "build_parser", lambda *_: parser)
    assert cli_main.main(["demo"]) == 130
    assert capsys.readouterr().err == "speechssl demo: interrupted\n"
