"""`speechssl tokens extract`: units equal `kmeans label`'s, dedup and BPE invert, the bitrate by hand,
and `load_upstream("tokens:DIR")` recomputes the same tokens from audio."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from speechssl.data.audio import load_audio
from speechssl.data.datadir import DataDir
from speechssl.errors import OutputExistsError
from speechssl.interop.upstream import load_upstream, upstream_name
from speechssl.models.token_upstream import (
    TokenUpstream,
    dedup,
    expand,
    text_to_units,
    units_to_text,
)
from speechssl.testing.cli import dump_features, kmeans_fit, kmeans_label, run_cli
from speechssl.units.kmeans import nearest_centroid
from speechssl.units.labels import read_labels
from speechssl.units.tokens import TokenConfig, bitrate, decode_tokens, extract_tokens
from tests.units.conftest import make_phone_corpus

K = 8
LAYER = 1


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A perturbed hubert_tiny checkpoint, the phone corpus, k-means (K=8) on its layer 1 and the labels
    `speechssl kmeans label` gives."""
    from speechssl.models.checkpoint import save_checkpoint
    from speechssl.models.model import build_model
    from speechssl.models.presets import hubert_tiny
    from speechssl.testing.models import perturb_

    root = tmp_path_factory.mktemp("tokens")
    data, _ = make_phone_corpus(root / "corpus", num_utts=6)
    torch.manual_seed(0)
    config = hubert_tiny()
    with torch.no_grad():
        model = perturb_(build_model(config), scale=0.05, seed=3)
        ckpt = save_checkpoint(model, config, root / "hubert_tiny")
    feats, km, labels = root / "feats", root / "km", root / "labels"
    assert dump_features(data, feats, "--upstream", ckpt, "--layer", LAYER, feature="upstream") == 0
    assert kmeans_fit(feats, K, km, "--n-init", 2) == 0
    assert kmeans_label(feats, km, labels) == 0
    return {"root": root, "data": data, "ckpt": ckpt, "km": km, "labels": read_labels(labels / "labels")}


def _extract(setup, name: str, *extra) -> Path:
    out = setup["root"] / name
    args = ["--upstream", setup["ckpt"], "--layer", LAYER, "--kmeans", setup["km"], "--data", setup["data"]]
    assert run_cli("tokens", "extract", *args, "--out", out, *extra) == 0
    return out


def test_bitrate_on_hand_computed_fixtures():
    assert bitrate([(100, 64)], 2.0) == 300.0  # 50 tokens/s x 6 bits
    assert bitrate([(100, 1024), (50, 16)], 5.0) == 240.0  # 20 x 10 + 10 x 4
    assert bitrate([(7, 1)], 1.0) == 0.0  # one symbol carries nothing
    with pytest.raises(ValueError, match="seconds must be > 0, found 0"):
        bitrate([(1, 2)], 0)
    with pytest.raises(ValueError, match=r"found \(3, 0\)"):
        bitrate([(3, 0)], 1.0)


def test_dedup_keeps_run_lengths_and_expand_inverts_it():
    assert dedup([5, 5, 5, 2, 2, 5]) == ([5, 2, 5], [3, 2, 1])
    assert dedup([]) == ([], [])
    rng = np.random.default_rng(0)
    for _ in range(20):
        units = rng.integers(0, 4, size=int(rng.integers(1, 60))).tolist()
        values, lengths = dedup(units)
        assert all(a != b for a, b in zip(values, values[1:]))
        assert expand(values, lengths) == units
    with pytest.raises(ValueError, match="2 tokens but 1 run lengths"):
        expand([1, 2], [3])
    with pytest.raises(ValueError, match="run length must be >= 1, found 0"):
        expand([1], [0])


def test_unit_characters_round_trip():
    units = [0, 1, 99, 500, 20991]
    assert text_to_units(units_to_text(units)) == units
    with pytest.raises(ValueError, match=r"'a' \(U\+0061\) is not a unit character"):
        text_to_units("a")


def test_nearest_unit_is_kmeans_label_s_assignment():
    from speechssl.models import token_upstream

    gen = torch.Generator().manual_seed(0)
    x, c = torch.randn(37, 5, generator=gen), torch.randn(11, 5, generator=gen)
    assert token_upstream.nearest_centroid is nearest_centroid  # one implementation for both
    assert torch.equal(nearest_centroid(x, c), ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1))


def test_units_equal_kmeans_label(setup):
    out = _extract(setup, "plain")
    tokens = read_labels(out / "tokens")
    assert tokens == setup["labels"]
    assert decode_tokens(out) == setup["labels"]
    summary = json.loads((out / "tokens.json").read_text())
    frames = sum(len(v) for v in setup["labels"].values())
    seconds = sum(load_audio(u.path).numel() / 16000 for u in DataDir.load(setup["data"]).utterances())
    assert summary["num_frames"] == summary["num_tokens"] == frames
    assert summary["seconds"] == pytest.approx(seconds)
    assert summary["vocab_size"] == K and summary["dedup"] is False and summary["bpe_vocab"] is None
    assert summary["bitrate_bps"] == pytest.approx(frames * math.log2(K) / seconds)
    assert summary["bitrate_bps"] == pytest.approx(summary["frame_bitrate_bps"])
    assert summary["layer"] == LAYER and summary["upstream"] == str(Path(setup["ckpt"]).resolve())
    assert summary["kmeans_fit_note"] is None  # fit on these very features
    assert (out / "centroids.npy").is_file() and not (out / "durations").exists()


