"""wav2vec 2.0-style CTC fine-tuning of a whole upstream on characters.

As fairseq's `audio_finetuning` with `wav2vec_ctc` (configs base_10h, ...):
a linear CTC head on the encoder output (`final_proj`, after `final_dropout`),
the conv frontend frozen (feature_grad_mult 0), the whole upstream run under
no_grad for the first `freeze_finetune_updates` updates so only the head
learns, time/channel masking and LayerDrop while training, a tri-stage
schedule, loss summed over frames and averaged over utterances
(sentence_avg), zero_infinity. Characters with a word separator "|" and the
blank at index 0. Any tuning method can stand in for "full" (e.g. LoRA + CTC).

    result = finetune_ctc(load_upstream(src), "data/train", "exp/ft", CTCFinetuneConfig(),
                          valid_dir="data/dev")
    scores = evaluate_ctc(result.model, "data/test")   # {"loss": ..., "cer": ...}
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import torch
import torchaudio
import yaml
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader

from speechssl.config import from_dict, load_config, to_dict
from speechssl.data.batching import BatchingConfig, build_loader
from speechssl.data.dataset import AudioDataset, Batch
from speechssl.data.kaldi import read_table
from speechssl.interop.upstream import Upstream, normalize_waveform
from speechssl.io import atomic_file, atomic_write_text
from speechssl.models.checkpoint import save_checkpoint
from speechssl.models.frontends import lengths_to_padding_mask
from speechssl.objectives.ctc import ctc_greedy, ctc_loss
from speechssl.objectives.masking import MaskConfig, compute_channel_mask, compute_time_mask
from speechssl.training import TrainerConfig, TrainResult
from speechssl.training.checkpoints import seed_everything
from speechssl.training.distributed import env_rank, env_world_size
from speechssl.training.experiment import RESUMABLE_KEYS, experiment
from speechssl.training.trainer import train_on_loaders
from speechssl.tuning.methods import TuningConfig, TuningReport, apply_tuning, count_parameters, save_tuned

log = logging.getLogger(__name__)

BLANK, UNK, SEPARATOR = "<blank>", "<unk>", "|"
TEXT = "text"  # the dataset target that holds the encoded transcript
PAD = -1  # padding of the encoded transcripts in a batch


def _default_trainer() -> TrainerConfig:
    # fairseq base_10h: lr 5e-5, 20k updates, tri-stage 0.1/0.4/0.5, adam eps 1e-8, no weight decay
    return TrainerConfig(
        max_steps=20000,
        lr=5e-5,
        schedule="tri_stage",
        tri_stage_ratios=(0.1, 0.4, 0.5),
        eps=1e-8,
        weight_decay=0.0,
        save_every=1000,
        log_every=200,
    )


def _default_mask() -> MaskConfig:
    # fairseq base_10h: mask_prob 0.65 (length 10), mask_channel_prob 0.5 (length 64)
    return MaskConfig(mask_prob=0.65, mask_length=10, channel_prob=0.5, channel_length=64)


@dataclass(frozen=True, kw_only=True)
class CTCFinetuneConfig:
    RENAMED_KEYS: ClassVar[dict[str, str]] = {
        "batch_seconds": "max_batch_seconds"
    }  # old YAMLs: one-line hint
    trainer: TrainerConfig = field(default_factory=_default_trainer)
    tuning: TuningConfig = field(default_factory=lambda: TuningConfig(method="full"))
    freeze_finetune_updates: int = 10000  # fairseq: updates during which only the head trains
    mask: MaskConfig = field(default_factory=_default_mask)  # applied in training only
    apply_mask: bool = True  # fairseq: apply_mask
    # fairseq: layerdrop (of the encoder while fine-tuning); None: keep the model's
    layerdrop: float | None = 0.1
    final_dropout: float = 0.0  # fairseq: final_dropout (before the CTC head)
    max_batch_seconds: float = 200.0  # padded audio per batch and rank (fairseq max_tokens 3.2M samples)
    max_batch_size: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.freeze_finetune_updates <= self.trainer.max_steps:
            raise ValueError(
                f"freeze_finetune_updates must be in [0, max_steps={self.trainer.max_steps}], "
                f"found {self.freeze_finetune_updates}"
            )
        if self.layerdrop is not None and not 0 <= self.layerdrop < 1:
            raise ValueError(f"layerdrop must be in [0, 1) or null, found {self.layerdrop}")
        if not 0 <= self.final_dropout < 1:
            raise ValueError(f"final_dropout must be in [0, 1), found {self.final_dropout}")
        self.batching()  # validates max_batch_seconds and max_batch_size
        if self.tuning.method == "frozen":
            raise ValueError(
                "CTC fine-tuning needs a tuning method that trains something; found 'frozen' "
                "(use `speechssl downstream` for frozen-upstream evaluation)"
            )

    def batching(self) -> BatchingConfig:
        """The batching settings (utterances are never cropped)."""
        return BatchingConfig(max_batch_seconds=self.max_batch_seconds, max_batch_size=self.max_batch_size)


# ----------------------------------------------------------------------------- characters


class CharVocab:
    """Characters of the training transcripts; index 0 = blank, 1 = <unk>, words joined by "|"."""

    def __init__(self, tokens: list[str]) -> None:
        if tokens[:2] != [BLANK, UNK] or len(set(tokens)) != len(tokens):
            raise ValueError(
                f"a char vocab starts with {BLANK}, {UNK} and has no duplicates; found {tokens[:5]}..."
            )
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}

    @classmethod
    def from_texts(cls, texts: list[str]) -> CharVocab:
        chars = sorted({c for t in texts for c in SEPARATOR.join(t.split())} - {SEPARATOR})
        return cls([BLANK, UNK, SEPARATOR, *chars])

    @classmethod
    def load(cls, path: str | Path) -> CharVocab:
        return cls(Path(path).read_text(encoding="utf-8").splitlines())

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, "".join(t + "\n" for t in self.tokens))

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> Tensor:
        """'ab cd' -> long (chars,) over 'a b | c d'; unknown characters map to <unk>."""
        unk = self.index[UNK]
        return torch.tensor([self.index.get(c, unk) for c in SEPARATOR.join(text.split())], dtype=torch.long)

    def decode(self, ids: list[int]) -> str:
        return "".join(self.tokens[i] for i in ids if i > 1).replace(SEPARATOR, " ").strip()


# ----------------------------------------------------------------------------- model


class CTCFinetuneModel(nn.Module):
    """Upstream encoder + dropout + Linear CTC head; forward(batch) -> (loss, metrics) for the Trainer.

    Counts its training micro-batches in a buffer (saved in checkpoints, so a resumed
    run knows how many updates are done) to know when `freeze_finetune_updates` is over."""

    def __init__(self, upstream: Upstream, vocab: CharVocab, config: CTCFinetuneConfig) -> None:
        super().__init__()
        self.upstream = upstream
        self.vocab = vocab
        self.config = config
        self.final_dropout = nn.Dropout(config.final_dropout)
        self.head = nn.Linear(upstream.hidden_dim, len(vocab))  # fairseq: w2v_encoder.proj; HF: lm_head
        self.register_buffer("num_micro_batches", torch.zeros((), dtype=torch.long))
        self._count: int | None = None  # host mirror of the buffer: no device sync per step
        self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "_count", None))

    @property
    def num_updates(self) -> int:
        if self._count is None:
            self._count = int(self.num_micro_batches)
        return self._count // self.config.trainer.accum_steps

    def encode(self, wavs: Tensor, wav_lens: Tensor) -> tuple[Tensor, Tensor]:
        """wavs: (B, S), wav_lens: (B,) -> encoder output (B, T, D), frames (B,); masked in training."""
        up, model = self.upstream, self.upstream.model
        if up.config.normalize_waveform:
            wavs = normalize_waveform(wavs, wav_lens)
        feats, lengths, padded = model.frontend_forward(wavs, wav_lens)  # (B, T, C), (B,)
        B, T, _ = feats.shape  # batch, frames, channels
        padding_mask = lengths_to_padding_mask(lengths, T)  # (B, T)
        x, _ = model.feature_projection(feats)  # (B, T, D)
        if self.training and self.config.apply_mask:
            time_mask = (
                compute_time_mask(lengths, T, self.config.mask) if self.config.mask.mask_prob > 0 else None
            )
            channel_mask = compute_channel_mask(B, x.shape[-1], self.config.mask, device=x.device)
            x = model.apply_masks(x, time_mask, channel_mask)
        last, _ = model.encoder_forward(x, padding_mask if padded else None)  # (B, T, D)
        return last, lengths

    def log_probs(self, wavs: Tensor, wav_lens: Tensor, *, frozen: bool = False) -> tuple[Tensor, Tensor]:
        """(B, T, V) float32 log-probabilities and frames (B,); `frozen`: the upstream runs without grad."""
        with torch.no_grad() if frozen else contextlib.nullcontext():
            x, lengths = self.encode(wavs, wav_lens)
        return self.head(self.final_dropout(x)).float().log_softmax(dim=-1), lengths

    def forward(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """batch: wavs (B, S), wav_lens (B,), the "text" target (B, L) padded with -1 and its lengths."""
        frozen = False
        if self.training:
            frozen = self.num_updates < self.config.freeze_finetune_updates
            self._count = (self._count or 0) + 1  # num_updates read it from the buffer above
            self.num_micro_batches.add_(1)
        log_probs, lengths = self.log_probs(batch.wavs, batch.wav_lens, frozen=frozen)  # (B, T, V)
        targets, target_lens = batch.targets[TEXT], batch.target_lens[TEXT]  # (B, L), (B,)
        loss = ctc_loss(log_probs, lengths, targets, target_lens)
        metrics: dict[str, Tensor] = {}
        if not self.training:
            errors, chars = char_errors(log_probs, lengths, targets, target_lens)
            metrics["cer"] = torch.tensor(errors / max(chars, 1))
        return loss, metrics


def char_errors(log_probs: Tensor, lengths: Tensor, targets: Tensor, target_lens: Tensor) -> tuple[int, int]:
    """(edit distance of the greedy hypotheses, reference length), summed over the batch."""
    errors = chars = 0
    for b, hyp in enumerate(ctc_greedy(log_probs.detach(), lengths)):
        ref = targets[b, : int(target_lens[b])].tolist()
        errors += torchaudio.functional.edit_distance(hyp, ref)
        chars += len(ref)
    return errors, chars


# ----------------------------------------------------------------------------- data and runs


def _dataset(data_dir: str | Path, vocab: CharVocab, role: str = "evaluation") -> AudioDataset:
    text = Path(data_dir) / "text"
    if not text.is_file():
        raise FileNotFoundError(f"CTC fine-tuning needs transcripts: {text} does not exist")
    dataset = AudioDataset(data_dir, targets={TEXT: text}, target_transforms={TEXT: vocab.encode})
    if len(dataset) == 0:  # found now, not at the first checkpoint
        raise ValueError(
            f"{role} data dir {data_dir} holds no utterances: its wav.scp is empty;"
            f" give a non-empty {role} set"
        )
    return dataset


def _loader(dataset: AudioDataset, config: CTCFinetuneConfig, *, train: bool) -> DataLoader:
    return build_loader(
        dataset,
        config.batching(),
        train=train,
        seed=config.trainer.seed,
        rank=env_rank(),
        world_size=env_world_size(),
        target_pad_value=PAD,
    )


def build_vocab(train_dir: str | Path, out_dir: str | Path, *, resume: bool = False) -> CharVocab:
    """Characters of train_dir/text, written to out_dir/vocab.txt (a resumed run must find the same)."""
    vocab = check_vocab(train_dir, out_dir, resume=resume)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    vocab.save(Path(out_dir) / "vocab.txt")
    return vocab


def check_vocab(train_dir: str | Path, out_dir: str | Path, *, resume: bool = False) -> CharVocab:
    """`build_vocab` without the write: the characters, checked against a resumed run's vocab.txt."""
    text = Path(train_dir) / "text"
    if not text.is_file():
        raise FileNotFoundError(f"CTC fine-tuning needs transcripts: {text} does not exist")
    vocab = CharVocab.from_texts(list(read_table(text).values()))
    path = Path(out_dir) / "vocab.txt"
    if path.is_file() and resume:
        saved = CharVocab.load(path)
        if saved.tokens != vocab.tokens:
            raise ValueError(
                f"{path} does not match the characters of {text}; resume with the same training data"
            )
    return vocab


