"""`speechssl compare` refuses, while parsing, an --out where the markdown and its JSON twin would be
one file, and --repeats / --seconds / --num-threads that are not above 0 (naming the option)."""

from __future__ import annotations

import pytest

from speechssl.cli.main import main


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--out", "report.json", "argument --out: {out} ends in .json, where the JSON report goes beside"),
        ("--out", "report.JSON", "argument --out: {out} ends in .json"),
        ("--repeats", "0", "argument --repeats: must be a finite number above 0, found 0"),
        ("--seconds", "0", "argument --seconds: must be a finite number above 0, found 0"),
        ("--seconds", "nan", "argument --seconds: must be a finite number above 0, found nan"),
        ("--num-threads", "-1", "argument --num-threads: must be a finite number above 0, found -1"),
    ],
)
def test_bad_values_are_refused_naming_the_option_before_any_model_loads(
    tmp_path, capsys, option, value, message
):
    values = {
        "--out": str(tmp_path / "report.md"),
        option: str(tmp_path / value) if option == "--out" else value,
    }
    args = ["compare", "--upstreams", f"a={tmp_path / 'no_model'}"]
    for name, given in values.items():
        args += [name, given]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert message.format(out=tmp_path / value) in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
