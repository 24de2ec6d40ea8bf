"""SUPERB tasks: each knows its data files, vocabulary, head, loss, decoding and metric.

A task is built once per experiment with `build_task(name, data_dir, exp_dir, config)`:
vocabularies are made from the training split plus the labels the data dir declares
in `labels.txt` (or read back from `exp_dir/task/`, so evaluation uses the same
indices as training); `check_split` checks a split in seconds before any compute
(the runner calls it for every split at start-up), `save` writes the vocabularies
once the experiment dir is the runner's; then the runner asks for datasets, a head,
a loss per batch, and a metric per split.

Start-up checks also refuse, in one line: an utterance with an empty label (ks, lid, ic, sid, the
languages of mlpr), a training split every utterance of which is longer than `max_batch_seconds`
(the sampler would drop them all; some dropped: `train_loader` warns, naming the first), and,
once the upstream is loaded (`bind_upstream`), an example of a checked split or a `max_seconds`
crop shorter than one frame of the upstream (`min_input_samples`), named with its audio file.

Labels: a dev/test label (KS keyword, IC slot value, SID speaker, PR phone) that is
neither in the training split nor declared in `<data>/labels.txt` (one label per line;
IC: a whole "action object location" intent) is an error naming file, line and label,
unless `unknown_label` names a training class to map it to. ASR characters the training
text lacks map to the `<unk>` token (WER is scored on the words, so they count as errors).

| task | data file (per split)  | head                        | loss        | metric      |
|------|------------------------|-----------------------------|-------------|-------------|
| pr   | phones                 | projector + linear          | CTC         | PER (lower) |
| asr  | text                   | SpecAugment, 2-layer BiLSTM | CTC         | WER (lower), CER |
| ks   | text (keyword label)   | projector, mean pool, linear| CE          | accuracy    |
| ic   | intent (3 slots)       | mean pool + linear per slot | CE summed   | accuracy    |
| sid  | utt2spk                | projector, mean pool, linear| CE          | accuracy    |
| asv  | utt2spk (train), trials| x-vector                    | AM-softmax  | EER (lower) |
| sf   | utt2slot_text          | as asr (slot tags: tokens)  | CTC         | slot-type F1, slot-value CER |
| mlpr | phones, utt2lang       | as pr                       | CTC         | PER (lower), per language |
| lid  | utt2lang               | projector, mean pool, linear| CE          | accuracy, per language |
| sd   | rttm, segments, utt2spk| LSTM (or none) + linear     | PIT BCE     | DER (lower), miss, FA, conf. |

The heads and their defaults are those of s3prl's SUPERB experts (speechssl.downstream.heads,
HeadConfig). Training batches come from `Task.train_loader`: KS draws classes uniformly
(s3prl's WeightedRandomSampler); ASV crops to `head.asv_max_seconds` and drops utterances
shorter than `head.asv_min_seconds`.

CTC fine-tuning (speechssl.downstream.finetune) trains asr or pr with a linear head on the
upstream's last layer instead (the vocabulary, loss and metric stay the task's).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from speechssl.data.audio import SAMPLE_RATE
from speechssl.data.batching import BatchingConfig, build_loader
from speechssl.data.datadir import DataDir
from speechssl.data.dataset import AudioDataset, load_targets
from speechssl.data.kaldi import read_table, read_table_lines
from speechssl.data.rttm import format_rttm, read_rttm, rttm_lines
from speechssl.data.sampler import DurationBucketSampler
from speechssl.downstream import metrics
from speechssl.downstream.config import DownstreamConfig
from speechssl.downstream.diarization import (
    Recording,
    decode_turns,
    load_recordings,
    pit_bce_loss,
    recording_targets,
)
from speechssl.downstream.heads import (
    AdditiveMarginSoftmax,
    BiLSTMCTCHead,
    DiarizationHead,
    MeanPoolClassifier,
    ProjectedCTCHead,
    SpecAugment,
    XVectorHead,
)
from speechssl.errors import SpeechSSLError
from speechssl.io import atomic_file, atomic_write_text, temp_tag
from speechssl.objectives.ctc import ctc_greedy, ctc_loss
from speechssl.outputs import check_output, output_directory

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
BLANK = "<blank>"
WORD_SEP = "|"
UNK = "<unk>"
MAX_SINGLETON_CLASSES = 64  # more classes than this and than half the train utterances: wrong data
LABELS_FILE = "labels.txt"  # <data>/labels.txt: labels the task may see beyond those of train/


class DataCheckError(SpeechSSLError, ValueError):
    """A task's data fails a start-up check (empty split, unseen label, bad trials)."""


# ---------------------------------------------------------------- vocabularies


class TokenTable:
    """Symbols <-> indices, stored one symbol per line (index = line number - 1)."""

    def __init__(self, symbols: Sequence[str]) -> None:
        if len(set(symbols)) != len(symbols):
            raise ValueError("token table has duplicate symbols")
        self.symbols = list(symbols)
        self.index = {s: i for i, s in enumerate(self.symbols)}

    def __len__(self) -> int:
        return len(self.symbols)

    def encode(self, tokens: Iterable[str], *, where: str = "") -> Tensor:
        try:
            return torch.tensor([self.index[t] for t in tokens], dtype=torch.long)
        except KeyError as err:
            raise ValueError(f"{where}unknown symbol {err.args[0]!r} ({len(self)} known)") from None

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.symbols[i] for i in ids]

    def save(self, path: Path) -> None:
        atomic_write_text(path, "".join(f"{s}\n" for s in self.symbols))

    @classmethod
    def load(cls, path: Path) -> TokenTable:
        return cls([line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()])


def _values(
    data_dir: Path, filename: str, splits: Sequence[str] = SPLITS
) -> list[tuple[Path, int, str, str]]:
    """(file, line, utt, value) over the `splits` that have `filename`."""
    rows = []
    for split in splits:
        path = data_dir / split / filename
        if path.is_file():
            rows += [(path, line, key, value) for line, key, value in read_table_lines(path)]
    return rows


def declared_labels(data_dir: Path) -> list[str]:
    """The labels of `<data>/labels.txt` (one per line, blank lines skipped); [] without it."""
    path = data_dir / LABELS_FILE
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def split_utterances(split_dir: Path) -> list[str]:
    """Utterance ids of a split (as the dataset reads them); an error naming the dir when none."""
    data = DataDir.load(split_dir)
    ids = data.utt_ids()
    if not ids:
        source = (
            "utt2spk" if data.utt2spk is not None else "segments" if data.segments is not None else "wav.scp"
        )
        raise DataCheckError(f"{split_dir}: the split has no utterances ({split_dir / source} is empty)")
    return ids


def check_values_present(path: Path, what: str) -> None:
    """Every line of a `utt value` table has a value: an utterance with none would become a
    class named '' (or score against it)."""
    for line, utt, value in read_table_lines(path):
        if not value.strip():
            raise DataCheckError(f"{path}:{line}: utterance '{utt}' has no {what}")


def _frame_counter(upstream: Any) -> Callable[[int], int] | None:
    """samples -> frames of an upstream's front end, or None when it does not say (duck-typed
    upstreams). The interface (UpstreamModel) has no such method: the implementations do."""
    min_samples = getattr(upstream, "min_samples", None)  # exported graphs
    if isinstance(min_samples, int):
        return lambda n: int(n >= min_samples)
    inner = getattr(upstream, "inner", None)  # tokens: the upstream they are computed on
    if inner is not None:
        return _frame_counter(inner)
    for part in (getattr(upstream, "model", None), getattr(upstream, "fbank", None)):
        count = getattr(part, "num_frames", None)
        if callable(count):
            return lambda n: int(count(n))
    return None


def min_input_samples(upstream: Any) -> int | None:
    """The fewest samples that give the upstream one frame (400 for the conv front end and
    FBANK's 25 ms window), or None when the upstream does not say."""
    count = _frame_counter(upstream)
    if count is None:
        return None
    hi = 1
    while count(hi) < 1:
        hi *= 2
        if hi > 1 << 24:  # no frame from 17 minutes of audio: not a front end to judge here
            return None
    lo = hi // 2 + 1 if hi > 1 else 1
    while lo < hi:  # frames grow with samples: the first count >= 1
        mid = (lo + hi) // 2
        if count(mid) >= 1:
            hi = mid
        else:
            lo = mid + 1
    return hi


