"""CTC fine-tuning as a downstream run: the loss goes down on a tiny char corpus, the frontend never
moves, the encoder is frozen for freeze_finetune_updates, the tuned upstream reloads; the task's
vocabulary, greedy decoding and config errors."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from speechssl.data.datadir import write_data_dir
from speechssl.downstream import DownstreamConfig, FinetuneConfig, build_task
from speechssl.downstream.runner import (
    build_model,
    eval_batches,
    load_trained,
    prepare_upstream,
    score_split,
    train_downstream,
)
from speechssl.interop.upstream import load_upstream
from speechssl.models.checkpoint import save_checkpoint
from speechssl.models.model import build_model as build_ssl_model
from speechssl.objectives.ctc import ctc_greedy
from speechssl.objectives.masking import MaskConfig
from speechssl.testing.models import tiny_config
from speechssl.tuning import LoRAConfig, TuningConfig, load_tuned

TEXTS = {"spk1-utt1": "ab ba", "spk1-utt2": "abc", "spk2-utt1": "cab a", "spk2-utt2": "bac"}
FRONTEND = "model.feature_extractor."


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """4 utterances, 0.5-0.8 s, each a different pair of tones, with short char transcripts;
    train = dev = test (the tiny run is selected and scored on what it trained on)."""
    root = tmp_path_factory.mktemp("ctc")
    wav_scp, utt2spk = {}, {}
    rng = np.random.default_rng(0)
    for i, utt in enumerate(TEXTS):
        t = np.arange(int(16000 * (0.5 + 0.1 * i))) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (150 + 90 * i) * t) + 0.2 * np.sin(2 * np.pi * (900 - 70 * i) * t)
        path = root / "audio" / f"{utt}.wav"
        path.parent.mkdir(exist_ok=True)
        sf.write(
            path, (wave + 0.01 * rng.standard_normal(len(t))).astype(np.float32), 16000, subtype="PCM_16"
        )
        wav_scp[utt], utt2spk[utt] = str(path), utt.split("-")[0]
    write_data_dir(root / "corpus", wav_scp, utt2spk=utt2spk, text=TEXTS)
    for split in ("train", "dev", "test"):
        (root / "asr" / split).parent.mkdir(exist_ok=True)
        (root / "asr" / split).symlink_to(root / "corpus")
    return root / "asr"


@pytest.fixture(scope="module")
def upstream_dir(tmp_path_factory) -> Path:
    config = tiny_config()
    torch.manual_seed(0)
    return save_checkpoint(build_ssl_model(config), config, tmp_path_factory.mktemp("up") / "tiny")


def small_config(max_steps: int, freeze: int, tuning: TuningConfig | None = None) -> DownstreamConfig:
    return DownstreamConfig(
        lr=3e-3,
        max_steps=max_steps,
        eval_every=max_steps,
        log_every=max_steps,
        schedule="tri_stage",
        weight_decay=0.0,
        clip_norm=0.0,
        max_batch_seconds=4.0,
        tuning=tuning or TuningConfig(method="full"),
        finetune=FinetuneConfig(
            freeze_finetune_updates=freeze,
            layerdrop=0.0,
            mask=MaskConfig(mask_prob=0.2, mask_length=2, channel_prob=0.1, channel_length=4),
        ),
    )


def mean_loss(model, split: str, config: DownstreamConfig) -> float:
    """Mean CTC loss per utterance over a split (eval mode: no masking, no dropout)."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in eval_batches(model.task, split, config, torch.device("cpu")):
            loss, _ = model(batch)
            total, count = total + float(loss) * len(batch), count + len(batch)
    return total / count


