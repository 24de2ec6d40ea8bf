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


def test_a_vocabulary_too_small_or_no_transcript_is_one_line_naming_the_file(tmp_path, capsys):
    """sentencepiece's own checks surface as one line naming the user's transcripts and the least
    vocabulary that trains, exit 1, and no --out is made for input that cannot train."""
    text = tmp_path / "text"
    text.write_text("u1 hello world\nu2 foo bar\n")

    def tokenizer(text, vocab, out):
        args = ("--text", text, "--vocab-size", vocab, "--out", tmp_path / out)
        return run_cli("downstream", "tokenizer", *args)

    assert tokenizer(text, "3", "a") == 1
    err = capsys.readouterr().err
    assert f"sentencepiece cannot train 3 pieces on {text}: the transcripts need at least 13" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()  # built in a temp sibling: nothing made on failure
    assert tokenizer(text, "13", "a") == 0
    model = (tmp_path / "a" / "spm.model").read_bytes()
    assert run_cli("downstream", "tokenizer", "--text", text, "--vocab-size", "3", "--overwrite",
                   "--out", tmp_path / "a") == 1  # fmt: skip
    assert (tmp_path / "a" / "spm.model").read_bytes() == model  # a failed --overwrite keeps the old one
    assert tokenizer(text, "0", "b") == 1
    assert "vocabulary size must be positive" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.write_text("u1\nu2  \n")
    assert tokenizer(empty, "10", "c") == 1
    assert f"{empty}: no transcript" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_transcripts_with_no_usable_line_name_why(tmp_path, capsys):
    """sentencepiece skips lines over 4192 bytes: when that is every line its own error has no text."""
    text = tmp_path / "text"
    text.write_text(f"u1 {'ab ' * 1500}\n")
    assert (
        run_cli("downstream", "tokenizer", "--text", text, "--vocab-size", "30", "--out", tmp_path / "o") == 1
    )
    assert f"on {text}: no line it can use (it skips lines over 4192 bytes" in capsys.readouterr().err


def test_a_directory_or_latin1_text_is_named(tmp_path, capsys):
    def tokenizer(text):
        args = ("--text", text, "--vocab-size", "30", "--out", tmp_path / "o")
        return run_cli("downstream", "tokenizer", *args)

    assert tokenizer(tmp_path) == 1
    assert f"transcripts {tmp_path} is a directory" in capsys.readouterr().err
    text = tmp_path / "text"
    text.write_bytes(b"u1 caf\xe9 au lait\n")
    assert tokenizer(text) == 1
    assert f"{text}:1: is not valid UTF-8" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