def check_batch_frames(utt_ids: list[str], lengths: Tensor, need: int | None, label: str) -> None:
    """Every utterance of a batch, as read, gives the upstream a frame (`need` samples, from
    `min_input_samples`). `Task.check_frames` said so at start-up from utt2dur or segments; an
    entry longer than its audio (a stale utt2dur) is named here, before the batch reaches the
    upstream (the model's error names a batch index; fbank would give a 0-frame example)."""
    if need is None:
        return
    for utt, samples in zip(utt_ids, lengths.tolist()):  # host lengths: no device sync
        if samples < need:
            raise DataCheckError(
                f"utterance '{utt}' has {samples} samples, shorter than one frame of {label} ({need} "
                "samples), though the data dir's durations (utt2dur, segments or reco2dur) said longer: "
                "they are stale (`speechssl data durations DIR` rewrites them from the audio, with"
                " --overwrite if another tool wrote them)"
            )


def upstream_label(upstream: Any) -> str:
    """A name for an upstream in messages when the caller gives none."""
    source = getattr(upstream, "source", None)
    if source:
        return str(source)
    if getattr(upstream, "fbank", None) is not None and getattr(upstream, "model", None) is None:
        return "fbank"
    if getattr(upstream, "inner", None) is not None:
        return f"tokens of {upstream_label(upstream.inner)}"
    family = getattr(getattr(upstream, "config", None), "family", None)
    return str(family or type(upstream).__name__)


SPM_MAX_LINE_BYTES = 4192  # sentencepiece's max_sentence_length default: longer lines are skipped


def train_sentencepiece(
    text_file: str | Path,
    model_prefix: str | Path,
    vocab_size: int,
    *,
    model_type: str = "unigram",
    source: str | Path | None = None,
) -> Path:
    """Train a sentencepiece model on `text_file` (one sentence per line); returns the .model path.
    The vocabulary is a soft limit, so tiny corpora still train. Trained in a temp dir and
    renamed, so a killed run leaves no half-written model. `source`: the file errors name (the
    user's transcripts that `text_file` was made from)."""
    import sentencepiece as spm

    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    # a temp name `remove_stale_temporaries` knows, so a killed run's leftovers are cleaned
    tmp = Path(tempfile.mkdtemp(prefix=f".{model_prefix.name}.{temp_tag()}.tmp", dir=model_prefix.parent))
    try:
        try:
            spm.SentencePieceTrainer.train(
                input=str(text_file),
                model_prefix=str(tmp / model_prefix.name),
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=1.0,
                hard_vocab_limit=False,
                bos_id=-1,
                eos_id=-1,
                unk_id=1,
                pad_id=0,
                pad_piece=BLANK,
                minloglevel=2,
            )
        except RuntimeError as err:  # sentencepiece's own check, e.g. fewer pieces than characters
            needed = re.search(r"required_chars\. \d+ vs (\d+)", str(err))
            if needed:
                reason = f"the transcripts need at least {needed[1]} (a piece per character, <pad> and <unk>)"
            elif "sentences_.empty()" in str(err) or "all_chars_count" in str(err):
                reason = f"no line it can use (it skips lines over {SPM_MAX_LINE_BYTES} bytes and blank text)"
            else:
                reason = str(err).strip()
            raise ValueError(
                f"sentencepiece cannot train {vocab_size} pieces on {source or text_file}: {reason}"
            ) from err
        for suffix in (".model", ".vocab"):
            os.replace(tmp / f"{model_prefix.name}{suffix}", model_prefix.with_suffix(suffix))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model_prefix.with_suffix(".model")


TOKENIZER_COMMAND = "downstream tokenizer"


def train_tokenizer(
    text: str | Path, out_dir: str | Path, vocab_size: int, *, overwrite: bool = False, check_out: bool = True
) -> Path:
    """OUT/spm.model: a sentencepiece model on the transcripts of a Kaldi `text` file (ids dropped).
    `out_dir` follows the output-path rule (speechssl.outputs) unless `check_out` is False
    (the ASR task training its own model into a temp dir at start-up)."""
    text, out_dir = Path(text), Path(out_dir)
    if text.is_dir():
        raise ValueError(f"transcripts {text} is a directory: pass its Kaldi text file")
    if not text.is_file():
        raise FileNotFoundError(f"transcripts {text} do not exist")
    transcripts = [v for v in read_table(text).values() if v.strip()]
    if not transcripts:
        raise ValueError(f"{text}: no transcript to train a sentencepiece model on")
    if vocab_size < 1:
        raise ValueError(f"sentencepiece vocabulary size must be positive, got {vocab_size}")

    def train(directory: Path) -> None:
        lines = directory / "spm_train.txt"
        atomic_write_text(lines, "".join(f"{v}\n" for v in transcripts))
        train_sentencepiece(lines, directory / "spm", vocab_size, source=text)

    if not check_out:
        out_dir.mkdir(parents=True, exist_ok=True)
        train(out_dir)
    else:  # built in a temp sibling: a failed run leaves --out as it was
        check_output(out_dir, TOKENIZER_COMMAND, overwrite=overwrite, inputs=(text,))
        with output_directory(out_dir, TOKENIZER_COMMAND, overwrite=overwrite) as tmp:
            train(tmp)
    return out_dir / "spm.model"


# ---------------------------------------------------------------- tasks