def test_dedup_is_invertible_and_lowers_the_bitrate(setup):
    out = _extract(setup, "dedup", "--dedup")
    tokens, durations = read_labels(out / "tokens"), read_labels(out / "durations")
    for utt, labels in setup["labels"].items():
        assert tokens[utt] == dedup(labels)[0] and durations[utt] == dedup(labels)[1]
    assert decode_tokens(out) == setup["labels"]
    summary = json.loads((out / "tokens.json").read_text())
    assert summary["num_tokens"] == sum(len(v) for v in tokens.values()) < summary["num_frames"]
    assert summary["bitrate_bps"] == pytest.approx(summary["num_tokens"] * math.log2(K) / summary["seconds"])
    assert summary["bitrate_bps"] < summary["frame_bitrate_bps"]


def test_bpe_over_units_decodes_back_to_the_labels(setup):
    out = _extract(setup, "bpe", "--dedup", "--bpe-vocab", K + 6)
    summary = json.loads((out / "tokens.json").read_text())
    tokens = read_labels(out / "tokens")
    assert (out / "spm.model").is_file() and not (out / ".units").exists()
    assert all(0 < t < summary["vocab_size"] for ids in tokens.values() for t in ids)  # 0 is <unk>
    assert decode_tokens(out) == setup["labels"]
    deduped = sum(len(dedup(v)[0]) for v in setup["labels"].values())
    assert summary["num_tokens"] == sum(len(v) for v in tokens.values()) < deduped
    V = summary["vocab_size"]
    assert summary["bitrate_bps"] == pytest.approx(summary["num_tokens"] * math.log2(V) / summary["seconds"])


@pytest.mark.parametrize("extra", [(), ("--dedup",), ("--dedup", "--bpe-vocab", K + 6)])
def test_tokens_upstream_recomputes_the_tokens_from_audio(setup, extra):
    out = _extract(setup, "up_" + "_".join(map(str, extra)), *extra)
    tokens = read_labels(out / "tokens")
    up = load_upstream(f"tokens:{out}")
    assert isinstance(up, TokenUpstream) and up.num_layers == 0
    V = json.loads((out / "tokens.json").read_text())["vocab_size"]
    assert up.hidden_dim == V
    utts = DataDir.load(setup["data"]).utterances()[:3]
    wavs = [load_audio(u.path) for u in utts]
    lengths = torch.tensor([w.numel() for w in wavs])
    batch = torch.zeros(len(wavs), int(lengths.max()))
    for i, w in enumerate(wavs):
        batch[i, : w.numel()] = w
    res = up(batch, lengths)
    (x,) = res.hidden_states
    assert x.shape == (3, int(res.lengths.max()), V)
    for i, u in enumerate(utts):
        n = int(res.lengths[i])
        assert n == len(tokens[u.utt_id])
        assert x[i, :n].argmax(-1).tolist() == tokens[u.utt_id]
        assert torch.equal(x[i, :n].sum(-1), torch.ones(n)) and not x[i, n:].any()
    assert not any(p.requires_grad for p in up.parameters())


def test_readable_name_from_the_summary(setup):
    out = _extract(setup, "named", "--dedup", "--bpe-vocab", K + 6)
    assert upstream_name(f"tokens:{out}") == f"hubert_tiny_l{LAYER}_k{K}_dedup_bpe{K + 6}"
    assert upstream_name("tokens:/no/such/tok_dir") == "tok_dir"


def test_errors_are_one_line_and_before_any_output(setup, tmp_path, caplog):
    config = TokenConfig(layer=LAYER)
    data, ckpt, km = setup["data"], setup["ckpt"], setup["km"]
    mfcc, mfcc_km = tmp_path / "mfcc", tmp_path / "mfcc_km"
    assert dump_features(data, mfcc) == 0 and kmeans_fit(mfcc, 4, mfcc_km, "--n-init", 1) == 0
    with pytest.raises(ValueError, match=r"centroids have 39 dims but layer 1 of .* has 64"):
        extract_tokens(data, ckpt, mfcc_km, tmp_path / "a", config)
    assert not (tmp_path / "a").exists()
    with pytest.raises(ValueError, match=r"--bpe-vocab 3 is smaller than the \d+ distinct units"):
        extract_tokens(data, ckpt, km, tmp_path / "b", TokenConfig(layer=LAYER, bpe_vocab=3))
    assert not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="layer must be in 0..2"):
        extract_tokens(data, ckpt, km, tmp_path / "c", TokenConfig(layer=5))
    with pytest.raises(ValueError, match="--layer must be >= 0, found -1"):
        TokenConfig(layer=-1)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="did not write"):
        extract_tokens(data, ckpt, km, tmp_path / "d", config)
    with pytest.raises(FileNotFoundError, match="centroids.npy does not exist"):
        extract_tokens(data, ckpt, tmp_path / "nokm", tmp_path / "e", config)
    with caplog.at_level(logging.WARNING):  # k-means of layer 1, applied to layer 2: said and recorded
        summary = extract_tokens(data, ckpt, km, tmp_path / "f", TokenConfig(layer=2))
    assert "fit on layer 1" in caplog.text and "fit on layer 1" in summary["kmeans_fit_note"]
    assert run_cli("tokens", "extract", "--upstream", ckpt, "--layer", 1, "--kmeans", km, "--data", data,
                   "--out", tmp_path / "d") == 1  # fmt: skip


def test_the_token_upstream_has_nothing_to_tune(setup):
    from speechssl.tuning import TuningConfig, apply_tuning

    up = load_upstream(f"tokens:{_extract(setup, 'tune')}")
    with pytest.raises(ValueError, match="needs an upstream with a transformer encoder.*found TokenUpstream"):
        apply_tuning(up, TuningConfig(method="lora"))
