"""`speechssl pretrain`: a YAML config + Kaldi data dirs (+ k-means units) -> a trained model.

This is the glue of the pretraining recipe stage: it reads the config, checks that
every utterance's units fit the model's frame count, builds the duration-bucketed
datasets and the objective's model, and hands them to the generic Trainer. The
checkpoints it writes (`EXP/checkpoints/step_<N>/`, `last`, `best`) hold the whole
pretraining model (data2vec: the EMA teacher too); `load_upstream` reads them as upstreams
(backbone only).

Objectives by model.family: HuBERT and WavLM learn units (`units`), wav2vec 2.0 and data2vec
none. WavLM mixes noise clips from `noise_dir` (a Kaldi data dir) when `wavlm.mixing.noise_prob`
is above 0; that option without a noise dir is an error, and noise_prob 0 mixes utterances only.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from speechssl.analysis.monitor import RankMeMonitor, RankMeMonitorConfig
from speechssl.config import ConfigError, apply_override, from_dict, load_yaml
from speechssl.data.audio import SAMPLE_RATE, audio_info, load_audio
from speechssl.data.batching import BatchingConfig, build_loader
from speechssl.data.dataset import AudioDataset, Batch
from speechssl.data.kaldi import read_table
from speechssl.io import atomic_write_text
from speechssl.models.config import ModelConfig
from speechssl.models.frontends import normalize_waveform
from speechssl.models.model import SSLModel
from speechssl.objectives.data2vec import Data2VecObjectiveConfig
from speechssl.objectives.hubert import HubertObjectiveConfig
from speechssl.objectives.masking import MaskConfig
from speechssl.objectives.mixing import NoiseBank
from speechssl.objectives.pretraining import (
    PretrainModelConfig,
    WavLMPretrainModel,
    build_pretrain_model,
)
from speechssl.objectives.wav2vec2 import Wav2Vec2ObjectiveConfig
from speechssl.objectives.wavlm import WavLMObjectiveConfig
from speechssl.training.config import CUDA_GRAPH_MODES, TrainerConfig
from speechssl.training.distributed import env_rank, env_world_size
from speechssl.training.experiment import experiment
from speechssl.training.fsdp import layerdrop_refusal
from speechssl.training.trainer import TrainResult, train_on_loaders
from speechssl.units.labels import check_label_lengths, check_unit_ids, parse_units, read_labels

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PretrainDataConfig(BatchingConfig):
    """How utterances become batches (fairseq: task.max_sample_size, dataset.max_tokens); the
    batching fields are those of every training command (speechssl.data.batching)."""

    # padded audio-seconds per device and micro-batch (fairseq max_tokens 1.4M)
    max_batch_seconds: float = 87.5
    max_seconds: float | None = 15.625  # longer utterances are cropped (fairseq max_sample_size 250000)
    skip_bad: bool = False  # skip unreadable utterances (counted and logged) instead of stopping
    # units per second; None: the model's frame rate (a stated one must match)
    label_rate: float | None = None
    # the transformer layers run on each batch's packed valid frames, no compute on padding
    # (speechssl.models.packing; same results up to rounding). HuBERT and wav2vec 2.0 only.
    padding_free: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.label_rate is not None and not (math.isfinite(self.label_rate) and self.label_rate > 0):
            raise ValueError(f"label_rate must be a finite number > 0, found {self.label_rate}")


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    """Everything `speechssl pretrain` needs: the network, its objective, data and trainer."""

    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    hubert: HubertObjectiveConfig | None = None  # for model.family == "hubert"
    wav2vec2: Wav2Vec2ObjectiveConfig | None = None  # for model.family == "wav2vec2"
    wavlm: WavLMObjectiveConfig | None = None  # for model.family == "wavlm"
    data2vec: Data2VecObjectiveConfig | None = None  # for model.family == "data2vec_audio"
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    monitor: RankMeMonitorConfig = field(default_factory=RankMeMonitorConfig)  # RankMe at each validation

    def network(self) -> PretrainModelConfig:
        return PretrainModelConfig(
            model=self.model, mask=self.mask, hubert=self.hubert, wav2vec2=self.wav2vec2,
            wavlm=self.wavlm, data2vec=self.data2vec,
        )  # fmt: skip

    @property
    def label_section(self) -> str | None:
        """The section whose num_classes the units fill (None: the objective takes no units)."""
        return LABEL_SECTIONS.get(self.model.family)

    def __post_init__(self) -> None:
        self.network()  # validates that the objective section fits model.family
        family = self.model.family
        if self.data.padding_free and family not in PADDING_FREE_FAMILIES:
            why = {"wavlm": "its relative position bias", "data2vec_audio": "its EMA teacher"}.get(family, "")
            raise ValueError(
                f"data.padding_free is for {' and '.join(_NAMES[f] for f in PADDING_FREE_FAMILIES)}; "
                f"{_NAMES.get(family, family)} runs its transformer padded" + (f" ({why})" if why else "")
            )
        if self.data.padding_free and self.data.static_shapes:
            raise ValueError(
                "data.static_shapes pads every batch to a fixed shape (for CUDA graphs) and "
                "data.padding_free packs each batch's valid frames into a shape of its own: set one of them"
            )
        if self.trainer.strategy == "fsdp" and self.model.encoder.layerdrop > 0:  # before any file is written
            raise layerdrop_refusal("model.encoder.layerdrop", self.model.encoder.layerdrop)


# model.family -> the objective section whose num_classes k-means units fill (the others take none)
LABEL_SECTIONS = {"hubert": "hubert", "wavlm": "wavlm"}
_NAMES = {"hubert": "HuBERT", "wavlm": "WavLM", "wav2vec2": "wav2vec 2.0", "data2vec_audio": "data2vec"}
_NO_UNITS = "remove it or use a HuBERT or WavLM config"
PADDING_FREE_FAMILIES = ("hubert", "wav2vec2")  # objectives whose transformer runs through SSLModel.forward


def units_num_classes(units_dir: Path) -> int:
    """K of a units dir, from its fairseq-style `dict.txt` (one `unit count` line per unit)."""
    dict_path = units_dir / "dict.txt"
    if not dict_path.is_file():
        raise FileNotFoundError(f"{dict_path} is missing: write units with `speechssl kmeans label`")
    return len(read_table(dict_path))


def load_pretrain_config(
    path: str | Path,
    overrides: Sequence[str] = (),
    *,
    units_dirs: Sequence[Path] = (),
    seed: int | None = None,
) -> PretrainConfig:
    """Read the YAML, apply `--set key=value` overrides, and take HuBERT's (WavLM's) class counts
    from the units when the config leaves them out (a stated count must match the units)."""
    data = load_yaml(path)
    for item in overrides:
        apply_override(data, item)
    if seed is not None:
        data.setdefault("trainer", {})["seed"] = seed
    model = data.get("model")
    family = model.get("family", "hubert") if isinstance(model, dict) else "hubert"
    section = LABEL_SECTIONS.get(family)
    if units_dirs and section is None:
        raise ValueError(f"{_NAMES.get(family, family)} pretraining takes no --units; {_NO_UNITS}")
    if units_dirs:
        counts = [units_num_classes(d) for d in units_dirs]
        objective = data.setdefault(section, {}) or {}
        data[section] = objective
        stated = objective.get("num_classes")
        if stated is None:
            objective["num_classes"] = counts
        elif list(stated) != counts:
            raise ConfigError(
                f"{section}.num_classes {list(stated)} in {path} does not match the units"
                f" ({', '.join(f'{d}: {k}' for d, k in zip(units_dirs, counts))})"
            )
    return from_dict(PretrainConfig, data, source=str(path), overrides=overrides)


class BatchObjective(nn.Module):
    """Feeds a collated Batch to a pretraining model: batch -> (loss, metrics).

    Registered under the family name (`hubert.` / `wav2vec2.`) is the backbone, so the
    checkpoint keys are those of the pretraining model itself."""

    def __init__(self, model: nn.Module, units: Sequence[str], *, normalize: bool = False) -> None:
        super().__init__()
        self.objective = model
        self.units = list(units)
        self.normalize = normalize  # the model's normalize_waveform: trained as it will be used

    def forward(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        targets = [batch.targets[name] for name in self.units]
        # the loader's lengths on the host: the objective reads frame counts and draws masks there
        lengths = batch.wav_lens if batch.host_wav_lens is None else batch.host_wav_lens
        if getattr(self.objective, "normalizes_input", False):  # WavLM: normalises after mixing
            return self.objective(batch.wavs, lengths, targets, normalize=self.normalize)
        wavs = normalize_waveform(batch.wavs, batch.wav_lens) if self.normalize else batch.wavs
        if targets:
            return self.objective(wavs, lengths, targets)
        return self.objective(wavs, lengths)

    def set_num_updates(self, num_updates: int) -> None:
        """Quantizer temperature annealing (wav2vec 2.0), the EMA teacher's step (data2vec);
        a no-op for HuBERT and WavLM."""
        if hasattr(self.objective, "set_num_updates"):
            self.objective.set_num_updates(num_updates)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return self.objective.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:  # type: ignore[override]
        return self.objective.load_state_dict(state_dict, strict=strict, assign=assign)


def load_noise_bank(noise_dir: Path, *, max_seconds: float | None = 30.0) -> NoiseBank:
    """Every recording of a Kaldi data dir's wav.scp as one noise clip (read once, kept in memory;
    longer ones cut to `max_seconds`). Checked before any compute: the dir exists, lists at least
    one recording, and each one reads."""
    wav_scp = noise_dir / "wav.scp"
    if not noise_dir.is_dir():
        raise FileNotFoundError(f"noise dir {noise_dir} does not exist (a Kaldi data dir with wav.scp)")
    if not wav_scp.is_file():
        raise FileNotFoundError(f"noise dir {noise_dir} has no wav.scp (a Kaldi data dir of noise audio)")
    table = read_table(wav_scp)
    if not table:
        raise ValueError(f"{wav_scp} lists no recordings: give a noise dir with at least one clip")
    clips = []
    for rec, path in table.items():
        wav = load_audio(path, end=max_seconds, utt_id=rec, max_overshoot=math.inf)
        if not bool(wav.abs().max() > 0):
            raise ValueError(f"{wav_scp}: noise recording '{rec}' ({path}) is silent")
        clips.append(wav)
    return NoiseBank.from_list(clips)


def check_noise_option(config: PretrainConfig, noise_dir: Path | None) -> None:
    """`noise_dir` belongs to WavLM runs with noise mixing; noise mixing needs it."""
    family = config.model.family
    if noise_dir is not None and family != "wavlm":
        raise ValueError(
            f"--noise is for WavLM pretraining (utterance mixing); this config's family is {family}"
        )
    if family == "wavlm" and noise_dir is None:
        assert config.wavlm is not None
        prob = config.wavlm.mixing.noise_prob
        if prob > 0:
            raise ValueError(
                f"wavlm.mixing.noise_prob is {prob:g} but no noise dir was given: pass --noise DIR"
                " (a Kaldi data dir of noise audio) or set wavlm.mixing.noise_prob: 0 (utterances only)"
            )


def _units_dirs(data_dir: Path, units: Sequence[str]) -> list[Path]:
    return [data_dir / name for name in units]


class TrainData(NamedTuple):
    train: DataLoader  # its batch_sampler is this rank's DurationBucketSampler
    valid: DataLoader | None


def samples_for_frames(model: SSLModel, frames: int) -> int:
    """The fewest input samples that give `frames` output frames."""
    low, high = 1, 1
    while model.num_frames(high) < frames:
        low, high = high, high * 2
    while low < high:  # the smallest n in [low, high] with enough frames
        mid = (low + high) // 2
        low, high = (mid + 1, high) if model.num_frames(mid) < frames else (low, mid)
    return low


def build_dataset(
    data_dir: Path, config: Any, model: SSLModel, *, units: Sequence[str] = (),
    num_classes: Sequence[int] = (), train: bool,
) -> AudioDataset:  # fmt: skip
    """An AudioDataset for `model`, with its units checked before any training step: every
    utterance gives at least one frame, every label count fits the model's frame count, and
    every unit id is below its label set's class count. `config` has `data` and `trainer`."""
    data = config.data
    label_rate = SAMPLE_RATE / model.downsample_rate  # units come at the model's frame rate
    if data.label_rate is not None and abs(data.label_rate - label_rate) > 1e-6:
        raise ValueError(
            f"data.label_rate {data.label_rate} does not match the model's frame rate "
            f"({label_rate:g} per second)"
        )
    dataset = AudioDataset(
        data_dir,
        targets={name: str(data_dir / name / "labels") for name in units} or None,
        target_transforms={name: parse_units for name in units} or None,
        skip_bad=data.skip_bad,
        max_seconds=data.max_seconds if train else None,
        crop=data.crop,
        label_rates={name: label_rate for name in units} or None,
        seed=config.trainer.seed,
    )
    role = "training" if train else "validation"
    if len(dataset) == 0:
        skipped = f" ({dataset.num_skipped} skipped as unreadable)" if dataset.num_skipped else ""
        raise ValueError(
            f"{role} data dir {data_dir} holds no utterances{skipped}: its wav.scp is empty;"
            f" give a non-empty {role} set" + ("" if train else " or leave --valid out")
        )
    if not train and not data.skip_bad:
        check_audio_readable(dataset)
    num_samples = {
        utt: round(sec * SAMPLE_RATE) for utt, sec in zip(dataset.utt_ids(), dataset.full_durations)
    }
    # wav2vec 2.0 contrasts each masked frame with other masked frames of its utterance: 3 frames
    # give 2 masked ones (the last frame is never masked); fewer crash or give a NaN step
    contrastive = isinstance(config, PretrainConfig) and config.model.family == "wav2vec2"
    min_frames = 3 if contrastive else 1  # distill and prune (their configs) predict every frame
    too_short = [utt for utt, n in num_samples.items() if model.num_frames(n) < min_frames]
    if too_short:
        what = (
            "one model frame"
            if min_frames == 1
            else f"{min_frames} model frames (wav2vec 2.0 needs 2 masked ones)"
        )
        raise ValueError(
            f"{data_dir}: {len(too_short)} utterance(s) are shorter than {what}"
            f" ({samples_for_frames(model, min_frames)} samples), e.g. {', '.join(too_short[:5])};"
            " remove them (speechssl data fix after deleting their lines)"
        )
    for i, name in enumerate(units):
        path = data_dir / name / "labels"
        labels = read_labels(path)
        try:
            check_label_lengths(labels, num_samples, model.num_frames)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        if i < len(num_classes):
            check_unit_ids(labels, num_classes[i], where=path)
    return dataset