class Task:
    """Base: a task's data, head and metric. Subclasses set the class attributes.
    Vocabularies are properties built on first use (from train/ and labels.txt, or read back
    from EXP/task/), so building a task reads nothing and writes nothing."""

    name: str = ""
    metric: str = ""
    higher_is_better: bool = True
    target_file: str = ""  # the per-split file of targets
    target_help: str = ""  # what it holds, for messages
    uses_unknown_label: bool = False  # does `unknown_label` apply to this task?

    def __init__(self, data_dir: Path, exp_dir: Path, config: DownstreamConfig) -> None:
        self.data_dir, self.exp_dir, self.config = Path(data_dir), Path(exp_dir), config
        self.task_dir = self.exp_dir / "task"
        self._unsaved: dict[str, TokenTable] = {}
        self._builders: dict[str, Callable[[], list[str]]] = {}
        self._checked: set[str] = set()  # splits check_split passed: bind_upstream checks their lengths
        self._lengths: dict[str, list[tuple[str, str, float]]] = {}  # split -> (utt, audio path, seconds)

    # vocabularies
    def _table(self, filename: str, build: Callable[[], list[str]]) -> TokenTable:
        """EXP/task/<filename> when it exists (evaluation, resume), else built from the data
        and written by `save`."""
        path = self.task_dir / filename
        self._builders[filename] = build
        if path.is_file():
            return TokenTable.load(path)
        table = TokenTable(build())
        self._unsaved[filename] = table
        return table

    def _train_rows(self) -> list[tuple[Path, int, str, str]]:
        rows = _values(self.data_dir, self.target_file, ("train",))
        if not rows:
            raise DataCheckError(
                f"task {self.name}: {self.data_dir / 'train' / self.target_file} does not exist "
                f"or is empty ({self.target_help})"
            )
        return rows

    def save(self) -> None:
        """Write the vocabularies built from the data into EXP/task/ (the runner calls it once
        every check has passed and EXP is its own)."""
        self.vocabularies()
        self.task_dir.mkdir(parents=True, exist_ok=True)
        for filename, table in self._unsaved.items():
            table.save(self.task_dir / filename)
        self._unsaved.clear()

    def vocabularies(self) -> list[TokenTable]:
        """Every vocabulary of the task (building them)."""
        return []

    def check_saved_vocabularies(
        self, advice: str = "resume with the same training data, or train into another --out"
    ) -> None:
        """A resumed (or restarted) run: the vocabularies EXP/task/ holds are those of the training
        data now (other data would give the head's outputs other meanings)."""
        self.vocabularies()
        for filename, build in self._builders.items():
            path = self.task_dir / filename
            if path.is_file() and TokenTable.load(path).symbols != build():
                raise DataCheckError(
                    f"{path} does not match the labels of {self.data_dir / 'train'} ({self.target_file}); "
                    + advice
                )

    # start-up checks
    def required_files(self, split: str) -> tuple[str, ...]:
        return (self.target_file,)

    def check_split(self, split: str) -> None:
        """Seconds, before any compute: the split exists, has utterances, its target file covers
        them, and (dev/test) every label is known. Errors name the file and line or utterance."""
        split_dir = self.data_dir / split
        if not split_dir.is_dir():
            raise FileNotFoundError(
                f"task {self.name}: data dir {split_dir} does not exist "
                f"(expected {self.data_dir}/{{train,dev,test}})"
            )
        ids = split_utterances(split_dir)
        for filename in self.required_files(split):
            if not (split_dir / filename).is_file():
                what = (
                    self.target_help
                    if filename == self.target_file
                    else "`enroll_utt test_utt target|nontarget` lines"
                )
                raise FileNotFoundError(f"task {self.name}: {split_dir / filename} does not exist ({what})")
        if split == "train":
            self.check_unknown_label()
        self.check_targets(split, split_dir, ids)
        if split == "train":
            self.check_batching()
        self._checked.add(split)

    def train_durations(self) -> list[float]:
        """Seconds of each training example as the batch sampler sees them (after any crop)."""
        return self.dataset("train", train=True).durations

    def check_batching(self) -> None:
        """Start-up: the sampler drops training utterances longer than max_batch_seconds (unless
        max_seconds crops them); when that is all of them, no step could ever run."""
        if self.config.max_seconds is not None:
            return
        durations = self.train_durations()
        cap = float(self.config.max_batch_seconds)
        if durations and min(durations) > cap + 1e-9:
            raise DataCheckError(
                f"every utterance of {self.data_dir / 'train'} is longer than max_batch_seconds {cap} "
                f"(shortest {round(min(durations), 3)} s): raise max_batch_seconds or set max_seconds"
            )

    def utterance_lengths(self, split: str) -> list[tuple[str, str, float]]:
        """(utterance, audio path, seconds) of every example of a split the upstream will see."""
        if split not in self._lengths:
            dataset = self.dataset(split, train=False)
            self._lengths[split] = [
                (u.utt_id, u.path, d) for u, d in zip(dataset.utterances, dataset.full_durations)
            ]
        return self._lengths[split]

    def check_frames(self, upstream: Any, name: str | None = None) -> None:
        """Start-up, once the upstream is known: every example of the checked splits (and a
        `max_seconds` crop) gives it at least one frame. Said here, naming the utterance, rather
        than mid-dump or mid-training by batch index (or, for fbank, a 0-frame example cached and
        trained on silently)."""
        need = min_input_samples(upstream)
        if need is None:
            return
        label = name or upstream_label(upstream)
        crop = self.config.max_seconds
        if crop is not None and round(crop * SAMPLE_RATE) < need:
            raise DataCheckError(
                f"max_seconds {crop} is {round(crop * SAMPLE_RATE)} samples, shorter than one frame of "
                f"{label} ({need} samples)"
            )
        for split in (s for s in SPLITS if s in self._checked):
            for utt, path, seconds in self.utterance_lengths(split):
                samples = round(seconds * SAMPLE_RATE)
                if samples < need:
                    raise DataCheckError(
                        f"utterance '{utt}' ({path}) has {samples} samples, shorter than one frame of "
                        f"{label} ({need} samples)"
                    )

    def check_config(self) -> None:
        """Settings this task cannot train with (a training run checks them at start-up)."""

    def check_unknown_label(self) -> None:
        unknown = self.config.unknown_label
        if unknown is None:
            return
        if not self.uses_unknown_label:
            raise DataCheckError(
                f"unknown_label is set ('{unknown}') but task {self.name} has no labels to map; "
                "it applies to ks, ic, sid and pr"
            )
        if not any(unknown in table.index for table in self.vocabularies()):
            first = self.vocabularies()[0].symbols
            shown = ", ".join(first[:5]) + (", ..." if len(first) > 5 else "")
            raise DataCheckError(
                f"unknown_label '{unknown}' is not a label of {self.data_dir / 'train'} "
                f"({self.target_file}) nor of {self.data_dir / LABELS_FILE} (labels: {shown})"
            )

    def check_targets(self, split: str, split_dir: Path, ids: list[str]) -> None:
        """The target file has exactly the split's utterances; dev/test labels are known."""
        path = split_dir / self.target_file
        load_targets(self.target_file, path, ids, data_dir=split_dir)
        if split != "train":
            for line, utt, value in read_table_lines(path):
                self.check_label(path, line, utt, value)

    def check_label(self, path: Path, line: int, utt: str, value: str) -> None:
        """Raise `DataCheckError` naming `path:line` when `value` holds a label training never saw."""

    def _known(self, table: TokenTable, label: str) -> str | None:
        """`label`, or the unknown class it maps to, or None."""
        if label in table.index:
            return label
        unknown = self.config.unknown_label
        return unknown if unknown is not None and unknown in table.index else None

    def _unseen(
        self, path: Path, line: int, utt: str, label: str, what: str, table: TokenTable
    ) -> DataCheckError:
        unknown = self.config.unknown_label
        hint = (
            f"unknown_label '{unknown}' is not one of them"
            if unknown
            else f"declare it in {self.data_dir / LABELS_FILE} "
            "or set unknown_label to a training class to map it to"
        )
        return DataCheckError(
            f"{path}:{line}: {what} '{label}' of utterance '{utt}' is not in the training set "
            f"({len(table)} known); {hint}"
        )

    def _encode_label(self, table: TokenTable, label: str) -> str:
        known = self._known(table, label)
        if known is None:
            raise DataCheckError(f"label '{label}' is not in the training set ({len(table)} known)")
        return known

    # data
    def targets(
        self, split_dir: Path, *, train: bool
    ) -> tuple[dict[str, Any], dict[str, Callable[[str], Any]]]:
        raise NotImplementedError

    def dataset(self, split: str, *, train: bool) -> AudioDataset:
        split_dir = self.data_dir / split
        if not split_dir.is_dir():
            raise FileNotFoundError(
                f"task {self.name}: data dir {split_dir} does not exist "
                f"(expected {self.data_dir}/{{train,dev,test}})"
            )
        targets, transforms = self.targets(split_dir, train=train)
        return AudioDataset(
            DataDir.load(split_dir),
            targets=targets,
            target_transforms=transforms,
            max_seconds=self.config.max_seconds if train else None,
            crop="random" if train else "start",
            seed=self.config.seed,
        )

    def has_split(self, split: str) -> bool:
        return (self.data_dir / split).is_dir()

    def sample_weights(self, dataset: AudioDataset) -> list[float] | None:
        """Per training utterance, how likely the sampler draws it (None: each once per epoch)."""
        return None

    def train_loader(
        self, batching: BatchingConfig, *, seed: int, rank: int = 0, world_size: int = 1, num_workers: int = 0
    ) -> DataLoader:
        """The training loader (`build_loader`'s), its sampler drawing by `sample_weights` when
        the task has them (the same batching otherwise)."""
        dataset = self.dataset("train", train=True)
        loader = build_loader(
            dataset,
            batching,
            train=True,
            seed=seed,
            rank=rank,
            world_size=world_size,
            num_workers=num_workers,
        )
        weights = self.sample_weights(dataset)
        if weights is not None:
            plain = loader.batch_sampler
            sampler = DurationBucketSampler(
                dataset.durations, plain.max_batch_seconds, max_batch_size=plain.max_batch_size,
                num_replicas=world_size, rank=rank, seed=seed, num_buckets=plain.num_buckets,
                long_utterances=plain.long_utterances, weights=weights, static_shapes=plain.static_shapes,
            )  # fmt: skip
            loader = DataLoader(
                dataset, batch_sampler=sampler, collate_fn=loader.collate_fn, num_workers=loader.num_workers
            )
        self._warn_dropped(dataset, loader.batch_sampler)
        return loader

    def _warn_dropped(self, dataset: AudioDataset, sampler: DurationBucketSampler) -> None:
        """Say which training utterances the sampler leaves out (longer than the cap, not cropped)."""
        dropped = getattr(sampler, "dropped", [])
        if dropped:
            log.warning(
                "task %s: %d of %d training utterances of %s are longer than max_batch_seconds %s and "
                "are left out of training (first: '%s'); raise max_batch_seconds or set max_seconds",
                self.name, len(dropped), len(dataset.utterances), self.data_dir / "train",
                float(sampler.max_batch_seconds), dataset.utterances[dropped[0]].utt_id,
            )  # fmt: skip

    # model
    def build_head(self, input_dim: int) -> nn.Module:
        raise NotImplementedError

    def loss(
        self, head: nn.Module, x: Tensor, lengths: Tensor, batch: dict
    ) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    # evaluation
    def predict(self, head: nn.Module, x: Tensor, lengths: Tensor, batch: dict) -> list[Any]:
        raise NotImplementedError

    def references(self, batch: dict) -> list[Any]:
        raise NotImplementedError

    def score(self, refs: list[Any], hyps: list[Any]) -> float:
        return metrics.accuracy(refs, hyps)

    def evaluate(
        self,
        features: Callable[[dict], tuple[Tensor, Tensor]],
        head: nn.Module,
        batches: Iterable[dict],
        split: str,
    ) -> dict[str, float]:
        """{metric: value, ...} over a split; `features(batch)` runs upstream + featurizer."""
        refs, hyps = [], []
        for batch in batches:
            x, lengths = features(batch)
            hyps += self.predict(head, x, lengths, batch)
            refs += self.references(batch)
        return self.scores(refs, hyps)

    def scores(self, refs: list[Any], hyps: list[Any]) -> dict[str, float]:
        """The task metric (and any others the task reports) of a split's predictions."""
        return {self.metric: self.score(refs, hyps)}

    def better(self, a: float, b: float) -> bool:
        """Is metric value a strictly better than b?"""
        return a > b if self.higher_is_better else a < b

    # optional hooks (sd uses them; other tasks keep these no-ops)
    feature_cache_bypass: str | None = None  # why the feature cache cannot serve this task

    def bind_upstream(self, upstream: Any) -> None:
        """Learn what the targets depend on from the prepared upstream (sd: its frame rate)."""

    def write_predictions(self, out_dir: Path, split: str) -> str | None:
        """Write the last evaluation's predictions into the experiment; their path, or None."""
        return None