def test_full_finetuning_lowers_the_loss_and_keeps_the_frontend(data, upstream_dir, tmp_path):
    initial = load_upstream(upstream_dir).state_dict()
    config = small_config(max_steps=40, freeze=10)
    out = tmp_path / "exp"
    task = build_task("asr", data, tmp_path / "probe", config)
    untrained = build_model(task, prepare_upstream(upstream_dir, config), config)
    before = mean_loss(untrained, "train", config), score_split(untrained, "train", config)
    best = train_downstream("asr", upstream_dir, data, out, config)
    model = load_trained(out)
    after = mean_loss(model, "train", config), score_split(model, "train", config)
    assert after[0] < 0.6 * before[0], (before, after)
    assert 0.0 <= after[1]["cer"] <= before[1]["cer"] + 1e-9
    assert best["step"] == 40 and int(model.num_micro_batches) == 40
    # EXP/upstream/: the chosen checkpoint's upstream, a checkpoint load_upstream reads
    assert best["tuned_upstream"] == "upstream"
    reloaded = load_upstream(out / "upstream")
    for name, value in reloaded.state_dict().items():
        if name.startswith(FRONTEND):
            assert torch.equal(value, initial[name]), name
    q = "model.encoder.layers.0.attention.q_proj.weight"
    assert not torch.equal(reloaded.state_dict()[q], initial[q])
    # the task's vocabulary and a linear head over it
    assert (out / "task" / "tokens.txt").read_text().split() == ["<blank>", "|", "<unk>", "a", "b", "c"]
    state = load_file(str(out / "checkpoints" / "step_40" / "model.safetensors"))
    assert {k for k in state if k.startswith("head.")} == {"head.out.weight", "head.out.bias"}
    wavs = torch.randn(2, 4000)
    with torch.no_grad():
        for a, b in zip(model.upstream(wavs).hidden_states, reloaded(wavs).hidden_states):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_encoder_frozen_for_freeze_finetune_updates(data, upstream_dir, tmp_path):
    initial = load_upstream(upstream_dir).state_dict()
    out = tmp_path / "exp"
    train_downstream("asr", upstream_dir, data, out, small_config(max_steps=3, freeze=3))
    for name, value in load_upstream(out / "upstream").state_dict().items():
        assert torch.equal(value, initial[name]), f"{name} moved during the frozen updates"
    model = load_trained(out)
    assert model.num_parameters()[0] > sum(p.numel() for p in model.head.parameters())


def test_lora_ctc_writes_tuned_weights_only(data, upstream_dir, tmp_path):
    tuning = TuningConfig(method="lora", lora=LoRAConfig(rank=2))
    out = tmp_path / "exp"
    best = train_downstream(
        "asr", upstream_dir, data, out, small_config(max_steps=4, freeze=0, tuning=tuning)
    )
    model = load_trained(out)
    head = sum(p.numel() for p in model.head.parameters())
    assert model.num_parameters()[0] == head + 2 * 2 * 2 * (
        32 + 32
    )  # 2 layers x (q, v) x rank 2 x (in + out)
    assert best["tuned_upstream"] == "tuned.safetensors" and not (out / "upstream").exists()
    plain = load_upstream(upstream_dir)
    load_tuned(plain, out / "tuned.safetensors")
    wavs = torch.randn(1, 4000)
    with torch.no_grad():
        torch.testing.assert_close(
            plain(wavs).hidden_states[-1], model.upstream(wavs).hidden_states[-1], atol=0, rtol=0
        )


def test_vocab_and_greedy_decoding(tmp_path):
    for split in ("train", "dev", "test"):
        d = tmp_path / "data" / split
        d.mkdir(parents=True)
        (d / "text").write_text("u1 ab  ba\nu2 c\n")
    task = build_task("asr", tmp_path / "data", tmp_path / "exp", DownstreamConfig())
    assert task.tokens.symbols == ["<blank>", "|", "<unk>", "a", "b", "c"]
    assert task._encode("ab ba").tolist() == [3, 4, 1, 4, 3]
    assert task._encode("ax").tolist() == [3, 2]
    assert task._decode([3, 4, 1, 4, 3]) == "ab ba"
    path = torch.tensor([[0, 3, 3, 0, 3, 4, 4, 2, 0], [5, 5, 0, 5, 0, 0, 0, 0, 0]])
    log_probs = torch.nn.functional.one_hot(path, 6).float().log()
    assert ctc_greedy(log_probs, torch.tensor([9, 4])) == [[3, 3, 4, 2], [5, 5]]
    assert task.scores(["ab ba"], ["ab b"]) == {"wer": 0.5, "cer": 0.2}  # 1 of 2 words, 1 of 5 chars