def check_audio_readable(dataset: AudioDataset) -> None:
    """Open every file's header once (no decoding): a missing or broken validation file is found
    at start-up, not at the first checkpoint after hours of training."""
    seen: set[str] = set()
    for u in dataset.utterances:
        if u.path not in seen:
            seen.add(u.path)
            audio_info(u.path, utt_id=u.utt_id)


def check_units_match(train_dir: Path, valid_dir: Path, units: Sequence[str]) -> None:
    """Validation units must come from the same k-means model as the training units."""
    for name in units:
        theirs = valid_dir / name / "dict.txt"
        if theirs.is_file() and units_num_classes(valid_dir / name) != units_num_classes(train_dir / name):
            raise ValueError(
                f"{theirs} has {units_num_classes(valid_dir / name)} units "
                f"but {train_dir / name / 'dict.txt'}"
                f" has {units_num_classes(train_dir / name)}: label both sets with the same k-means model"
            )


def build_data(
    config: Any, model: SSLModel, train_dir: Path, valid_dir: Path | None, *,
    units: Sequence[str] = (), num_classes: Sequence[int] = (),
) -> TrainData:  # fmt: skip
    """Training and validation loaders of a run (this rank's share): `config.data` is a
    BatchingConfig (speechssl.data.batching), `config.trainer.seed` seeds the batches."""
    shard = dict(seed=config.trainer.seed, rank=env_rank(), world_size=env_world_size())
    logger.info(  # on a large corpus these checks take a while: say what is being read
        "checking the data: %s%s (durations, frame counts%s)",
        train_dir, f" and {valid_dir}" if valid_dir is not None else "",
        ", units" if units else "",
    )  # fmt: skip
    train_set = build_dataset(train_dir, config, model, units=units, num_classes=num_classes, train=True)
    train = build_loader(train_set, config.data, train=True, **shard)
    valid = None
    if valid_dir is not None:
        check_units_match(train_dir, Path(valid_dir), units)
        valid_set = build_dataset(
            Path(valid_dir), config, model, units=units, num_classes=num_classes, train=False
        )
        valid = build_loader(valid_set, config.data, train=False, **shard)
    return TrainData(train, valid)