def asr_head(config: DownstreamConfig, input_dim: int, vocab_size: int) -> BiLSTMCTCHead:
    """SUPERB's ASR head (also slot filling's): SpecAugment, BiLSTMs, CTC output layer."""
    h = config.head
    augment = (
        SpecAugment(
            num_time_masks=h.num_time_masks, time_mask_width=h.time_mask_width,
            num_freq_masks=h.num_freq_masks, freq_mask_width=h.freq_mask_width,
        )
        if h.spec_augment
        else None
    )  # fmt: skip
    return BiLSTMCTCHead(
        input_dim, vocab_size, hidden_dim=h.lstm_dim, num_layers=h.lstm_layers, dropout=h.dropout,
        spec_augment=augment,
    )  # fmt: skip


class _CTCTask(Task):
    higher_is_better = False
    target_name = "tokens"
    infeasible_batches = 0  # training batches whose every CTC loss was infinite (logged)

    @cached_property
    def tokens(self) -> TokenTable:
        return self.load_or_build_tokens()

    def load_or_build_tokens(self) -> TokenTable:
        raise NotImplementedError

    def vocabularies(self) -> list[TokenTable]:
        return [self.tokens]

    def check_config(self) -> None:
        if self.config.max_seconds is not None:
            raise ValueError(
                f"max_seconds ({self.config.max_seconds}) crops the audio but not the transcript: task "
                f"{self.name} cannot train with it (set max_seconds: null)"
            )

    def loss(self, head, x, lengths, batch):
        logits, out_lens = head(x, lengths)  # (B, T, V)
        targets, target_lens = batch.targets[self.target_name], batch.target_lens[self.target_name]
        if head.training:
            self._count_infeasible(out_lens, target_lens)
        return ctc_loss(F.log_softmax(logits.float(), dim=-1), out_lens, targets, target_lens), {}

    def _count_infeasible(self, out_lens: Tensor, target_lens: Tensor) -> None:
        """Warn when no utterance of a training batch has enough frames for its targets: its CTC
        loss is infinite for all of them (zeroed by zero_infinity), so the batch trains nothing.
        Checked where the frame counts are on the host only: on an accelerator the read would cost
        a device sync every step."""
        if out_lens.device.type != "cpu" or bool((out_lens >= target_lens.cpu()).any()):
            return
        self.infeasible_batches += 1
        if self.infeasible_batches == 1 or self.infeasible_batches % 100 == 0:
            log.warning(
                "task %s: %d training batch(es) so far where every utterance has fewer frames than "
                "targets (CTC loss infinite, zeroed): these batches train nothing",
                self.name,
                self.infeasible_batches,
            )

    def predict(self, head, x, lengths, batch):
        logits, out_lens = head(x, lengths)
        return ctc_greedy(logits, out_lens)

    def references(self, batch):
        targets, target_lens = batch.targets[self.target_name], batch.target_lens[self.target_name]
        return [targets[b, :n].tolist() for b, n in enumerate(target_lens.tolist())]


class PhoneRecognition(_CTCTask):
    """PR: phones file (space-separated phone symbols) -> linear CTC head; PER."""

    name, metric = "pr", "per"
    target_file, target_help = "phones", "the space-separated phones of each utterance"
    uses_unknown_label = True

    def load_or_build_tokens(self) -> TokenTable:
        def build() -> list[str]:
            phones = {p for *_, value in self._train_rows() for p in value.split()}
            return [BLANK, *sorted(phones | set(declared_labels(self.data_dir)) - {BLANK}, key=str.encode)]

        return self._table("tokens.txt", build)

    def check_label(self, path, line, utt, value):
        for phone in value.split():
            if self._known(self.tokens, phone) is None:
                raise self._unseen(path, line, utt, phone, "phone", self.tokens)

    def targets(self, split_dir, *, train):
        return (
            {self.target_name: split_dir / "phones"},
            {
                self.target_name: lambda v: self.tokens.encode(
                    [self._encode_label(self.tokens, p) for p in v.split()]
                )
            },
        )

    def build_head(self, input_dim):
        return ProjectedCTCHead(input_dim, len(self.tokens), projector_dim=self.config.head.hidden_dim)

    def score(self, refs, hyps):
        return metrics.phone_error_rate(
            [self.tokens.decode(r) for r in refs], [self.tokens.decode(h) for h in hyps]
        )


class MultilingualPhoneRecognition(PhoneRecognition):
    """MLPR (multilingual phone recognition, after ML-SUPERB, which scores multilingual ASR by
    CER): one CTC head over the phones of every language of `<data>/train` (a symbol shared by two
    languages is one token), plus the inventories `<data>/phones/<lang>.txt` declare; PER overall
    and per language (`utt2lang`)."""

    name = "mlpr"

    def load_or_build_tokens(self) -> TokenTable:
        def build() -> list[str]:
            phones = {p for *_, value in self._train_rows() for p in value.split()}
            declared = set(declared_labels(self.data_dir)) | set(self._inventories())
            return [BLANK, *sorted((phones | declared) - {BLANK}, key=str.encode)]

        return self._table("tokens.txt", build)

    def _inventories(self) -> list[str]:
        """Phones of `<data>/phones/*.txt` (`phone index` lines, as the synthetic corpus writes them;
        the silence phone is not a target)."""
        found = []
        for path in sorted((self.data_dir / "phones").glob("*.txt")):
            found += [
                line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
            ]
        return [p for p in found if p != "sil"]

    def required_files(self, split: str) -> tuple[str, ...]:
        return ("phones", "utt2lang")

    def check_targets(self, split, split_dir, ids):
        super().check_targets(split, split_dir, ids)
        check_values_present(split_dir / "utt2lang", "language")
        load_targets("utt2lang", split_dir / "utt2lang", ids, data_dir=split_dir)

    def targets(self, split_dir, *, train):
        targets, transforms = super().targets(split_dir, train=train)
        return {**targets, "lang": split_dir / "utt2lang"}, transforms

    def references(self, batch):
        return list(zip(batch.targets["lang"], super().references(batch)))

    def score(self, refs, hyps):
        return super().score([ids for _, ids in refs], hyps)

    def scores(self, refs, hyps):
        out = {self.metric: self.score(refs, hyps)}
        for lang in sorted({lang for lang, _ in refs}):
            keep = [k for k, (code, _) in enumerate(refs) if code == lang]
            out[f"per_{lang}"] = self.score([refs[k] for k in keep], [hyps[k] for k in keep])
        return out


