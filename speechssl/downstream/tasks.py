"""SUPERB tasks: each knows its data files, vocabulary, head, loss, decoding and metric.

A task is built once per experiment with `build_task(name, data_dir, exp_dir, config)`:
vocabularies are made from the data (or read back from `exp_dir/task/`, so
evaluation uses the same indices as training), then the runner asks it for
datasets, a head, a loss per batch, and a metric per split.

| task | data file (per split)  | head                        | loss        | metric      |
|------|------------------------|-----------------------------|-------------|-------------|
| pr   | phones                 | linear                      | CTC         | PER (lower) |
| asr  | text                   | 2-layer BiLSTM              | CTC         | WER (lower) |
| ks   | text (keyword label)   | mean pool + linear          | CE          | accuracy    |
| ic   | intent (3 slots)       | mean pool + linear per slot | CE summed   | accuracy    |
| sid  | utt2spk                | mean pool + linear          | CE          | accuracy    |
| asv  | utt2spk (train), trials| x-vector                    | AM-softmax  | EER (lower) |
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.data.datadir import CORE_FILES, DataDir, read_file
from speechssl.data.dataset import AudioDataset
from speechssl.data.kaldi import read_table, read_table_lines
from speechssl.downstream import metrics
from speechssl.downstream.config import DownstreamConfig
from speechssl.downstream.heads import (
    AdditiveMarginSoftmax,
    BiLSTMCTCHead,
    LinearCTCHead,
    MeanPoolClassifier,
    XVectorHead,
)
from speechssl.io import atomic_write_text
from speechssl.objectives.ctc import ctc_greedy, ctc_loss

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
BLANK = "<blank>"
WORD_SEP = "|"


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


def load_core_data_dir(path: Path) -> DataDir:
    """A data dir's Kaldi core files only. Task files (phones, intent) are read as targets,
    and multi-line files that sit in task data dirs (trials, phone_ctm) are not utterance
    tables, so `DataDir.load` (which parses every extra file) is not used here."""
    if not (path / "wav.scp").is_file():
        raise FileNotFoundError(f"{path / 'wav.scp'} does not exist: every data dir needs a wav.scp")
    tables = {}
    for name in CORE_FILES:
        file = path / name
        tables[name] = None
        if file.is_file():
            tables[name], problems = read_file(file)
            problems = [p for p in problems if "not sorted" not in p.message]
            if problems:
                raise ValueError(f"{problems[0]}; run `speechssl data validate {path}` to list them all")
    return DataDir(path=path, wav_scp=tables["wav.scp"], segments=tables["segments"], utt2spk=tables["utt2spk"],
                   spk2utt=tables["spk2utt"], text=tables["text"], utt2dur=tables["utt2dur"],
                   reco2dur=tables["reco2dur"])


def _split_dirs(data_dir: Path) -> list[Path]:
    return [data_dir / s for s in SPLITS if (data_dir / s).is_dir()]


def _values(data_dir: Path, filename: str) -> list[tuple[Path, int, str, str]]:
    """(file, line, utt, value) over every split that has `filename`."""
    rows = []
    for split in _split_dirs(data_dir):
        path = split / filename
        if path.is_file():
            rows += [(path, line, key, value) for line, key, value in read_table_lines(path)]
    return rows


def train_sentencepiece(text_file: str | Path, model_prefix: str | Path, vocab_size: int, *,
                        model_type: str = "unigram") -> Path:
    """Train a sentencepiece model on `text_file` (one sentence per line); returns the .model path.
    The vocabulary is a soft limit, so tiny corpora still train."""
    import sentencepiece as spm

    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=str(text_file), model_prefix=str(model_prefix), vocab_size=vocab_size, model_type=model_type,
        character_coverage=1.0, hard_vocab_limit=False, bos_id=-1, eos_id=-1, unk_id=1, pad_id=0,
        pad_piece=BLANK, minloglevel=2)
    return model_prefix.with_suffix(".model")


def train_tokenizer(text: str | Path, out_dir: str | Path, vocab_size: int) -> Path:
    """OUT/spm.model: a sentencepiece model on the transcripts of a Kaldi `text` file (ids dropped)."""
    text, out_dir = Path(text), Path(out_dir)
    if not text.is_file():
        raise FileNotFoundError(f"transcripts {text} do not exist")
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = out_dir / "spm_train.txt"
    atomic_write_text(lines, "".join(f"{v}\n" for v in read_table(text).values()))
    return train_sentencepiece(lines, out_dir / "spm", vocab_size)


# ---------------------------------------------------------------- tasks


class Task:
    """Base: a task's data, head and metric. Subclasses set the class attributes."""

    name: str = ""
    metric: str = ""
    higher_is_better: bool = True

    def __init__(self, data_dir: Path, exp_dir: Path, config: DownstreamConfig) -> None:
        self.data_dir, self.exp_dir, self.config = Path(data_dir), Path(exp_dir), config
        self.task_dir = self.exp_dir / "task"
        self.task_dir.mkdir(parents=True, exist_ok=True)

    # data
    def targets(self, split_dir: Path, *, train: bool) -> tuple[dict[str, Any], dict[str, Callable[[str], Any]]]:
        raise NotImplementedError

    def dataset(self, split: str, *, train: bool) -> AudioDataset:
        split_dir = self.data_dir / split
        if not split_dir.is_dir():
            raise FileNotFoundError(f"task {self.name}: data dir {split_dir} does not exist "
                                    f"(expected {self.data_dir}/{{train,dev,test}})")
        targets, transforms = self.targets(split_dir, train=train)
        return AudioDataset(load_core_data_dir(split_dir), targets=targets, target_transforms=transforms,
                            max_seconds=self.config.max_seconds if train else None,
                            crop="random" if train else "start", seed=self.config.seed)

    def has_split(self, split: str) -> bool:
        return (self.data_dir / split).is_dir()

    # model
    def build_head(self, input_dim: int) -> nn.Module:
        raise NotImplementedError

    def loss(self, head: nn.Module, x: Tensor, lengths: Tensor, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    # evaluation
    def predict(self, head: nn.Module, x: Tensor, lengths: Tensor, batch: dict) -> list[Any]:
        raise NotImplementedError

    def references(self, batch: dict) -> list[Any]:
        raise NotImplementedError

    def score(self, refs: list[Any], hyps: list[Any]) -> float:
        return metrics.accuracy(refs, hyps)

    def evaluate(self, features: Callable[[dict], tuple[Tensor, Tensor]], head: nn.Module,
                 batches: Iterable[dict], split: str) -> dict[str, float]:
        """{metric: value} over a split; `features(batch)` runs upstream + featurizer."""
        refs, hyps = [], []
        for batch in batches:
            x, lengths = features(batch)
            hyps += self.predict(head, x, lengths, batch)
            refs += self.references(batch)
        return {self.metric: self.score(refs, hyps)}

    def better(self, a: float, b: float) -> bool:
        """Is metric value a strictly better than b?"""
        return a > b if self.higher_is_better else a < b


class _CTCTask(Task):
    higher_is_better = False
    target_name = "tokens"

    def __init__(self, data_dir: Path, exp_dir: Path, config: DownstreamConfig) -> None:
        super().__init__(data_dir, exp_dir, config)
        self.tokens = self.load_or_build_tokens()

    def load_or_build_tokens(self) -> TokenTable:
        raise NotImplementedError

    def loss(self, head, x, lengths, batch):
        logits, out_lens = head(x, lengths)  # (B, T, V)
        targets, target_lens = batch[self.target_name], batch[f"{self.target_name}_lens"]
        return ctc_loss(F.log_softmax(logits.float(), dim=-1), out_lens, targets, target_lens), {}

    def predict(self, head, x, lengths, batch):
        logits, out_lens = head(x, lengths)
        return ctc_greedy(logits, out_lens)

    def references(self, batch):
        targets, target_lens = batch[self.target_name], batch[f"{self.target_name}_lens"]
        return [targets[b, :n].tolist() for b, n in enumerate(target_lens.tolist())]


class PhoneRecognition(_CTCTask):
    """PR: phones file (space-separated phone symbols) -> linear CTC head; PER."""

    name, metric = "pr", "per"

    def load_or_build_tokens(self) -> TokenTable:
        path = self.task_dir / "tokens.txt"
        if path.is_file():
            return TokenTable.load(path)
        rows = _values(self.data_dir, "phones")
        if not rows:
            raise FileNotFoundError(f"task pr: no 'phones' file under {self.data_dir}/{{train,dev,test}}")
        symbols = sorted({p for *_, value in rows for p in value.split()}, key=str.encode)
        table = TokenTable([BLANK, *symbols])
        table.save(path)
        return table

    def targets(self, split_dir, *, train):
        return ({self.target_name: split_dir / "phones"},
                {self.target_name: lambda v: self.tokens.encode(v.split())})

    def build_head(self, input_dim):
        return LinearCTCHead(input_dim, len(self.tokens))

    def score(self, refs, hyps):
        return metrics.phone_error_rate([self.tokens.decode(r) for r in refs], [self.tokens.decode(h) for h in hyps])


class SpeechRecognition(_CTCTask):
    """ASR: text -> characters ('|' between words) or sentencepiece units; BiLSTM CTC head; WER."""

    name, metric = "asr", "wer"

    def load_or_build_tokens(self) -> TokenTable:
        self.sp = None
        if self.config.asr_units == "sentencepiece":
            model = self.task_dir / "spm.model"
            if not model.is_file():
                train_tokenizer(self.data_dir / "train" / "text", self.task_dir, self.config.sentencepiece_vocab_size)
            import sentencepiece as spm

            self.sp = spm.SentencePieceProcessor(model_file=str(model))
            return TokenTable([self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())])
        path = self.task_dir / "tokens.txt"
        if path.is_file():
            return TokenTable.load(path)
        rows = _values(self.data_dir, "text")
        if not rows:
            raise FileNotFoundError(f"task asr: no 'text' file under {self.data_dir}/{{train,dev,test}}")
        chars = sorted({c for *_, value in rows for c in value.replace(" ", "")}, key=str.encode)
        table = TokenTable([BLANK, WORD_SEP, *chars])
        table.save(path)
        return table

    def _encode(self, text: str) -> Tensor:
        if self.sp is not None:
            return torch.tensor(self.sp.encode(text), dtype=torch.long)
        return self.tokens.encode(WORD_SEP.join(text.split()))

    def _decode(self, ids: list[int]) -> str:
        if self.sp is not None:
            return self.sp.decode(ids)
        return " ".join("".join(self.tokens.decode(ids)).replace(WORD_SEP, " ").split())

    def targets(self, split_dir, *, train):
        text = split_dir / "text"
        return {self.target_name: text, "words": text}, {self.target_name: self._encode}

    def build_head(self, input_dim):
        h = self.config.head
        return BiLSTMCTCHead(input_dim, len(self.tokens), hidden_dim=h.hidden_dim, num_layers=h.lstm_layers,
                             dropout=h.dropout)

    def predict(self, head, x, lengths, batch):
        return [self._decode(ids) for ids in super().predict(head, x, lengths, batch)]

    def references(self, batch):
        return list(batch["words"])

    def score(self, refs, hyps):
        return metrics.word_error_rate(refs, hyps)


