"""`speechssl downstream tokenizer`: the ASR task's sentencepiece model from a Kaldi text file."""

from __future__ import annotations

import sentencepiece as spm

from speechssl.testing.cli import run_cli


def test_tokenizer_trains_on_transcripts_without_ids(tmp_path, capsys):
    text = tmp_path / "text"
    text.write_text("u1 hello world this is a test\nu2 another sentence of words\nu3 the quick brown fox\n")
    assert (
        run_cli("downstream", "tokenizer", "--text", text, "--vocab-size", "30", "--out", tmp_path / "spm")
        == 0
    )
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "spm" / "spm.model"))
    pieces = {sp.id_to_piece(i) for i in range(sp.get_piece_size())}
    assert not any("u1" in p or "u2" in p for p in pieces)  # utterance ids are not text
    assert run_cli("downstream", "tokenizer", "--text", tmp_path / "none", "--out", tmp_path / "x") == 1
    assert "none do not exist" in capsys.readouterr().err