def test_config_errors(data, upstream_dir, tmp_path):
    with pytest.raises(
        ValueError, match="finetune.freeze_finetune_updates must be in \\[0, max_steps=5\\], found 6"
    ):
        small_config(max_steps=5, freeze=6)
    with pytest.raises(ValueError, match="needs a tuning method that trains something; found 'frozen'"):
        small_config(max_steps=5, freeze=0, tuning=TuningConfig(method="frozen"))
    with pytest.raises(ValueError, match="CTC fine-tuning trains a CTC task \\(asr, pr\\); found task 'ks'"):
        train_downstream("ks", upstream_dir, data, tmp_path / "ks", small_config(max_steps=2, freeze=0))
    with pytest.raises(ValueError, match="needs an upstream with a transformer encoder"):
        train_downstream("asr", "fbank", data, tmp_path / "fbank", small_config(max_steps=2, freeze=0))
    assert not (tmp_path / "fbank").exists()
    (tmp_path / "bad" / "train").mkdir(parents=True)
    (tmp_path / "bad" / "train" / "wav.scp").write_text("u1 /nowhere.wav\n")
    with pytest.raises(FileNotFoundError, match="task asr: .*bad/train/text does not exist"):
        train_downstream("asr", upstream_dir, tmp_path / "bad", tmp_path / "out", small_config(2, 0))
    # a resumed run must find the characters it was trained on
    out = tmp_path / "exp"
    train_downstream("asr", upstream_dir, data, out, small_config(max_steps=1, freeze=0))
    (out / "task" / "tokens.txt").write_text("<blank>\n|\n<unk>\nz\n")
    with pytest.raises(ValueError, match="tokens.txt does not match the labels of .*train \\(text\\)"):
        train_downstream("asr", upstream_dir, data, out, small_config(max_steps=2, freeze=0), resume=True)


def test_resume_continues_the_update_count(data, upstream_dir, tmp_path):
    """The update counter travels in the checkpoint: a resumed run knows the frozen updates are over."""
    config = small_config(max_steps=3, freeze=2)
    out = tmp_path / "exp"
    train_downstream("asr", upstream_dir, data, out, config)
    longer = replace(config, max_steps=5, eval_every=5)
    train_downstream("asr", upstream_dir, data, out, longer, resume=True)
    model = load_trained(out, out / "checkpoints" / "step_5")
    assert int(model.num_micro_batches) == 5 and model.num_updates == 5


def test_a_stale_utt2dur_hiding_a_too_short_utterance_is_named(data, upstream_dir, tmp_path):
    """CTC fine-tuning reads audio through its own features(): the utterance whose audio is shorter
    than one frame, though utt2dur said 0.5 s, is named, not reported by batch index."""
    from speechssl.downstream.tasks import DataCheckError

    corpus = tmp_path / "corpus"
    shutil.copytree(data / "train", corpus)
    utt = sorted(TEXTS)[0]
    sf.write(tmp_path / "short.wav", np.zeros(320, dtype=np.float32), 16000, subtype="PCM_16")
    lines = (corpus / "wav.scp").read_text().splitlines()
    (corpus / "wav.scp").write_text(
        "".join(
            f"{utt} {tmp_path / 'short.wav'}\n" if line.split()[0] == utt else f"{line}\n" for line in lines
        )
    )
    (corpus / "utt2dur").write_text("".join(f"{u} 0.5\n" for u in sorted(TEXTS)))
    for split in ("train", "dev", "test"):
        (tmp_path / "asr" / split).parent.mkdir(exist_ok=True)
        (tmp_path / "asr" / split).symlink_to(corpus)
    with pytest.raises(DataCheckError, match=rf"^utterance '{utt}' has 320 samples, shorter than one frame"):
        train_downstream("asr", upstream_dir, tmp_path / "asr", tmp_path / "exp", small_config(2, 1))


def test_a_run_length_from_yaml_or_set_keeps_the_head_only_share(tmp_path):
    """`--set max_steps=100` (or max_steps in the YAML) scales the default 10k of 20k head-only
    updates as --max-steps does, instead of failing on the default count."""
    from speechssl.downstream.finetune import load_finetune_config

    config = load_finetune_config(None, ["max_steps=100"])
    assert config.max_steps == 100 and config.finetune.freeze_finetune_updates == 50
    yaml_file = tmp_path / "ft.yaml"
    yaml_file.write_text("max_steps: 40\n")
    assert load_finetune_config(yaml_file).finetune.freeze_finetune_updates == 20
    stated = load_finetune_config(None, ["max_steps=100", "finetune.freeze_finetune_updates=7"])
    assert stated.finetune.freeze_finetune_updates == 7


def test_a_resumed_run_keeps_its_recorded_head_only_updates():
    """Resuming with a longer --max-steps must not send an upstream that already trains back to
    head-only updates: the recorded count stays unless --set asks for another."""
    from speechssl.downstream.finetune import keep_recorded_freeze, load_finetune_config

    recorded = load_finetune_config(None, max_steps=4)  # 2 head-only updates
    longer = load_finetune_config(None, max_steps=16)  # would be 8
    assert longer.finetune.freeze_finetune_updates == 8
    assert keep_recorded_freeze(longer, recorded).finetune.freeze_finetune_updates == 2
    overrides = ["max_steps=16", "finetune.freeze_finetune_updates=3"]
    kept = keep_recorded_freeze(load_finetune_config(None, overrides), recorded, overrides)
    assert kept.finetune.freeze_finetune_updates == 3