class _ClassificationTask(Task):
    """Utterance-level classes from a `utt value` file; the class list is the union over
    splits (so a class missing from a tiny train split still has an index)."""

    metric = "accuracy"
    filename = ""
    target_name = "label"

    def __init__(self, data_dir, exp_dir, config):
        super().__init__(data_dir, exp_dir, config)
        self.classes = self._load_or_build(self.filename, "classes.txt", lambda v: [v.strip()])

    def _load_or_build(self, filename: str, table_file: str, parts: Callable[[str], list[str]],
                       splits: Sequence[str] = SPLITS) -> TokenTable:
        path = self.task_dir / table_file
        if path.is_file():
            return TokenTable.load(path)
        rows = [r for r in _values(self.data_dir, filename) if r[0].parent.name in splits]
        if not rows:
            raise FileNotFoundError(f"task {self.name}: no '{filename}' file under {self.data_dir}/"
                                    f"{{{','.join(splits)}}}")
        table = TokenTable(sorted({p for *_, value in rows for p in parts(value)}, key=str.encode))
        table.save(path)
        return table

    def _encode_class(self, value: str) -> Tensor:
        return self.classes.encode([value.strip()])[0]

    def targets(self, split_dir, *, train):
        return {self.target_name: split_dir / self.filename}, {self.target_name: self._encode_class}

    def build_head(self, input_dim):
        return MeanPoolClassifier(input_dim, len(self.classes), hidden_dim=self.config.head.hidden_dim)

    def loss(self, head, x, lengths, batch):
        logits = head(x, lengths)  # (B, V)
        labels = batch[self.target_name]
        loss = F.cross_entropy(logits.float(), labels)
        return loss, {"accuracy": (logits.argmax(-1) == labels).float().mean().detach()}

    def predict(self, head, x, lengths, batch):
        return head(x, lengths).argmax(-1).tolist()

    def references(self, batch):
        return batch[self.target_name].tolist()