class SlotFilling(_CTCTask):
    """SF (SUPERB's slot filling): CTC over the transcript with its slot tags, `utt2slot_text`
    (`put on B-music_genre jazz E-music_genre music`): the characters of the words ('|' between
    words) and each `B-<slot>`/`E-<slot>` tag one token; the ASR head. Slot-type F1 (the dev
    metric) and slot-value CER (metrics.slot_type_f1 / slot_value_cer), plus WER and CER of the
    words without tags."""

    name, metric, higher_is_better = "sf", "slot_type_f1", True
    target_file, target_help = "utt2slot_text", "the transcript with B-<slot> ... E-<slot> tags"

    @staticmethod
    def _is_tag(word: str) -> bool:
        return word.startswith(("B-", "E-")) and len(word) > 2

    def load_or_build_tokens(self) -> TokenTable:
        def build() -> list[str]:
            words = [w for *_, value in self._train_rows() for w in value.split()]
            tags = {w for w in words if self._is_tag(w)}
            chars = {c for w in words if not self._is_tag(w) for c in w}
            return [
                BLANK,
                WORD_SEP,
                UNK,
                *sorted(tags, key=str.encode),
                *sorted(chars - {BLANK, WORD_SEP, UNK}),
            ]

        return self._table("tokens.txt", build)

    def _encode(self, tagged: str) -> Tensor:
        known, ids = self.tokens.index, []
        for k, word in enumerate(tagged.split()):
            if k:
                ids.append(WORD_SEP)
            if self._is_tag(word):
                ids.append(word if word in known else UNK)
            else:
                ids.extend(c if c in known else UNK for c in word)
        return self.tokens.encode(ids)

    def _decode(self, ids: list[int]) -> str:
        words, current = [], ""
        for token in self.tokens.decode(ids):
            if token == WORD_SEP or self._is_tag(token):
                words.append(current)
                current = ""
                if self._is_tag(token):
                    words.append(token)
            else:
                current += token
        words.append(current)
        return " ".join(w for w in words if w)

    def targets(self, split_dir, *, train):
        path = split_dir / self.target_file
        return {self.target_name: path, "tagged": path}, {self.target_name: self._encode}

    def build_head(self, input_dim):
        return asr_head(self.config, input_dim, len(self.tokens))

    def predict(self, head, x, lengths, batch):
        return [self._decode(ids) for ids in super().predict(head, x, lengths, batch)]

    def references(self, batch):
        return list(batch.targets["tagged"])

    def score(self, refs, hyps):
        return metrics.slot_type_f1(refs, hyps)

    def scores(self, refs, hyps):
        words = [metrics.parse_slots(r)[0] for r in refs], [metrics.parse_slots(h)[0] for h in hyps]
        return {
            "slot_type_f1": self.score(refs, hyps),
            "slot_value_cer": metrics.slot_value_cer(refs, hyps),
            "wer": metrics.word_error_rate(*words),
            "cer": metrics.char_error_rate(*words),
        }


class SpeechRecognition(_CTCTask):
    """ASR: text -> characters ('|' between words) or sentencepiece units; BiLSTM CTC head; WER
    (and CER over the characters of the words).
    Characters of dev/test that the training text lacks become `<unk>` (said once at start-up);
    the WER is scored on the words, so such a word still counts as an error."""

    name, metric = "asr", "wer"
    target_file, target_help = "text", "the transcript of each utterance"

    _trained_spm: tempfile.TemporaryDirectory | None = None  # trained at start-up, saved by save()

    def _spm_source(self) -> Path | None:
        """The sentencepiece model to use: EXP/task/spm.model, else `sentencepiece_model`, else
        the one the start-up check trained (not yet in EXP)."""
        own = self.task_dir / "spm.model"
        if own.is_file():
            return own
        if self._trained_spm is not None:
            return Path(self._trained_spm.name) / "spm.model"
        if self.config.sentencepiece_model is not None:
            given = Path(self.config.sentencepiece_model)
            if not given.is_file():
                raise FileNotFoundError(
                    f"sentencepiece_model {given} does not exist "
                    "(train one with `speechssl downstream tokenizer`)"
                )
            return given
        return None

    @cached_property
    def sp(self):
        if self.config.asr_units != "sentencepiece":
            return None
        model = self._spm_source()
        if model is None:  # trained at start-up and kept in EXP/task/ by save()
            raise self._spm_removed()
        import sentencepiece as spm

        return spm.SentencePieceProcessor(model_file=str(model))

    def _spm_removed(self) -> FileNotFoundError:
        return FileNotFoundError(
            f"{self.task_dir / 'spm.model'} does not exist: the experiment's sentencepiece model"
            " (asr_units: sentencepiece) was removed; restore it, or train into another --out"
        )

    def check_saved_vocabularies(
        self, advice: str = "resume with the same training data, or train into another --out"
    ) -> None:
        """A resumed run never trains the experiment's sentencepiece model again: one trained on
        the train text as it is now could give the head's outputs other pieces. (save() writes
        spm.model before spm.vocab, so spm.vocab without it means it was removed.)"""
        own = self.task_dir / "spm.model"
        if (
            self.config.asr_units == "sentencepiece"
            and not own.is_file()
            and (self.task_dir / "spm.vocab").is_file()
        ):
            raise self._spm_removed()
        super().check_saved_vocabularies(advice)

    def _train_spm(self) -> None:
        """Start-up: the model of `sentencepiece_vocab_size` pieces on the training text, trained
        now (a size too small for its characters is refused before the upstream loads or EXP is
        written) in a temp dir, and kept in EXP by `save`."""
        trained = tempfile.TemporaryDirectory(prefix="speechssl-spm-")
        try:
            train_tokenizer(
                self.data_dir / "train" / "text",
                trained.name,
                self.config.sentencepiece_vocab_size,
                check_out=False,
            )
        except ValueError as err:
            trained.cleanup()
            raise DataCheckError(f"sentencepiece_vocab_size: {err}") from None
        self._trained_spm = trained

    def save(self) -> None:
        if self.config.asr_units == "sentencepiece":
            self.task_dir.mkdir(parents=True, exist_ok=True)
            if self._spm_source() is None:  # save() without the start-up check
                self._train_spm()
            model, own = self._spm_source(), self.task_dir / "spm.model"
            if model != own:  # the experiment keeps its own copy (evaluation reads it back)
                for source in sorted(model.parent.iterdir()) if self._trained_spm else [model]:
                    with atomic_file(self.task_dir / source.name) as tmp:
                        shutil.copyfile(source, tmp)
        super().save()

    def vocabularies(self) -> list[TokenTable]:
        return (
            [] if self.config.asr_units == "sentencepiece" and self._spm_source() is None else [self.tokens]
        )

    def load_or_build_tokens(self) -> TokenTable:
        if self.sp is not None:
            return TokenTable([self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())])

        def build() -> list[str]:
            chars = {c for *_, value in self._train_rows() for c in value.replace(" ", "")}
            return [BLANK, WORD_SEP, UNK, *sorted(chars - {BLANK, WORD_SEP, UNK}, key=str.encode)]

        return self._table("tokens.txt", build)

    def check_targets(self, split, split_dir, ids):
        super().check_targets(split, split_dir, ids)
        if self.config.asr_units == "sentencepiece":
            # a given model must exist; sentencepiece has its own unknown piece
            if self._spm_source() is None and split == "train":
                self._train_spm()
            return
        if split == "train":
            return
        path = split_dir / "text"
        unseen = [
            (line, c)
            for line, _, value in read_table_lines(path)
            for c in value.replace(" ", "")
            if c not in self.tokens.index
        ]
        if unseen and UNK not in self.tokens.index:  # an experiment of an older speechssl
            raise DataCheckError(
                f"{path}:{unseen[0][0]}: character '{unseen[0][1]}' is not in the training text "
                f"({len(self.tokens)} known)"
            )
        if unseen:
            chars = "".join(sorted({c for _, c in unseen}))
            log.warning(
                "%s: %d character(s) the training text lacks ('%s', first on line %d) are scored as %s",
                path,
                len(unseen),
                chars,
                unseen[0][0],
                UNK,
            )

    def _encode(self, text: str) -> Tensor:
        if self.sp is not None:
            return torch.tensor(self.sp.encode(text), dtype=torch.long)
        known = self.tokens.index
        chars = WORD_SEP.join(text.split())
        return self.tokens.encode(c if c in known or UNK not in known else UNK for c in chars)

    def _decode(self, ids: list[int]) -> str:
        if self.sp is not None:
            return self.sp.decode(ids)
        return " ".join("".join(self.tokens.decode(ids)).replace(WORD_SEP, " ").split())

    def targets(self, split_dir, *, train):
        text = split_dir / "text"
        return {self.target_name: text, "words": text}, {self.target_name: self._encode}

    def build_head(self, input_dim):
        return asr_head(self.config, input_dim, len(self.tokens))

    def predict(self, head, x, lengths, batch):
        return [self._decode(ids) for ids in super().predict(head, x, lengths, batch)]

    def references(self, batch):
        return list(batch.targets["words"])

    def score(self, refs, hyps):
        return metrics.word_error_rate(refs, hyps)

    def scores(self, refs, hyps):
        return {"wer": self.score(refs, hyps), "cer": metrics.char_error_rate(refs, hyps)}


