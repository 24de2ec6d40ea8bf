"""CTC fine-tuning: loss goes down on a tiny char corpus, the frontend never moves, the encoder is
frozen for freeze_finetune_updates, outputs reload; vocab, greedy decoding and config errors."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from speechssl.data.datadir import write_data_dir
from speechssl.interop.upstream import Upstream, load_upstream
from speechssl.models.model import build_model
from speechssl.objectives.ctc import ctc_greedy
from speechssl.objectives.masking import MaskConfig
from speechssl.testing.models import tiny_config
from speechssl.training import TrainerConfig
from speechssl.tuning import LoRAConfig, TuningConfig, load_tuned
from speechssl.tuning.ctc_finetune import (
    CharVocab,
    CTCFinetuneConfig,
    build_vocab,
    evaluate_ctc,
    finetune_ctc,
    prepare_ctc_finetune,
)

TEXTS = {"spk1-utt1": "ab ba", "spk1-utt2": "abc", "spk2-utt1": "cab a", "spk2-utt2": "bac"}


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory) -> Path:
    """4 utterances, 0.5-0.8 s, each a different pair of tones, with short char transcripts."""
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
    write_data_dir(root / "train", wav_scp, utt2spk=utt2spk, text=TEXTS)
    return root / "train"


def tiny_upstream() -> Upstream:
    config = tiny_config()
    torch.manual_seed(0)
    return Upstream(build_model(config).eval(), config).eval()


def small_config(max_steps: int, freeze: int, tuning: TuningConfig | None = None) -> CTCFinetuneConfig:
    trainer = TrainerConfig(
        max_steps=max_steps,
        lr=3e-3,
        schedule="tri_stage",
        weight_decay=0.0,
        save_every=max_steps,
        log_every=max_steps,
        num_workers=0,
    )
    return CTCFinetuneConfig(
        trainer=trainer,
        tuning=tuning or TuningConfig(method="full"),
        freeze_finetune_updates=freeze,
        layerdrop=0.0,
        max_batch_seconds=4.0,
        mask=MaskConfig(mask_prob=0.2, mask_length=2, channel_prob=0.1, channel_length=4),
    )


def test_full_finetuning_lowers_the_loss_and_keeps_the_frontend(train_dir, tmp_path):
    upstream = tiny_upstream()
    initial = copy.deepcopy(upstream.state_dict())
    config = small_config(max_steps=40, freeze=10)
    vocab = build_vocab(train_dir, tmp_path / "probe")
    before = evaluate_ctc(prepare_ctc_finetune(copy.deepcopy(upstream), vocab, config), train_dir)
    result = finetune_ctc(upstream, train_dir, tmp_path / "exp", config)
    after = evaluate_ctc(result.model, train_dir)
    assert after["loss"] < 0.6 * before["loss"], (before, after)
    assert 0.0 <= after["cer"] <= before["cer"] + 1e-9
    assert result.train.step == 40 and int(result.model.num_micro_batches) == 40
    for name, value in upstream.state_dict().items():
        if name.startswith("model.feature_extractor."):
            assert torch.equal(value, initial[name]), name
    assert not torch.equal(
        upstream.state_dict()["model.encoder.layers.0.attention.q_proj.weight"],
        initial["model.encoder.layers.0.attention.q_proj.weight"],
    )
    # final/: a loadable upstream checkpoint, the head and the vocabulary
    final = result.final_dir
    assert (
        CharVocab.load(final / "vocab.txt").tokens == vocab.tokens == ["<blank>", "<unk>", "|", "a", "b", "c"]
    )
    assert set(load_file(final / "ctc_head.safetensors")) == {"weight", "bias"}
    reloaded = load_upstream(final / "upstream")
    wavs = torch.randn(2, 4000)
    with torch.no_grad():
        upstream.eval()
        for a, b in zip(upstream(wavs).hidden_states, reloaded(wavs).hidden_states):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_encoder_frozen_for_freeze_finetune_updates(train_dir, tmp_path):
    upstream = tiny_upstream()
    initial = copy.deepcopy(upstream.state_dict())
    result = finetune_ctc(upstream, train_dir, tmp_path / "exp", small_config(max_steps=3, freeze=3))
    for name, value in upstream.state_dict().items():
        assert torch.equal(value, initial[name]), f"{name} moved during the frozen updates"
    assert result.report.trainable > sum(p.numel() for p in result.model.head.parameters())


def test_lora_ctc_writes_tuned_weights_only(train_dir, tmp_path):
    upstream = tiny_upstream()
    plain = copy.deepcopy(upstream)
    tuning = TuningConfig(method="lora", lora=LoRAConfig(rank=2))
    result = finetune_ctc(
        upstream, train_dir, tmp_path / "exp", small_config(max_steps=4, freeze=0, tuning=tuning)
    )
    head = sum(p.numel() for p in result.model.head.parameters())
    assert result.report.trainable == head + 2 * 2 * 2 * (32 + 32)  # 2 layers x (q, v) x rank 2 x (in + out)
    assert not (result.final_dir / "upstream").exists()
    load_tuned(plain, result.final_dir / "tuned.safetensors")
    wavs = torch.randn(1, 4000)
    with torch.no_grad():
        upstream.eval()
        torch.testing.assert_close(
            plain(wavs).hidden_states[-1], upstream(wavs).hidden_states[-1], atol=0, rtol=0
        )


def test_vocab_and_greedy_decoding():
    vocab = CharVocab.from_texts(["ab  ba", "c"])
    assert vocab.tokens == ["<blank>", "<unk>", "|", "a", "b", "c"]
    assert vocab.encode("ab ba").tolist() == [3, 4, 2, 4, 3]
    assert vocab.encode("ax").tolist() == [3, 1]
    assert vocab.decode([3, 4, 2, 4, 3]) == "ab ba"
    path = torch.tensor([[0, 3, 3, 0, 3, 4, 4, 2, 0], [5, 5, 0, 5, 0, 0, 0, 0, 0]])
    log_probs = torch.nn.functional.one_hot(path, 6).float().log()
    assert ctc_greedy(log_probs, torch.tensor([9, 4])) == [[3, 3, 4, 2], [5, 5]]


def test_config_errors(train_dir, tmp_path):
    with pytest.raises(ValueError, match="freeze_finetune_updates must be in \\[0, max_steps=5\\], found 6"):
        small_config(max_steps=5, freeze=6)
    with pytest.raises(ValueError, match="needs a tuning method that trains something; found 'frozen'"):
        small_config(max_steps=5, freeze=0, tuning=TuningConfig(method="frozen"))
    (tmp_path / "bad").mkdir()
    with pytest.raises(FileNotFoundError, match="needs transcripts: .*bad/text does not exist"):
        build_vocab(tmp_path / "bad", tmp_path / "out")
    build_vocab(train_dir, tmp_path / "out")
    (tmp_path / "out" / "vocab.txt").write_text("<blank>\n<unk>\n|\nz\n")
    with pytest.raises(ValueError, match="vocab.txt does not match the characters of"):
        build_vocab(train_dir, tmp_path / "out", resume=True)


def test_resume_continues_the_update_count(train_dir, tmp_path):
    """The micro-batch counter travels in the checkpoint: a resumed run knows the frozen updates are over."""
    config = small_config(max_steps=3, freeze=2)
    finetune_ctc(tiny_upstream(), train_dir, tmp_path / "exp", config)
    longer = replace(config, trainer=replace(config.trainer, max_steps=5, save_every=5))
    result = finetune_ctc(tiny_upstream(), train_dir, tmp_path / "exp", longer, resume=True)
    assert result.train.step == 5 and int(result.model.num_micro_batches) == 5
    assert result.model.num_updates == 5