class KeywordSpotting(_ClassificationTask):
    """KS: `text` holds the keyword class (12 in Speech Commands v1 protocol)."""

    name, filename = "ks", "text"


class SpeakerIdentification(_ClassificationTask):
    """SID: the speaker of `utt2spk`."""

    name, filename = "sid", "utt2spk"


class IntentClassification(_ClassificationTask):
    """IC: `intent` holds one value per slot ("action object location"); a head per slot;
    an utterance is right only when every slot is."""

    name, filename = "ic", "intent"

    def __init__(self, data_dir, exp_dir, config):
        Task.__init__(self, data_dir, exp_dir, config)
        rows = _values(self.data_dir, "intent")
        self.num_slots = len(rows[0][3].split()) if rows else 3
        for path, line, utt, value in rows:
            if len(value.split()) != self.num_slots:
                raise ValueError(f"{path}:{line}: utterance '{utt}' has {len(value.split())} intent slots, "
                                 f"expected {self.num_slots} (as {rows[0][0]}:{rows[0][1]})")
        self.slots = [self._load_or_build("intent", f"slot{k}.txt", lambda v, k=k: [v.split()[k]])
                      for k in range(self.num_slots)]

    def _encode_intent(self, value: str) -> Tensor:
        parts = value.split()
        if len(parts) != self.num_slots:
            raise ValueError(f"expected {self.num_slots} intent slots, found {len(parts)} ('{value}')")
        return torch.stack([slot.encode([p])[0] for slot, p in zip(self.slots, parts)])  # (num_slots,)

    def targets(self, split_dir, *, train):
        return {self.target_name: split_dir / "intent"}, {self.target_name: self._encode_intent}

    def build_head(self, input_dim):
        return MeanPoolClassifier(input_dim, [len(s) for s in self.slots], hidden_dim=self.config.head.hidden_dim)

    def loss(self, head, x, lengths, batch):
        logits = head(x, lengths)  # tuple of (B, V_k)
        labels = batch[self.target_name]  # (B, num_slots)
        loss = sum(F.cross_entropy(lg.float(), labels[:, k]) for k, lg in enumerate(logits))
        right = torch.stack([lg.argmax(-1) == labels[:, k] for k, lg in enumerate(logits)], dim=1).all(dim=1)
        return loss, {"accuracy": right.float().mean().detach()}

    def predict(self, head, x, lengths, batch):
        logits = head(x, lengths)
        return [tuple(p) for p in torch.stack([lg.argmax(-1) for lg in logits], dim=1).tolist()]

    def references(self, batch):
        return [tuple(r) for r in batch[self.target_name].tolist()]


