"""`speechssl compare`: parameters and counted MACs of teacher vs smaller models."""

from __future__ import annotations

import json
from dataclasses import replace

from speechssl.cli.main import main
from speechssl.compression.report import count_macs
from speechssl.interop.upstream import load_upstream
from speechssl.models import build_model, get_preset, save_checkpoint


def test_compare_counts_parameters_and_macs_of_pruned_layers(tmp_path):
    teacher = get_preset("hubert_tiny")
    enc = teacher.encoder
    pruned = replace(teacher, encoder=replace(enc, layer_num_heads=[2, 0], layer_ffn_dims=[64, 32]))
    save_checkpoint(build_model(teacher), teacher, tmp_path / "teacher")
    save_checkpoint(build_model(pruned), pruned, tmp_path / "pruned")
    out = tmp_path / "compare.md"
    assert main(["compare", "--upstreams", f"teacher={tmp_path / 'teacher'}", f"pruned={tmp_path / 'pruned'}",
                 "--seconds", "1", "--repeats", "1", "--out", str(out)]) == 0  # fmt: skip
    rows = {r["name"]: r for r in json.loads(out.with_suffix(".json").read_text())}
    assert rows["pruned"]["params"] < rows["teacher"]["params"]
    assert rows["pruned"]["macs_per_audio_second"] < rows["teacher"]["macs_per_audio_second"]
    assert "| pruned |" in out.read_text()

    # the attention and feed-forward MACs that pruning removed, counted by hand for 1 s (49 frames)
    T, D, d = 49, enc.embed_dim, enc.embed_dim // enc.num_heads
    removed = (  # layer 1: 2 of 4 heads, ffn 128 -> 64; layer 2: no attention, ffn 128 -> 32
        2 * (4 * D * d * T + 2 * T * T * d) + 2 * D * 64 * T
        + 4 * (4 * D * d * T + 2 * T * T * d) + 2 * D * 96 * T
    )  # fmt: skip
    full = count_macs(load_upstream(tmp_path / "teacher"), 1.0)
    assert full - count_macs(load_upstream(tmp_path / "pruned"), 1.0) == removed


def test_bad_upstream_item_is_a_one_line_error(tmp_path, capsys):
    assert main(["compare", "--upstreams", "teacher", "--out", str(tmp_path / "x.md")]) == 1
    assert "NAME=SOURCE" in capsys.readouterr().err