def prepare_ctc_finetune(upstream: Upstream, vocab: CharVocab, config: CTCFinetuneConfig) -> CTCFinetuneModel:
    """Apply `config.tuning` to `upstream` (in place), set LayerDrop, add the CTC head (seeded)."""
    seed_everything(config.trainer.seed)
    apply_tuning(upstream, config.tuning)
    if config.layerdrop is not None:
        upstream.model.encoder.layerdrop = config.layerdrop
    return CTCFinetuneModel(upstream, vocab, config)


@dataclass(frozen=True)
class CTCFinetuneResult:
    model: CTCFinetuneModel
    report: TuningReport  # trainable parameters of the whole model (upstream + head)
    train: TrainResult
    final_dir: Path  # upstream/ (full) or tuned.safetensors, ctc_head.safetensors, vocab.txt


def finetune_ctc(
    upstream: Upstream,
    train_dir: str | Path,
    out_dir: str | Path,
    config: CTCFinetuneConfig,
    *,
    valid_dir: str | Path | None = None,
    resume: bool | Path = False,
    begin: Callable[[], None] | None = None,
) -> CTCFinetuneResult:
    """Fine-tune `upstream` (in place) with a character CTC head on a Kaldi data dir with `text`.

    Writes out_dir/vocab.txt, checkpoints/ and tensorboard/ (the Trainer), and out_dir/final/:
    `upstream/` (a speechssl checkpoint dir, for "full") or `tuned.safetensors` (other methods),
    plus `ctc_head.safetensors` and `vocab.txt`. The data is checked before anything is written;
    `begin` then runs first (Experiment.begin)."""
    out_dir = Path(out_dir)
    vocab = check_vocab(train_dir, out_dir, resume=bool(resume))
    model = prepare_ctc_finetune(upstream, vocab, config)
    report = count_parameters(model)
    log.info("CTC fine-tuning %s; head over %d characters", report, len(vocab))
    trainer_config = config.trainer
    if config.freeze_finetune_updates > 0 and trainer_config.find_unused_parameters is None:
        trainer_config = replace(
            trainer_config, find_unused_parameters=True
        )  # DDP: frozen updates skip the encoder
    train_set = _dataset(train_dir, vocab, "training")
    valid_set = _dataset(valid_dir, vocab, "validation") if valid_dir is not None else None
    if begin is not None:
        begin()
    if env_rank() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        vocab.save(out_dir / "vocab.txt")
    loader = _loader(train_set, config, train=True)
    valid_loader = _loader(valid_set, config, train=False) if valid_set is not None else None
    result = train_on_loaders(
        model,
        loader,
        trainer_config,
        out_dir,
        valid_loader=valid_loader,
        resume=resume,
        save_config=config,
    )
    final = out_dir / "final"
    if env_rank() == 0:
        final.mkdir(parents=True, exist_ok=True)
        if config.tuning.method == "full":
            save_checkpoint(upstream.model, upstream.config, final / "upstream")
        else:
            save_tuned(upstream, final / "tuned.safetensors")
        head = {k: v.detach().cpu().contiguous().clone() for k, v in model.head.state_dict().items()}
        with atomic_file(final / "ctc_head.safetensors") as tmp:
            save_file(head, str(tmp))
        vocab.save(final / "vocab.txt")
    return CTCFinetuneResult(model, report, result, final)