def pretrain(
    config_path: str | Path,
    train_dir: str | Path,
    valid_dir: str | Path | None,
    out_dir: str | Path,
    *,
    units: Sequence[str] = (),
    overrides: Sequence[str] = (),
    max_steps: int | None = None,
    save_every: int | None = None,
    seed: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    noise_dir: str | Path | None = None,
    init_from: str | Path | None = None,
) -> TrainResult:
    """Pretrain HuBERT or WavLM (with `units`), wav2vec 2.0 or data2vec (without) and write
    EXP/checkpoints. `noise_dir`: noise clips for WavLM's mixing (see the module docstring).
    `init_from`: a `load_upstream` source whose weights (and heads, where it has them) start a
    fresh run (speechssl.training.init_from); ignored with a log line when resuming.

    Everything is checked before EXP is written: the config, the experiment dir (locked for the
    run; see speechssl.training.experiment), the resume checkpoint, the noise and the data."""
    train_dir, out_dir = Path(train_dir), Path(out_dir)
    config = load_pretrain_config(config_path, overrides, units_dirs=_units_dirs(train_dir, units), seed=seed)
    trainer = config.trainer.with_max_steps(max_steps)
    if save_every:
        trainer = replace(trainer, save_every=save_every)
    config = replace(config, trainer=trainer)
    family = config.model.family
    if config.label_section is not None and not units:
        raise ValueError(
            f"{_NAMES[family]} pretraining needs --units NAME (k-means labels in DATA/NAME/labels)"
        )
    noise_dir = Path(noise_dir) if noise_dir is not None else None
    check_noise_option(config, noise_dir)
    noise = load_noise_bank(noise_dir) if noise_dir is not None else None
    with experiment(
        out_dir,
        "pretrain",
        resume=resume,
        config=config,
        overwrite=overwrite,
        inputs=(train_dir, valid_dir),
    ) as run:
        torch.manual_seed(config.trainer.seed)  # the same initial weights on every rank
        model = build_pretrain_model(config.network())
        if init_from is not None:
            if run.resume_from:
                logger.info(
                    "resuming: --init-from %s is not applied (the checkpoint has the weights)", init_from
                )
            else:
                from speechssl.training.init_from import init_pretrain_model  # written beside this

                init_pretrain_model(model, init_from)  # data2vec: the teacher restarts as the student
        if isinstance(model, WavLMPretrainModel):
            model.set_noise(noise)
        label_section = config.label_section
        num_classes = getattr(config, label_section).num_classes if label_section else ()
        loaders = build_data(
            config, getattr(model, family), train_dir, valid_dir, units=units, num_classes=num_classes
        )
        train_set, train_sampler = loaders.train.dataset, loaders.train.batch_sampler
        monitor = None
        if loaders.valid is not None and config.monitor.enabled:
            backbone = getattr(model, family)
            monitor = RankMeMonitor(config.monitor, backbone, normalize=config.model.normalize_waveform)
        run.begin()  # also writes the resolved config, next to the experiment
        logger.info(
            "pretraining %s: %d train utterances (%.2f h), %d batches/epoch/rank, padding efficiency %.2f",
            family, len(train_set), sum(train_set.durations) / 3600, len(train_sampler),
            train_sampler.padding_efficiency(),
        )  # fmt: skip
        if config.trainer.compile_mode in CUDA_GRAPH_MODES and not config.data.static_shapes:
            logger.warning(
                "trainer.compile_mode %s records CUDA graphs for every batch shape it meets (%d batches per "
                "epoch here); data.static_shapes (e.g. 16) bounds them", config.trainer.compile_mode,
                len(train_sampler),
            )  # fmt: skip
        getattr(model, family).padding_free = config.data.padding_free
        objective = BatchObjective(model, units, normalize=config.model.normalize_waveform)
        result = train_on_loaders(
            objective, loaders.train, config.trainer, out_dir, valid_loader=loaders.valid,
            resume=run.resume_from or False, save_config=config, valid_monitor=monitor,
        )  # fmt: skip
        if env_rank() == 0:
            write_run_summary(out_dir, result, world_size=env_world_size())
    return result


def write_run_summary(out_dir: Path, result: TrainResult, *, world_size: int) -> None:
    """EXP/train_summary.json: what the recipe's summary stage reports for this run, every session
    of it (a resumed run's earlier ones as its checkpoint recorded them)."""
    wall = max(result.run_wall_seconds, 1e-9)
    summary = {
        "steps": result.step,
        "skipped_steps": result.skipped_steps,
        "wall_seconds": round(result.run_wall_seconds, 2),
        "audio_hours": round(result.run_audio_seconds / 3600, 4),
        "audio_seconds_per_second": round(result.run_audio_seconds / wall, 2),
        "world_size": world_size,
        "best_valid_loss": result.best_valid_loss,
        "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
        "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
        "tensorboard": str(out_dir / "tensorboard"),
        "warnings": list(result.warnings),  # e.g. a RankMe collapse (monitor.min_rankme)
    }
    atomic_write_text(out_dir / "train_summary.json", json.dumps(summary, indent=2) + "\n")
