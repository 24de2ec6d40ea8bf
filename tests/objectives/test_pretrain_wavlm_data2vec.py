"""`speechssl pretrain` with the WavLM and data2vec objectives: a few steps through the CLI, the
checkpoints load as wavlm / data2vec_audio upstreams, the noise dir of `speechssl synth`, and the
option errors (checked before any experiment dir is written)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import speechssl
from speechssl.data.kaldi import read_table
from speechssl.data.synth import SynthConfig, build_noise
from speechssl.features.dump import FeatureReader, build_extractor, dump_features
from speechssl.testing.cli import run_cli
from speechssl.testing.datadirs import make_data_dir
from speechssl.testing.training import TINY_PRETRAIN_ARGS
from speechssl.training.pretrain import load_noise_bank, pretrain
from speechssl.units.kmeans import fit_kmeans, label

CONF = Path(__file__).resolve().parents[2] / "egs" / "mini_synth" / "ssl1" / "conf"
WAVLM, DATA2VEC = CONF / "pretrain_wavlm_tiny.yaml", CONF / "pretrain_data2vec_tiny.yaml"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """train/dev tones with 4-cluster MFCC units, and the synth noise dir (babble from the tones)."""
    root = tmp_path_factory.mktemp("wavlm_data2vec")
    for name, speakers in (("train", 3), ("dev", 2)):
        make_data_dir(root, num_speakers=speakers, utts_per_speaker=2, base_seconds=1.0, name=name)
        dump_features(root / name, build_extractor("mfcc"), root / "feats" / name, progress=False)
    km = fit_kmeans(FeatureReader(root / "feats" / "train"), 4, n_init=1, out_dir=root / "km")
    for name in ("train", "dev"):
        label(FeatureReader(root / "feats" / name), km, root / name / "units", progress=False)
    sources = sorted(read_table(root / "train" / "wav.scp").values())
    build_noise(root / "synth", SynthConfig(out_dir=str(root / "synth"), hours=0.005), sources)
    return root


def _pretrain(corpus, config, out, *extra):
    return run_cli(
        "pretrain", "--config", config, "--train", corpus / "train", "--valid", corpus / "dev",
        "--out", out, "--max-steps", "2", *TINY_PRETRAIN_ARGS, *extra,
    )  # fmt: skip


def test_synth_noise_dir_is_deterministic_and_loads_as_a_noise_bank(corpus, tmp_path):
    noise = corpus / "synth" / "noise" / "train"
    kinds = read_table(noise / "utt2kind")
    assert len(kinds) == 8 and set(kinds.values()) == {"babble", "coloured"}
    bank = load_noise_bank(noise)
    assert bank.clips.shape == (8, 64000) and bool((bank.lengths == 64000).all())
    rms = bank.clips.pow(2).mean(dim=1).sqrt()
    assert torch.allclose(rms, torch.full_like(rms, 0.1), atol=2e-3)  # -20 dBFS
    sources = sorted(read_table(corpus / "train" / "wav.scp").values())
    again = build_noise(tmp_path, SynthConfig(out_dir=str(tmp_path), hours=0.005), sources)
    assert again["clips"] == 8
    for utt, path in read_table(noise / "wav.scp").items():
        assert Path(path).read_bytes() == (tmp_path / "wav" / "noise" / "train" / f"{utt}.wav").read_bytes()


def test_wavlm_pretraining_with_noise_loads_as_a_wavlm_upstream(corpus, tmp_path):
    noise = corpus / "synth" / "noise" / "train"
    code = _pretrain(corpus, WAVLM, tmp_path / "exp", "--units", "units", "--noise", noise,
                     "--set", "wavlm.mixing.mix_prob=1.0")  # fmt: skip
    assert code == 0
    resolved = (tmp_path / "exp" / "config.yaml").read_text()
    assert "wavlm:" in resolved and "num_classes:\n  - 4" in resolved and "noise_prob: 0.5" in resolved
    up = speechssl.load_upstream(tmp_path / "exp" / "checkpoints" / "last")
    assert up.config.family == "wavlm" and up.config.encoder.relative_position_buckets == 32
    assert "head.label_embs_concat" in up.extras["pretraining"]
    events = (tmp_path / "exp" / "tensorboard").rglob("events.*")
    assert any(b"mix_rate" in p.read_bytes() for p in events)  # the health metric is logged


@pytest.mark.slow
def test_data2vec_pretraining_loads_as_a_data2vec_upstream(corpus, tmp_path):
    assert _pretrain(corpus, DATA2VEC, tmp_path / "exp", "--set", "data2vec.average_top_k_layers=2") == 0
    up = speechssl.load_upstream(tmp_path / "exp" / "checkpoints" / "last")
    assert up.config.family == "data2vec_audio" and up.num_layers == 2
    heads = up.extras["pretraining"]
    assert "final_proj.weight" in heads and any(k.startswith("ema.encoder.layers.") for k in heads)
    wavs = torch.randn(1, 16000)
    with torch.no_grad():
        assert len(up(wavs).hidden_states) == 3
    events = (tmp_path / "exp" / "tensorboard").rglob("events.*")
    assert any(b"target_var" in p.read_bytes() for p in events)


@pytest.mark.parametrize(
    ("config", "extra", "message"),
    [
        (DATA2VEC, ("--units", "units"), "data2vec pretraining takes no --units"),
        (WAVLM, (), "WavLM pretraining needs --units NAME"),
        (DATA2VEC, ("--noise", "NOISE"), "--noise is for WavLM pretraining .*family is data2vec_audio"),
        (
            WAVLM,
            ("--units", "units"),
            "wavlm.mixing.noise_prob is 0.5 but no noise dir was given: pass --noise",
        ),
        (WAVLM, ("--units", "units", "--noise", "MISSING"), "noise dir .*nowhere does not exist"),
        (WAVLM, ("--units", "units", "--noise", "dev/units"), "has no wav.scp"),
    ],
)
def test_option_errors_come_before_the_experiment(corpus, tmp_path, config, extra, message):
    swap = {"NOISE": str(corpus / "synth" / "noise" / "train"), "MISSING": str(tmp_path / "nowhere"),
            "dev/units": str(corpus / "dev" / "units")}  # fmt: skip
    kwargs = {"units": []}
    args = [swap.get(a, a) for a in extra]
    if "--units" in args:
        kwargs["units"] = [args[args.index("--units") + 1]]
    if "--noise" in args:
        kwargs["noise_dir"] = args[args.index("--noise") + 1]
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        pretrain(config, corpus / "train", None, tmp_path / "exp", max_steps=1, **kwargs)
    assert not (tmp_path / "exp").exists()


def test_noise_prob_zero_mixes_utterances_without_a_noise_dir(corpus, tmp_path):
    code = _pretrain(
        corpus, WAVLM, tmp_path / "exp", "--units", "units", "--set", "wavlm.mixing.noise_prob=0"
    )
    assert code == 0


def test_an_empty_or_silent_noise_dir_is_refused(corpus, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "wav.scp").write_text("")
    with pytest.raises(ValueError, match="wav.scp lists no recordings"):
        load_noise_bank(empty)
    import soundfile as sf

    silent = tmp_path / "silent"
    silent.mkdir()
    sf.write(silent / "z.wav", [0.0] * 1600, 16000, subtype="PCM_16")
    (silent / "wav.scp").write_text(f"z {silent / 'z.wav'}\n")
    with pytest.raises(ValueError, match="noise recording 'z' .* is silent"):
        load_noise_bank(silent)