class SpeakerVerification(Task):
    """ASV: x-vector head trained with AM-softmax over the train speakers; cosine scoring of
    `<split>/trials` (`enroll_utt test_utt target|nontarget`); EER (and minDCF)."""

    name, metric, higher_is_better = "asv", "eer", False

    def __init__(self, data_dir, exp_dir, config):
        super().__init__(data_dir, exp_dir, config)
        path = self.task_dir / "speakers.txt"
        if path.is_file():
            self.speakers = TokenTable.load(path)
        else:
            utt2spk = self.data_dir / "train" / "utt2spk"
            if not utt2spk.is_file():
                raise FileNotFoundError(f"task asv: {utt2spk} does not exist (training speakers)")
            self.speakers = TokenTable(sorted(set(read_table(utt2spk).values()), key=str.encode))
            self.speakers.save(path)

    def targets(self, split_dir, *, train):
        if not train:
            return {}, {}
        return {"speaker": split_dir / "utt2spk"}, {"speaker": lambda v: self.speakers.encode([v.strip()])[0]}

    def has_split(self, split: str) -> bool:
        return (self.data_dir / split / "trials").is_file() if split != "train" else super().has_split(split)

    def build_head(self, input_dim):
        h = self.config.head
        return nn.ModuleDict({
            "xvector": XVectorHead(input_dim, channels=h.xvector_channels, embed_dim=h.embed_dim),
            "am_softmax": AdditiveMarginSoftmax(h.embed_dim, len(self.speakers), margin=h.am_margin,
                                                scale=h.am_scale),
        })

    def loss(self, head, x, lengths, batch):
        loss, cosine = head["am_softmax"](head["xvector"](x, lengths).float(), batch["speaker"])
        return loss, {"accuracy": (cosine.argmax(-1) == batch["speaker"]).float().mean().detach()}

    def read_trials(self, split: str) -> list[tuple[str, str, bool]]:
        path = self.data_dir / split / "trials"
        if not path.is_file():
            raise FileNotFoundError(f"task asv: {path} does not exist (lines: enroll_utt test_utt target|nontarget)")
        trials = []
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 3 or parts[2] not in ("target", "nontarget"):
                raise ValueError(f"{path}:{line_no}: expected 'enroll_utt test_utt target|nontarget', "
                                 f"found '{line.strip()}'")
            trials.append((parts[0], parts[1], parts[2] == "target"))
        return trials

    def evaluate(self, features, head, batches, split):
        trials = self.read_trials(split)
        embeddings: dict[str, Tensor] = {}
        for batch in batches:
            x, lengths = features(batch)
            emb = F.normalize(head["xvector"](x, lengths).float(), dim=-1).cpu()  # (B, E)
            embeddings.update(zip(batch["utt_ids"], emb))
        scores, labels = [], []
        for line_no, (a, b, target) in enumerate(trials, start=1):
            for utt in (a, b):
                if utt not in embeddings:
                    raise ValueError(f"{self.data_dir / split / 'trials'}:{line_no}: utterance '{utt}' is not "
                                     f"in {self.data_dir / split}")
            scores.append(float(embeddings[a] @ embeddings[b]))
            labels.append(target)
        return {"eer": metrics.equal_error_rate(scores, labels), "min_dcf": metrics.min_dcf(scores, labels)}


TASKS: dict[str, type[Task]] = {
    "pr": PhoneRecognition,
    "asr": SpeechRecognition,
    "ks": KeywordSpotting,
    "ic": IntentClassification,
    "sid": SpeakerIdentification,
    "asv": SpeakerVerification,
}


def build_task(name: str, data_dir: str | Path, exp_dir: str | Path, config: DownstreamConfig) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task '{name}'; valid tasks: {', '.join(TASKS)}")
    return TASKS[name](Path(data_dir), Path(exp_dir), config)