@torch.no_grad()
def evaluate_ctc(
    model: CTCFinetuneModel, data_dir: str | Path, *, max_batch_seconds: float = 100.0
) -> dict[str, float]:
    """Mean CTC loss per utterance and greedy character error rate (|edits| / |reference chars|,
    the "|" separators included) over a data dir."""
    was_training = model.training
    model.eval()
    dataset = _dataset(data_dir, model.vocab)
    loader = build_loader(
        dataset,
        BatchingConfig(max_batch_seconds=max_batch_seconds),
        train=False,
        seed=0,
        target_pad_value=PAD,
    )  # every utterance once
    loss_sum, errors, chars, count = 0.0, 0, 0, 0
    device = model.head.weight.device
    for batch in loader:
        batch = batch.to(device)
        targets, target_lens = batch.targets[TEXT], batch.target_lens[TEXT]  # (B, L), (B,)
        log_probs, lengths = model.log_probs(batch.wavs, batch.wav_lens)  # (B, T, V)
        e, c = char_errors(log_probs, lengths, targets, target_lens)
        errors, chars = errors + e, chars + c
        loss_sum += float(ctc_loss(log_probs, lengths, targets, target_lens)) * len(batch)
        count += len(batch)
    model.train(was_training)
    if count == 0:
        raise ValueError(f"{data_dir}: no utterance to score")
    return {"loss": loss_sum / count, "cer": errors / max(chars, 1)}