class _ClassificationTask(Task):
    """Utterance-level classes from a `utt value` file: those of the training split plus the
    ones `<data>/labels.txt` declares."""

    metric = "accuracy"
    target_name = "label"
    uses_unknown_label = True
    what = "label"

    @cached_property
    def classes(self) -> TokenTable:
        def build() -> list[str]:
            labels = {value.strip() for *_, value in self._train_rows()} | set(declared_labels(self.data_dir))
            return sorted(labels, key=str.encode)

        return self._table("classes.txt", build)

    def vocabularies(self) -> list[TokenTable]:
        return [self.classes]

    def check_label(self, path, line, utt, value):
        if self._known(self.classes, value.strip()) is None:
            raise self._unseen(path, line, utt, value.strip(), self.what, self.classes)

    def check_targets(self, split, split_dir, ids):
        check_values_present(split_dir / self.target_file, self.what)
        super().check_targets(split, split_dir, ids)
        if split == "train":
            labels = [value.strip() for *_, value in self._train_rows()]
            distinct = len(set(labels))
            if distinct > max(MAX_SINGLETON_CLASSES, len(labels) // 2):  # most "classes" seen once or twice
                raise DataCheckError(
                    f"{split_dir / self.target_file}: {distinct} distinct {self.what}s for {len(labels)} "
                    f"utterances: task {self.name} reads one {self.what} per utterance ({self.target_help}); "
                    "is this the data of another task (transcripts)?"
                )

    def _encode_class(self, value: str) -> Tensor:
        return self.classes.encode([self._encode_label(self.classes, value.strip())])[0]

    def targets(self, split_dir, *, train):
        return {self.target_name: split_dir / self.target_file}, {self.target_name: self._encode_class}

    def build_head(self, input_dim):
        return MeanPoolClassifier(input_dim, len(self.classes), hidden_dim=self.config.head.hidden_dim)

    def loss(self, head, x, lengths, batch):
        logits = head(x, lengths)  # (B, V)
        labels = batch.targets[self.target_name]
        loss = F.cross_entropy(logits.float(), labels)
        return loss, {"accuracy": (logits.argmax(-1) == labels).float().mean().detach()}

    def predict(self, head, x, lengths, batch):
        return head(x, lengths).argmax(-1).tolist()

    def references(self, batch):
        return batch.targets[self.target_name].tolist()


class KeywordSpotting(_ClassificationTask):
    """KS: `text` holds the keyword class (12 in Speech Commands v1 protocol)."""

    name, target_file, target_help, what = "ks", "text", "the keyword of each utterance", "keyword"

    def sample_weights(self, dataset: AudioDataset) -> list[float]:
        """Classes drawn uniformly, as s3prl's KS (WeightedRandomSampler, weight N / count(class)
        per utterance, len(train) draws with replacement per epoch)."""
        table = dataset.targets[self.target_name]
        labels = [table[utt] for utt in dataset.utt_ids()]
        counts: dict[str, int] = {}
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
        return [len(labels) / counts[label] for label in labels]


class SpeakerIdentification(_ClassificationTask):
    """SID: the speaker of `utt2spk`; dev/test speakers must be training speakers."""

    name, target_file, target_help, what = "sid", "utt2spk", "the speaker of each utterance", "speaker"


class LanguageIdentification(_ClassificationTask):
    """LID (language identification, after ML-SUPERB's): the language of `utt2lang` through a
    mean-pooled head; accuracy overall and per language."""

    name, target_file, target_help, what = "lid", "utt2lang", "the language of each utterance", "language"

    def scores(self, refs, hyps):
        out = {self.metric: self.score(refs, hyps)}
        for index in sorted(set(refs)):
            keep = [k for k, r in enumerate(refs) if r == index]
            out[f"accuracy_{self.classes.symbols[index]}"] = self.score(
                [refs[k] for k in keep], [hyps[k] for k in keep]
            )
        return out


class IntentClassification(_ClassificationTask):
    """IC: `intent` holds one value per slot ("action object location"); a head per slot;
    an utterance is right only when every slot is."""

    name, target_file, target_help = "ic", "intent", "the 'action object location' intent of each utterance"
    what = "intent"

    @cached_property
    def num_slots(self) -> int:
        """As many as the saved slot tables (evaluation), else as the first training intent."""
        saved = 0
        while (self.task_dir / f"slot{saved}.txt").is_file():
            saved += 1
        return saved or next((len(v.split()) for *_, v in self._train_rows() if v.split()), 0)

    @cached_property
    def slots(self) -> list[TokenTable]:
        declared = declared_labels(self.data_dir)
        for k, intent in enumerate(declared, start=1):
            if len(intent.split()) != self.num_slots:
                raise DataCheckError(
                    f"{self.data_dir / LABELS_FILE}:{k}: intent '{intent}' has "
                    f"{len(intent.split())} slots, expected {self.num_slots}"
                )

        def build(k: int) -> list[str]:
            values = {v.split()[k] for *_, v in self._train_rows()} | {d.split()[k] for d in declared}
            return sorted(values, key=str.encode)

        return [self._table(f"slot{k}.txt", lambda k=k: build(k)) for k in range(self.num_slots)]

    def vocabularies(self) -> list[TokenTable]:
        return self.slots

    def check_targets(self, split, split_dir, ids):
        path = split_dir / "intent"
        check_values_present(path, self.what)
        for line, utt, value in read_table_lines(path):
            if len(value.split()) != self.num_slots:
                raise DataCheckError(
                    f"{path}:{line}: utterance '{utt}' has {len(value.split())} intent slots, "
                    f"expected {self.num_slots} (as {self.data_dir / 'train' / 'intent'})"
                )
        super().check_targets(split, split_dir, ids)

    def check_label(self, path, line, utt, value):
        for k, (slot, part) in enumerate(zip(self.slots, value.split())):
            if self._known(slot, part) is None:
                raise self._unseen(path, line, utt, part, f"slot {k} value", slot)

    def _encode_intent(self, value: str) -> Tensor:
        parts = value.split()
        if len(parts) != self.num_slots:
            raise ValueError(f"expected {self.num_slots} intent slots, found {len(parts)} ('{value}')")
        return torch.stack(
            [slot.encode([self._encode_label(slot, p)])[0] for slot, p in zip(self.slots, parts)]
        )  # (num_slots,)

    def targets(self, split_dir, *, train):
        return {self.target_name: split_dir / "intent"}, {self.target_name: self._encode_intent}

    def build_head(self, input_dim):
        return MeanPoolClassifier(
            input_dim, [len(s) for s in self.slots], hidden_dim=self.config.head.hidden_dim
        )

    def loss(self, head, x, lengths, batch):
        logits = head(x, lengths)  # tuple of (B, V_k)
        labels = batch.targets[self.target_name]  # (B, num_slots)
        loss = sum(F.cross_entropy(lg.float(), labels[:, k]) for k, lg in enumerate(logits))
        right = torch.stack([lg.argmax(-1) == labels[:, k] for k, lg in enumerate(logits)], dim=1).all(dim=1)
        return loss, {"accuracy": right.float().mean().detach()}

    def predict(self, head, x, lengths, batch):
        logits = head(x, lengths)
        return [tuple(p) for p in torch.stack([lg.argmax(-1) for lg in logits], dim=1).tolist()]

    def references(self, batch):
        return [tuple(r) for r in batch.targets[self.target_name].tolist()]


class SpeakerVerification(Task):
    """ASV: x-vector head trained with AM-softmax over the train speakers; cosine scoring of
    `<split>/trials` (`enroll_utt test_utt target|nontarget`); EER (and minDCF)."""

    name, metric, higher_is_better = "asv", "eer", False
    target_file, target_help = "utt2spk", "the speaker of each training utterance"

    @cached_property
    def speakers(self) -> TokenTable:
        return self._table(
            "speakers.txt", lambda: sorted({v.strip() for *_, v in self._train_rows()}, key=str.encode)
        )

    def vocabularies(self) -> list[TokenTable]:
        return [self.speakers]

    def required_files(self, split):
        return ("utt2spk",) if split == "train" else ("trials",)

    def check_targets(self, split, split_dir, ids):
        if split == "train":
            return  # utt2spk is a core file: read (and checked) with the data dir
        path = split_dir / "trials"
        known = set(ids)
        kinds = set()
        for line_no, a, b, target in self.read_trials(split):
            for utt in (a, b):
                if utt not in known:
                    raise DataCheckError(
                        f"{path}:{line_no}: utterance '{utt}' is not in {split_dir} "
                        "(trials name utterances of their own split)"
                    )
            kinds.add(target)
        for kind, name in ((True, "target"), (False, "nontarget")):
            if kind not in kinds:
                raise DataCheckError(
                    f"{path}: no {name} trials (the EER needs both target and nontarget trials)"
                )

    def targets(self, split_dir, *, train):
        if not train:
            return {}, {}
        return {"speaker": split_dir / "utt2spk"}, {"speaker": lambda v: self.speakers.encode([v.strip()])[0]}

    def has_split(self, split: str) -> bool:
        return (self.data_dir / split / "trials").is_file() if split != "train" else super().has_split(split)

    def dataset(self, split: str, *, train: bool) -> AudioDataset:
        """Training: utterances shorter than `head.asv_min_seconds` dropped (logged), the rest
        cropped to `head.asv_max_seconds` (and to `max_seconds` when set), as s3prl's ASV."""
        dataset = super().dataset(split, train=train)
        if not train:
            return dataset
        h = self.config.head
        crops = [c for c in (h.asv_max_seconds, self.config.max_seconds) if c is not None]
        if crops and (dataset.max_seconds is None or min(crops) < dataset.max_seconds):
            dataset.max_seconds = min(crops)
        keep = [i for i, d in enumerate(dataset.full_durations) if d >= h.asv_min_seconds]
        dropped = len(dataset.utterances) - len(keep)
        log.info(
            "task asv: %d of %d training utterances are shorter than asv_min_seconds=%g and are dropped",
            dropped, len(dataset.utterances), h.asv_min_seconds,
        )  # fmt: skip
        if not keep:
            raise DataCheckError(
                f"task asv: every utterance of {self.data_dir / split} is shorter than "
                f"head.asv_min_seconds={h.asv_min_seconds} s; lower it"
            )
        dataset.utterances = [dataset.utterances[i] for i in keep]
        dataset.full_durations = [dataset.full_durations[i] for i in keep]
        cap = math.inf if dataset.max_seconds is None else dataset.max_seconds
        dataset.durations = [min(d, cap) for d in dataset.full_durations]
        return dataset

    def utterance_lengths(self, split: str) -> list[tuple[str, str, float]]:
        if split == "train" and split not in self._lengths:  # those asv_min_seconds keeps
            dataset = self.dataset(split, train=True)
            self._lengths[split] = [
                (u.utt_id, u.path, d) for u, d in zip(dataset.utterances, dataset.full_durations)
            ]
        return super().utterance_lengths(split)

    def build_head(self, input_dim):
        h = self.config.head
        return nn.ModuleDict(
            {
                "xvector": XVectorHead(
                    input_dim,
                    channels=h.xvector_channels,
                    agg_dim=h.xvector_agg_dim,
                    embed_dim=h.embed_dim,
                    batch_norm=h.xvector_batch_norm,
                ),  # fmt: skip
                "am_softmax": AdditiveMarginSoftmax(
                    h.embed_dim, len(self.speakers), margin=h.am_margin, scale=h.am_scale
                ),
            }
        )

    def loss(self, head, x, lengths, batch):
        loss, cosine = head["am_softmax"](head["xvector"](x, lengths).float(), batch.targets["speaker"])
        return loss, {"accuracy": (cosine.argmax(-1) == batch.targets["speaker"]).float().mean().detach()}

    def read_trials(self, split: str) -> list[tuple[int, str, str, bool]]:
        """(line, enroll_utt, test_utt, is_target) for each trial of `<split>/trials`."""
        path = self.data_dir / split / "trials"
        if not path.is_file():
            raise FileNotFoundError(
                f"task asv: {path} does not exist (lines: enroll_utt test_utt target|nontarget)"
            )
        trials = []
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 3 or parts[2] not in ("target", "nontarget"):
                raise DataCheckError(
                    f"{path}:{line_no}: expected 'enroll_utt test_utt target|nontarget', "
                    f"found '{line.strip()}'"
                )
            trials.append((line_no, parts[0], parts[1], parts[2] == "target"))
        return trials

    def evaluate(self, features, head, batches, split):
        trials = self.read_trials(split)
        embeddings: dict[str, Tensor] = {}
        for batch in batches:
            x, lengths = features(batch)
            emb = F.normalize(head["xvector"].embedding(x, lengths).float(), dim=-1).cpu()  # (B, E)
            embeddings.update(zip(batch.utt_ids, emb))
        scores, labels = [], []
        for line_no, a, b, target in trials:
            for utt in (a, b):
                if utt not in embeddings:
                    raise DataCheckError(
                        f"{self.data_dir / split / 'trials'}:{line_no}: utterance '{utt}' is not "
                        f"in {self.data_dir / split}"
                    )
            scores.append(float(embeddings[a] @ embeddings[b]))
            labels.append(target)
        return {"eer": metrics.equal_error_rate(scores, labels), "min_dcf": metrics.min_dcf(scores, labels)}


class SpeakerDiarization(Task):
    """SD as SUPERB (s3prl's diarization expert): the examples are the recordings of wav.scp, whose
    `segments` turns (speakers from utt2spk) become 0/1 activity targets at the upstream's frame rate
    (`bind_upstream`) in a fixed number of speaker slots (the most speakers of a training recording,
    EXP/task/slots.txt). Training draws a random `max_seconds` chunk of a recording per example
    (s3prl: chunk_size frames); dev and test score whole recordings. Head: `DiarizationHead`
    (head.sd_rnn_layers LSTMs of head.sd_hidden_dim, then linear); loss: PIT BCE; decoding: sigmoid > 0.5
    after an 11-frame median filter (diarization.decode_turns); DER with a 0.25 s collar against
    `<split>/rttm`, with its miss, false alarm and confusion shares. `downstream evaluate` writes the
    hypothesis to EXP/hyp_<split>.rttm. The feature cache is not used (`feature_cache_bypass`)."""

    name, metric, higher_is_better = "sd", "der", False
    target_file, target_help = "rttm", "the NIST RTTM of each recording's speaker turns"
    target_name = "activity"
    collar, threshold, median = 0.25, 0.5, 11  # SUPERB's scoring and decoding
    # why open_features leaves a set cache unused: it stores a split's Kaldi utterances, which for
    # a diarization split are its turns (segments), while SD reads windows of whole recordings
    feature_cache_bypass = (
        "task sd trains on windows of whole recordings; the cache holds a split's utterances "
        "(for a diarization split: the turns of its segments)"
    )

    def __init__(self, data_dir: Path, exp_dir: Path, config: DownstreamConfig) -> None:
        super().__init__(data_dir, exp_dir, config)
        self._frame_shift: float | None = None
        self._recordings: dict[str, dict[str, Recording]] = {}
        self.hypotheses: dict[str, dict[str, list[metrics.Turn]]] = {}  # split -> reco -> turns

    def bind_upstream(self, upstream: Any) -> None:
        """Targets follow the upstream's frames: one per `downsample_rate` samples (runner hook)."""
        if not getattr(upstream, "fixed_rate", True):  # duck-typed upstreams: one frame each
            raise DataCheckError(
                "task sd needs one upstream frame per downsample_rate samples; de-duplicated or BPE "
                "tokens (tokens:DIR with --dedup / --bpe-vocab) come at a variable rate"
            )
        self._frame_shift = upstream.downsample_rate / SAMPLE_RATE

    def train_durations(self) -> list[float]:
        """The training recordings, cut to `max_seconds` windows when set (the training dataset
        needs the upstream's frame rate, unknown at start-up)."""
        cap = math.inf if self.config.max_seconds is None else self.config.max_seconds
        return [min(rec.seconds, cap) for rec in self.recordings("train").values()]

    @property
    def frame_shift(self) -> float:
        if self._frame_shift is None:
            raise RuntimeError("task sd: bind_upstream(upstream) must come before its datasets")
        return self._frame_shift

    def recordings(self, split: str) -> dict[str, Recording]:
        """The recordings of a split with their turns (read and checked once)."""
        if split not in self._recordings:
            self._recordings[split] = load_recordings(self.data_dir / split)
        return self._recordings[split]

    @cached_property
    def slots(self) -> TokenTable:
        def build() -> list[str]:
            most = max(len(rec.speakers) for rec in self.recordings("train").values())
            return [f"spk{k}" for k in range(most)]

        return self._table("slots.txt", build)

    def vocabularies(self) -> list[TokenTable]:
        return [self.slots]

    def required_files(self, split):
        return ("rttm",)  # the others: load_recordings names each missing one

    def check_targets(self, split, split_dir, ids):
        recordings = self.recordings(split)
        if not recordings:
            raise DataCheckError(f"{split_dir / 'wav.scp'}: the split has no recordings")
        if not any(rec.turns for rec in recordings.values()):
            raise DataCheckError(f"{split_dir / 'segments'}: the split has no speaker turns")
        if split == "train":
            return
        slots = len(self.slots)
        first_line = {}
        for line, reco, _ in rttm_lines(split_dir / "rttm"):
            first_line.setdefault(reco, line)
        for reco, rec in recordings.items():
            if len(rec.speakers) > slots:
                raise DataCheckError(
                    f"{split_dir / 'rttm'}:{first_line.get(reco, 1)}: recording '{reco}' has "
                    f"{len(rec.speakers)} speakers, more than the {slots} speaker slots (the most "
                    f"speakers of a recording of {self.data_dir / 'train'})"
                )

    def _activity(self, split: str, reco: str) -> Tensor:
        return recording_targets(self.recordings(split)[reco], len(self.slots), self.frame_shift)

    def dataset(self, split: str, *, train: bool) -> AudioDataset:
        """The recordings of a split (wav.scp keys, lengths from reco2dur) with their activity."""
        split_dir = self.data_dir / split
        recordings = self.recordings(split)
        data = DataDir.load(split_dir)
        view = DataDir(
            path=split_dir, wav_scp=data.wav_scp, utt2dur={r: rec.seconds for r, rec in recordings.items()}
        )
        return AudioDataset(
            view,
            targets={self.target_name: {reco: reco for reco in recordings}},
            target_transforms={self.target_name: partial(self._activity, split)},
            max_seconds=self.config.max_seconds if train else None,
            crop="random" if train else "start",
            label_rates={self.target_name: 1.0 / self.frame_shift} if train else None,
            seed=self.config.seed,
        )

    def build_head(self, input_dim):
        h = self.config.head
        return DiarizationHead(
            input_dim, len(self.slots), hidden_dim=h.sd_hidden_dim, num_layers=h.sd_rnn_layers
        )

    def _logits(self, head, x, lengths, batch) -> tuple[Tensor, Tensor, Tensor]:
        """Logits and targets cut to the frames both have (upstream frame counts round differently
        from floor(seconds / frame_shift)), and the valid frames of each."""
        logits, out_lens = head(x, lengths)  # (B, T, slots)
        targets = batch.targets[self.target_name]  # (B, T', slots), padded with -100
        frames = min(logits.shape[1], targets.shape[1])
        valid = torch.minimum(out_lens, batch.target_lens[self.target_name].to(out_lens.device)).clamp(
            max=frames
        )
        return logits[:, :frames].float(), targets[:, :frames].clamp(min=0).to(logits.device), valid

    def loss(self, head, x, lengths, batch):
        logits, targets, valid = self._logits(head, x, lengths, batch)
        loss, _ = pit_bce_loss(logits, targets, valid)
        return loss, {}

    def evaluate(self, features, head, batches, split):
        hypotheses: dict[str, list[metrics.Turn]] = {}
        for batch in batches:
            x, lengths = features(batch)
            logits, out_lens = head(x, lengths)
            probs = torch.sigmoid(logits.float()).cpu().numpy()  # (B, T, slots)
            for b, reco in enumerate(batch.utt_ids):
                hypotheses[reco] = decode_turns(
                    probs[b, : int(out_lens[b])], self.slots.symbols, self.frame_shift,
                    threshold=self.threshold, median=self.median,
                )  # fmt: skip
        self.hypotheses[split] = hypotheses
        reference = read_rttm(self.data_dir / split / "rttm")
        counts = [
            metrics.diarization_counts(reference.get(reco, []), hypotheses.get(reco, []), collar=self.collar)
            for reco in self.recordings(split)
        ]
        total = sum(counts[1:], counts[0])
        shares = {
            name: value / total.scored if total.scored > 0 else math.nan
            for name, value in (
                ("miss", total.missed), ("false_alarm", total.false_alarm), ("confusion", total.confusion),
            )
        }  # fmt: skip
        return {
            "der": float(total.der),
            **{k: float(v) for k, v in shares.items()},
            "scored_seconds": float(total.scored),
        }

    def write_predictions(self, out_dir: Path, split: str) -> str:
        """EXP/hyp_<split>.rttm: the turns of the last `evaluate` of `split` (atomic); its name."""
        name = f"hyp_{split}.rttm"
        atomic_write_text(Path(out_dir) / name, format_rttm(self.hypotheses.get(split, {})))
        return name


TASKS: dict[str, type[Task]] = {
    "pr": PhoneRecognition,
    "asr": SpeechRecognition,
    "ks": KeywordSpotting,
    "ic": IntentClassification,
    "sid": SpeakerIdentification,
    "asv": SpeakerVerification,
    "sf": SlotFilling,
    "mlpr": MultilingualPhoneRecognition,
    "lid": LanguageIdentification,
    "sd": SpeakerDiarization,
}


def build_task(name: str, data_dir: str | Path, exp_dir: str | Path, config: DownstreamConfig) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task '{name}'; valid tasks: {', '.join(TASKS)}")
    return TASKS[name](Path(data_dir), Path(exp_dir), config)
