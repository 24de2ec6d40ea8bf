"""`speechssl pretrain`: config + data dirs + units -> checkpoints that load as upstreams."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import speechssl
from speechssl.cli.main import main
from speechssl.data.kaldi import read_table, write_table
from speechssl.features.dump import FeatureReader, build_extractor, dump_features
from speechssl.testing.datadirs import make_data_dir
from speechssl.testing.training import TINY_PRETRAIN_ARGS
from speechssl.units.kmeans import fit_kmeans, label

CONF = Path(__file__).resolve().parents[2] / "egs" / "mini_synth" / "ssl1" / "conf"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """train/dev data dirs of tones with 4-cluster MFCC units in units_iter1/."""
    root = tmp_path_factory.mktemp("corpus")
    for name, speakers in (("train", 3), ("dev", 2)):
        make_data_dir(root, num_speakers=speakers, utts_per_speaker=2, base_seconds=1.0, name=name)
        dump_features(root / name, build_extractor("mfcc"), root / "feats" / name, progress=False)
    km = fit_kmeans(FeatureReader(root / "feats" / "train"), 4, n_init=1, out_dir=root / "km")
    for name in ("train", "dev"):
        label(FeatureReader(root / "feats" / name), km, root / name / "units_iter1", progress=False)
    return root


def run_pretrain(corpus, out, *extra):
    return main([
        "pretrain", "--config", str(CONF / "pretrain_hubert_tiny.yaml"), "--train", str(corpus / "train"),
        "--valid", str(corpus / "dev"), "--out", str(out), "--max-steps", "2", *TINY_PRETRAIN_ARGS, *extra,
    ])  # fmt: skip


def test_hubert_pretraining_writes_checkpoints_that_load_as_upstreams(corpus, tmp_path):
    assert run_pretrain(corpus, tmp_path / "exp", "--units", "units_iter1") == 0
    resolved = (tmp_path / "exp" / "config.yaml").read_text()
    assert "num_classes:\n  - 4" in resolved  # taken from the units' dict.txt
    summary = json.loads((tmp_path / "exp" / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["audio_seconds_per_second"] > 0
    up = speechssl.load_upstream(tmp_path / "exp" / "checkpoints" / "last")
    assert up.num_layers == 2 and "head.label_embs_concat" in up.extras["pretraining"]
    assert (tmp_path / "exp" / "checkpoints" / "best").is_symlink()


def test_wav2vec2_pretraining_runs_without_units(corpus, tmp_path):
    code = main([
        "pretrain", "--config", str(CONF / "pretrain_wav2vec2_tiny.yaml"), "--train", str(corpus / "train"),
        "--out", str(tmp_path / "w2v"), "--max-steps", "2", *TINY_PRETRAIN_ARGS,
    ])  # fmt: skip
    assert code == 0
    assert speechssl.load_upstream(tmp_path / "w2v" / "checkpoints" / "last").extras["pretraining"]


def test_label_frame_mismatch_lists_the_utterance_and_both_counts(corpus, tmp_path, capsys):
    bad = tmp_path / "train"
    make_data_dir(tmp_path, num_speakers=3, utts_per_speaker=2, base_seconds=1.0, name="train")
    (bad / "units_iter1").mkdir()
    labels = read_table(corpus / "train" / "units_iter1" / "labels")
    utt = sorted(labels)[1]
    units = labels[utt].split()
    labels[utt] = " ".join(units[:-5])
    write_table(bad / "units_iter1" / "labels", labels)
    (bad / "units_iter1" / "dict.txt").write_text((corpus / "train" / "units_iter1" / "dict.txt").read_text())
    code = main([
        "pretrain", "--config", str(CONF / "pretrain_hubert_tiny.yaml"), "--train", str(bad),
        "--out", str(tmp_path / "exp"), "--units", "units_iter1", "--max-steps", "2", *TINY_PRETRAIN_ARGS,
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert f"{utt}: {len(units) - 5} labels, model gives {len(units)} frames" in err
    assert "units_iter1/labels" in err
    assert not (tmp_path / "exp" / "checkpoints").exists()


def test_config_errors_name_the_key_and_file(corpus, tmp_path, capsys):
    assert run_pretrain(corpus, tmp_path / "a", "--units", "units_iter1", "--set", "trainer.lrr=1") == 1
    # the key came from --set, not from the YAML file: the option is named
    assert (
        "unknown key 'lrr' in --set trainer.lrr=1 (section trainer); did you mean 'lr'?"
        in capsys.readouterr().err
    )
    assert (
        run_pretrain(corpus, tmp_path / "b", "--units", "units_iter1", "--set", "hubert.num_classes=[7]") == 1
    )
    assert "hubert.num_classes [7]" in capsys.readouterr().err
    assert run_pretrain(corpus, tmp_path / "c") == 1
    assert "HuBERT pretraining needs --units" in capsys.readouterr().err


def test_a_fresh_run_refuses_an_experiment_dir_with_checkpoints(corpus, tmp_path, capsys):
    assert run_pretrain(corpus, tmp_path / "exp", "--units", "units_iter1") == 0
    assert run_pretrain(corpus, tmp_path / "exp", "--units", "units_iter1") == 1
    assert "holds checkpoints of an earlier run: resume it (--resume)" in capsys.readouterr().err
    assert run_pretrain(corpus, tmp_path / "exp", "--units", "units_iter1", "--resume") == 0


def test_pretrain_logs_its_data_check_and_its_first_update(corpus, tmp_path, caplog):
    """The start of a run is never silent: the data check is announced, then the first update
    (log_every 100 here, far beyond the run's 2 updates but for the last)."""
    import logging

    with caplog.at_level(logging.INFO, logger="speechssl"):
        assert (
            run_pretrain(corpus, tmp_path / "exp", "--units", "units_iter1", "--set", "trainer.log_every=100")
            == 0
        )
    lines = [r.getMessage() for r in caplog.records]
    check = next(i for i, line in enumerate(lines) if line.startswith("checking the data: "))
    first = next(i for i, line in enumerate(lines) if line.startswith("step 1/2 (50%) | epoch 0 | loss "))
    assert check < first


def test_padding_free_pretraining_runs_and_is_refused_where_it_cannot_hold(corpus, tmp_path, capsys):
    assert (
        run_pretrain(corpus, tmp_path / "exp", "--units", "units_iter1", "--set", "data.padding_free=true")
        == 0
    )
    assert "padding_free: true" in (tmp_path / "exp" / "config.yaml").read_text()
    assert speechssl.load_upstream(tmp_path / "exp" / "checkpoints" / "last").num_layers == 2
    code = main([
        "pretrain", "--config", str(CONF / "pretrain_wavlm_tiny.yaml"), "--train", str(corpus / "train"),
        "--units", "units_iter1", "--out", str(tmp_path / "wavlm"), "--max-steps", "2", *TINY_PRETRAIN_ARGS,
        "--set", "data.padding_free=true",
    ])  # fmt: skip
    assert code == 1
    assert "data.padding_free is for HuBERT and wav2vec 2.0; WavLM runs its transformer padded" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "wavlm" / "checkpoints").exists()


