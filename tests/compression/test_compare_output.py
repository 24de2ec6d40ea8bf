"""`speechssl compare --out`: the output-path rule (re-run replaces its own table, never the user's)."""

from __future__ import annotations

from speechssl.cli.main import main
from speechssl.models import build_model, get_preset, save_checkpoint


def test_compare_refuses_a_file_it_did_not_write_before_timing_anything(tmp_path, capsys, monkeypatch):
    config = get_preset("hubert_tiny")
    save_checkpoint(build_model(config), config, tmp_path / "teacher")
    out = tmp_path / "compare.md"
    out.write_text("my notes")
    import speechssl.cli.compare as cli_compare

    monkeypatch.setattr(
        cli_compare, "compare_upstreams", lambda *a, **k: (_ for _ in ()).throw(AssertionError("timed"))
    )
    args = ["compare", "--upstreams", f"teacher={tmp_path / 'teacher'}", "--seconds", "0.5", "--repeats", "1",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 1
    assert "compare.md already exists" in capsys.readouterr().err
    assert out.read_text() == "my notes"
    monkeypatch.undo()
    assert main([*args, "--overwrite"]) == 0
    assert main(args) == 0  # compare wrote it: a re-run replaces it
    out.write_text(out.read_text() + "edited\n")
    assert main(args) == 1  # edited since: not compare's any more


def test_compare_never_writes_over_a_file_of_a_compared_model(tmp_path, capsys):
    config = get_preset("hubert_tiny")
    save_checkpoint(build_model(config), config, tmp_path / "teacher")
    before = (tmp_path / "teacher" / "config.yaml").read_bytes()
    args = ["compare", "--upstreams", f"teacher={tmp_path / 'teacher'}", "--seconds", "0.5", "--repeats", "1",
            "--out", str(tmp_path / "teacher" / "config.md"), "--overwrite"]  # fmt: skip
    (tmp_path / "teacher" / "config.json").write_text("{}")  # the .json twin would land here
    assert main(args) == 1
    assert (
        "(an input of this command); compare never writes over it, even with --overwrite"
        in capsys.readouterr().err
    )
    assert (tmp_path / "teacher" / "config.yaml").read_bytes() == before
    assert (tmp_path / "teacher" / "config.json").read_text() == "{}"
