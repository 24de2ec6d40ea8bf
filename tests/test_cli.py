"""The `speechssl` entry point: discovers commands and lists them in --help."""

from __future__ import annotations

import subprocess
import sys

from speechssl.cli.main import build_parser, main


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