def test_compiled_pretraining_runs(corpus, tmp_path, caplog):
    """trainer.compile (torch.compile with dynamic shapes) through the whole pretraining step, in
    compile_mode reduce-overhead (CUDA graphs on a GPU; skipped on a CPU, with their step marks);
    without static shapes that is said once."""
    import logging

    args = (
        "--units",
        "units_iter1",
        "--set",
        "trainer.compile=true",
        "--set",
        "trainer.compile_mode=reduce-overhead",
    )
    with caplog.at_level(logging.WARNING, logger="speechssl"):
        assert run_pretrain(corpus, tmp_path / "exp", *args) == 0
    summary = json.loads((tmp_path / "exp" / "train_summary.json").read_text())
    assert summary["steps"] == 2
    assert "records CUDA graphs for every batch shape it meets" in caplog.text


def test_static_shapes_pretraining_feeds_the_model_only_its_shapes(corpus, tmp_path, monkeypatch, capsys):
    """data.static_shapes: every training batch the objective sees has one of the sampler's
    (batch, length) shapes, and its labels one width per length; compile_mode needs compile."""
    from speechssl.training.pretrain import BatchObjective

    seen, forward = set(), BatchObjective.forward

    def recording(self, batch):
        if self.training:
            seen.add((tuple(batch.wavs.shape), tuple(batch.targets["units_iter1"].shape)))
        return forward(self, batch)

    monkeypatch.setattr(BatchObjective, "forward", recording)
    args = (
        "--units",
        "units_iter1",
        "--set",
        "data.static_shapes=2",
        "--set",
        "data.max_batch_seconds=4",
        "--set",
        "data.max_seconds=4",
    )
    assert run_pretrain(corpus, tmp_path / "exp", *args, "--max-steps", "6") == 0
    assert 1 < len(seen) <= 2, seen  # 6 utterances of 1-2 s: 2 shapes
    assert all(b * w <= 4 * 16000 for (b, w), _ in seen), seen  # padded seconds within the cap
    assert all(labels == (b, -(-w * 50 // 16000) + 1) for (b, w), labels in seen), seen  # 50 Hz units
    resume = ("--resume", "--max-steps", "7")
    assert run_pretrain(corpus, tmp_path / "exp", *args, *resume, "--set", "data.static_shapes=3") == 1
    assert "data.static_shapes" in capsys.readouterr().err  # other batches: refused on resume
    assert run_pretrain(corpus, tmp_path / "x", *args, "--set", "trainer.compile_mode=reduce-overhead") == 1
    assert "compile_mode reduce-overhead needs compile: true" in capsys.readouterr().err
    assert run_pretrain(corpus, tmp_path / "y", *args, "--set", "data.padding_free=true") == 1
    assert "set one of them" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_wav2vec2_refuses_utterances_too_short_for_two_masked_frames(tmp_path, capsys):
    data = make_data_dir(tmp_path, num_speakers=1, utts_per_speaker=2, base_seconds=0.05, name="short")
    code = main([
        "pretrain", "--config", str(CONF / "pretrain_wav2vec2_tiny.yaml"), "--train", str(data.path),
        "--out", str(tmp_path / "w2v"), "--max-steps", "2", *TINY_PRETRAIN_ARGS,
    ])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert (
        "are shorter than 3 model frames (wav2vec 2.0 needs 2 masked ones) (1040 samples), e.g. spk1-utt1"
        in err
    )
    assert not (tmp_path / "w2v" / "checkpoints").exists()