# ---------------------------------------------------------------- experiments (`speechssl finetune`)

EXPERIMENT_FILE = "finetune.yaml"  # upstream source, data dirs and the resolved config of a run


def load_finetune_config(
    config_path: str | Path | None,
    overrides: list[str] = (),
    *,
    method: str | None = None,
    max_steps: int | None = None,
) -> CTCFinetuneConfig:
    """The YAML (or the defaults) with `key=value` overrides, then a method and a run length.
    A shorter run keeps the head-only share of updates (`freeze_finetune_updates`)."""
    config = load_config(CTCFinetuneConfig, config_path, list(overrides))
    if method is not None:
        config = replace(config, tuning=replace(config.tuning, method=method))
    if max_steps is not None:
        trainer = config.trainer.with_max_steps(max_steps)
        config = replace(
            config,
            trainer=trainer,
            freeze_finetune_updates=round(
                config.freeze_finetune_updates * trainer.max_steps / config.trainer.max_steps
            ),
        )
    return config


def run_finetune_experiment(
    upstream_source: str | Path,
    train_dir: str | Path,
    out_dir: str | Path,
    config: CTCFinetuneConfig,
    *,
    valid_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> CTCFinetuneResult:
    """`finetune_ctc` plus EXP/finetune.yaml, so a finished run can be rebuilt by `load_finetuned`.
    EXP is locked and checked before any write (speechssl.training.experiment)."""
    from speechssl.interop.upstream import load_upstream

    out_dir = Path(out_dir)
    for name, path in (("train", train_dir), ("valid", valid_dir)):
        if path is not None and not Path(path).is_dir():
            raise FileNotFoundError(f"{name} data dir {path} does not exist")
    record = out_dir / EXPERIMENT_FILE
    with experiment(
        out_dir,
        "finetune",
        resume=resume,
        config=config,
        overwrite=overwrite,
        inputs=(train_dir, valid_dir, upstream_source),
        allowed=_RESUMABLE,
    ) as run:
        if run.resume_from is not None and record.is_file():
            previous = yaml.safe_load(record.read_text())
            if previous.get("upstream") != str(upstream_source):
                raise ValueError(
                    f"{record}: cannot resume a run of upstream {previous.get('upstream')} "
                    f"with upstream {upstream_source}"
                )

        def begin() -> None:
            run.begin()
            if env_rank() == 0:
                atomic_write_text(record, yaml.safe_dump({
                    "upstream": str(upstream_source), "train": str(train_dir),
                    "valid": valid_dir and str(valid_dir), "config": to_dict(config),
                }, sort_keys=False))  # fmt: skip

        return finetune_ctc(
            load_upstream(upstream_source),
            train_dir,
            out_dir,
            config,
            valid_dir=valid_dir,
            resume=run.resume_from or False,
            begin=begin,
        )


# a shorter or longer resumed run keeps the head-only share of updates (load_finetune_config)
_RESUMABLE = RESUMABLE_KEYS | {"freeze_finetune_updates"}


def load_finetuned(exp_dir: str | Path) -> CTCFinetuneModel:
    """Rebuild a finished run's model (eval mode) from EXP/finetune.yaml and EXP/final/."""
    from safetensors.torch import load_file

    from speechssl.interop.upstream import load_upstream
    from speechssl.tuning.methods import load_tuned

    exp_dir = Path(exp_dir)
    record, final = exp_dir / EXPERIMENT_FILE, exp_dir / "final"
    if not record.is_file():
        raise FileNotFoundError(
            f"{record} does not exist: run `speechssl finetune --out {exp_dir} ...` first"
        )
    if not (final / "ctc_head.safetensors").is_file():
        raise FileNotFoundError(
            f"{final / 'ctc_head.safetensors'} does not exist: the run in {exp_dir} did not finish"
        )
    exp = yaml.safe_load(record.read_text())
    config = from_dict(CTCFinetuneConfig, exp["config"], source=str(record), section="config")
    if config.tuning.method == "full":
        upstream = load_upstream(final / "upstream")
    else:
        upstream = load_upstream(exp["upstream"])
        load_tuned(upstream, final / "tuned.safetensors")
    model = CTCFinetuneModel(
        upstream, CharVocab.load(final / "vocab.txt"), replace(config, final_dropout=0.0)
    )
    model.head.load_state_dict(load_file(str(final / "ctc_head.safetensors")))
    return model.eval()


def evaluate_finetuned(
    exp_dir: str | Path, data_dir: str | Path, *, max_batch_seconds: float = 100.0
) -> dict:
    """Score a finished run on a data dir; also written to EXP/eval_<data dir name>.json."""
    model = load_finetuned(exp_dir)
    if torch.cuda.is_available():
        model = model.cuda()
    scores = evaluate_ctc(model, data_dir, max_batch_seconds=max_batch_seconds)
    result = {"data": str(data_dir), "cer": scores["cer"], "loss": scores["loss"]}
    atomic_write_text(Path(exp_dir) / f"eval_{Path(data_dir).name}.json", json.dumps(result, indent=2) + "\n")
    return result
