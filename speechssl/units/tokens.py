"""Discrete speech tokens: `speechssl tokens extract` (k-means units of an upstream layer per utterance,
optionally de-duplicated and BPE-compressed) and their bitrate.

The units are exactly those of `speechssl features --feature upstream` + `speechssl kmeans label` on
the same upstream, layer and k-means model: the features come from the same extractor
(speechssl.features.upstream_features.UpstreamExtractor, batched as `features` batches) and each
frame gets its nearest centroid through the same code (speechssl.units.kmeans.nearest_centroid),
without a feature dump on disk. The output dir holds

    tokens       `utt t1 t2 ...`: units, de-duplicated units (--dedup) or BPE piece ids (--bpe-vocab)
    durations    with --dedup: `utt n1 n2 ...`, the run length (frames) of each de-duplicated unit
    spm.model    with --bpe-vocab: sentencepiece BPE over the units, unit u written as U+4E00 + u
    spm.vocab
    centroids.npy, kmeans.json   a copy of the k-means model the units come from
    tokens.json  the settings (upstream, layer, k-means, K, dedup, BPE), the counts and the bitrate

and is written as a whole (speechssl.outputs.output_directory): a failed run leaves the old one.
`decode_tokens` inverts the chain back to one unit per frame (the dedup run lengths make it
exact; BPE decodes every unit it was trained on). `load_upstream("tokens:DIR")`
(speechssl.models.token_upstream) recomputes the same tokens from audio, for ASR on tokens.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from speechssl.features.dump import NonFiniteFeaturesError
from speechssl.interop.upstream import BUILTIN_UPSTREAMS
from speechssl.io import atomic_write_json
from speechssl.models.token_upstream import (
    CENTROIDS,
    MAX_UNITS,
    SPM_MODEL,
    SUMMARY,
    UnitBPE,
    dedup,
    expand,
    units_to_text,
)
from speechssl.outputs import check_output, output_directory
from speechssl.units.kmeans import PARAMS, KMeansModel, nearest_centroid
from speechssl.units.labels import parse_unit_ids, read_labels

logger = logging.getLogger(__name__)

COMMAND = "tokens extract"
TOKENS = "tokens"
DURATIONS = "durations"
BITRATE_DEFINITION = (
    "sum over token streams of tokens per second x log2(vocabulary size), tokens and seconds summed over "
    "every utterance (Interspeech 2024 discrete-unit challenge / ESPnet ML-SUPERB discrete track); "
    "dedup run lengths are not counted"
)


def bitrate(streams: Sequence[tuple[int, int]], seconds: float) -> float:
    """Bits per second of discrete token streams, as the Interspeech 2024 discrete-unit challenge
    (ESPnet's ML-SUPERB discrete track) and "How Should We Extract Discrete Audio Tokens from
    Self-Supervised Models?" define it: sum over streams m of N_m * log2(|V_m|) / seconds, N_m the
    tokens of stream m in `seconds` of audio and |V_m| its vocabulary. `streams`: (N_m, |V_m|)."""
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, found {seconds}")
    for count, vocab in streams:
        if count < 0 or vocab < 1:
            raise ValueError(f"a stream needs >= 0 tokens and a vocabulary >= 1, found ({count}, {vocab})")
    return sum(count * math.log2(vocab) for count, vocab in streams) / seconds


@dataclass(frozen=True, kw_only=True)
class TokenConfig:
    """How `extract_tokens` turns layer `layer` into tokens."""

    layer: int  # hidden-state index: 0 = transformer input, L = output of layer L
    dedup: bool = False  # one token per run of a unit; run lengths in `durations`
    bpe_vocab: int | None = None  # sentencepiece BPE over the (de-duplicated) units
    batch_seconds: float = 60.0  # padded audio per upstream call (as `speechssl features`)

    def __post_init__(self) -> None:
        if self.layer < 0:
            raise ValueError(f"--layer must be >= 0, found {self.layer}")
        if self.bpe_vocab is not None and self.bpe_vocab < 2:
            raise ValueError(f"--bpe-vocab must be >= 2, found {self.bpe_vocab}")
        if not self.batch_seconds > 0:
            raise ValueError(f"--batch-seconds must be > 0, found {self.batch_seconds}")


_FEATURE_RE = re.compile(r"^upstream:.*@([^@:]+):layer(\d+)$")


def fit_mismatch(kmeans_feature: str | None, extractor_name: str) -> str | None:
    """Why the k-means model was fit on other features than `extractor_name` (another layer, other
    weights, MFCC), or None when they match. Names are `upstream:<src>@<weights>:layer<L>`."""
    if not kmeans_feature:
        return None  # an imported model (km.bin) does not say what it was fit on
    ours, theirs = _FEATURE_RE.match(extractor_name), _FEATURE_RE.match(kmeans_feature)
    if theirs is None or ours is None:
        return f"the k-means model was fit on '{kmeans_feature}' features, not on an upstream layer"
    if ours.group(2) != theirs.group(2):
        return f"the k-means model was fit on layer {theirs.group(2)} ({kmeans_feature}), not {ours.group(2)}"
    if ours.group(1) != theirs.group(1):
        return (
            f"the k-means model was fit on other weights ({kmeans_feature}) than {extractor_name} "
            "(a different checkpoint, or the same one copied or rewritten since)"
        )
    return None


def _unit_batches(
    data_dir: Path, extractor, centroids: torch.Tensor, batch_seconds: float
) -> Iterator[tuple[str, int, list[int]]]:
    """(utt, samples, one unit per frame) for every utterance, C-sorted; batched as `dump_features`
    batches, so the features, and hence the units, are those of `features` + `kmeans label`."""
    from speechssl.data.audio import load_audio
    from speechssl.data.datadir import DataDir

    utterances = DataDir.load(data_dir).utterances()
    budget = int(batch_seconds * extractor.sample_rate)
    pending: list[tuple[str, torch.Tensor]] = []
    longest = 0
    done, every = 0, max(1, len(utterances) // 10)

    def flush() -> Iterator[tuple[str, int, list[int]]]:
        nonlocal done
        feats = extractor.extract([w for _, w in pending])
        for (utt, wav), f in zip(pending, feats, strict=True):
            if f.shape[0] == 0:
                raise ValueError(
                    f"utterance '{utt}': {wav.numel()} samples give no feature frame (too short)"
                )
            if not np.isfinite(f).all():
                raise NonFiniteFeaturesError(
                    f"utterance '{utt}': {extractor.name} gave NaN or infinite features; no tokens written"
                )
            units = nearest_centroid(torch.from_numpy(np.array(f, dtype=np.float32)), centroids)
            yield utt, wav.numel(), units.tolist()
            done += 1
            if done % every == 0 or done == len(utterances):
                logger.info("tokens: %d/%d utterances", done, len(utterances))
        pending.clear()

    for utt in utterances:
        wav = load_audio(
            utt.path, start=utt.start, end=utt.end, sample_rate=extractor.sample_rate, utt_id=utt.utt_id
        )  # (S,)
        if pending and (len(pending) + 1) * max(longest, wav.numel()) > budget:
            yield from flush()
            longest = 0
        pending.append((utt.utt_id, wav))
        longest = max(longest, wav.numel())
    if pending:
        yield from flush()


def train_unit_bpe(sentences: Path, out_dir: Path, vocab_size: int, num_units: int, longest: int) -> UnitBPE:
    """sentencepiece BPE on unit-character sentences (one utterance per line) -> out_dir/spm.model.
    No normalisation, no dummy whitespace prefix, every character kept (coverage 1.0), piece 0 is
    <unk> and there is no <s>/</s>: the pieces are unit n-grams and nothing else. `num_units`: the
    distinct units of the text, which the vocabulary must hold besides <unk>."""
    import sentencepiece as spm

    if vocab_size < num_units + 1:
        raise ValueError(
            f"--bpe-vocab {vocab_size} is smaller than the {num_units} distinct units of the data plus "
            f"<unk> ({num_units + 1}): give at least {num_units + 1}"
        )
    prefix = out_dir / "spm"
    spm.SentencePieceTrainer.train(
        input=str(sentences),
        model_prefix=str(prefix),
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # a tiny corpus has fewer merges than asked: the summary has the real size
        character_coverage=1.0,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        split_by_unicode_script=False,
        max_sentence_length=max(4192, 4 * longest + 16),  # bytes; a unit character is 3 in UTF-8
        input_sentence_size=0,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return UnitBPE(prefix.with_suffix(".model"))


def _write_line(f, utt: str, values: Sequence[int]) -> None:
    f.write(f"{utt} {' '.join(map(str, values))}\n" if values else f"{utt}\n")


def extract_tokens(
    data_dir: str | Path,
    upstream: str | Path,
    kmeans_dir: str | Path,
    out_dir: str | Path,
    config: TokenConfig,
    *,
    device: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Tokens of every utterance of `data_dir` into `out_dir` (see the module doc); returns the
    summary written to out_dir/tokens.json. Inputs and `out_dir` are checked before any compute."""
    from speechssl.features.upstream_features import UpstreamExtractor

    data_dir, kmeans_dir, out_dir = Path(data_dir), Path(kmeans_dir), Path(out_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data dir {data_dir} does not exist")
    model = KMeansModel.load(kmeans_dir)
    if model.num_clusters > MAX_UNITS and config.bpe_vocab is not None:
        raise ValueError(
            f"{kmeans_dir}: BPE takes at most {MAX_UNITS} units, the model has {model.num_clusters}"
        )
    builtin = str(upstream) in BUILTIN_UPSTREAMS
    inputs = (data_dir, kmeans_dir) + (() if builtin else (Path(upstream),))
    check_output(out_dir, COMMAND, overwrite=overwrite, inputs=inputs)
    extractor = UpstreamExtractor(upstream, config.layer, device=device)
    if model.centroids.shape[1] != extractor.feature_dim:
        raise ValueError(
            f"{kmeans_dir}: the k-means centroids have {model.centroids.shape[1]} dims but layer "
            f"{config.layer} of {upstream} has {extractor.feature_dim}"
        )
    mismatch = fit_mismatch(model.params.get("feature"), extractor.name)
    if mismatch:
        logger.warning("tokens: %s; the units may mean little for these features", mismatch)
    K = model.num_clusters
    centroids = torch.from_numpy(model.centroids).to(extractor.device)
    frames = tokens = samples = utts = 0
    used = np.zeros(K, dtype=bool)
    with output_directory(out_dir, COMMAND, overwrite=overwrite) as tmp:
        first = tmp / (".units" if config.bpe_vocab is not None else TOKENS)  # BPE: units first
        longest = 0
        with (
            open(first, "w", encoding="utf-8") as f_tok,
            open(tmp / DURATIONS if config.dedup else os.devnull, "w", encoding="utf-8") as f_dur,
            open(tmp / ".sentences" if config.bpe_vocab else os.devnull, "w", encoding="utf-8") as f_txt,
        ):
            for utt, n, units in _unit_batches(data_dir, extractor, centroids, config.batch_seconds):
                utts, samples, frames = utts + 1, samples + n, frames + len(units)
                used[units] = True
                values, lengths = dedup(units) if config.dedup else (units, [])
                _write_line(f_tok, utt, values)
                if config.dedup:
                    _write_line(f_dur, utt, lengths)
                if config.bpe_vocab is not None:
                    f_txt.write(units_to_text(values) + "\n")
                    longest = max(longest, len(values))
                else:
                    tokens += len(values)
        if utts == 0:
            raise ValueError(f"{data_dir} has no utterances")
        vocab = K
        if config.bpe_vocab is not None:
            bpe = train_unit_bpe(tmp / ".sentences", tmp, config.bpe_vocab, int(used.sum()), longest)
            vocab = bpe.vocab_size
            with open(first, encoding="utf-8") as f_units, open(tmp / TOKENS, "w", encoding="utf-8") as f_tok:
                for line in f_units:
                    utt, _, rest = line.rstrip("\n").partition(" ")
                    units = parse_unit_ids(rest)
                    ids = bpe.encode(units)
                    if bpe.decode(ids) != units:  # every unit of the training text is a piece
                        raise AssertionError(f"utterance '{utt}': BPE does not decode back to its units")
                    _write_line(f_tok, utt, ids)
                    tokens += len(ids)
            first.unlink()
            (tmp / ".sentences").unlink()
        shutil.copyfile(kmeans_dir / "centroids.npy", tmp / CENTROIDS)
        atomic_write_json(tmp / PARAMS, model.params)
        seconds = samples / extractor.sample_rate
        summary = {
            "upstream": str(upstream) if builtin else str(Path(upstream).resolve()),
            "layer": config.layer,
            "kmeans": str(kmeans_dir.resolve()),
            "kmeans_feature": model.params.get("feature"),
            "features": extractor.name,
            "kmeans_fit_note": mismatch,
            "num_clusters": K,
            "dedup": config.dedup,
            "bpe_vocab": config.bpe_vocab,
            "vocab_size": vocab,
            "data": str(data_dir.resolve()),
            "num_utterances": utts,
            "seconds": seconds,
            "frame_rate": extractor.frame_rate,
            "num_frames": frames,
            "units_used": int(used.sum()),
            "num_tokens": tokens,
            "tokens_per_second": tokens / seconds,
            "bitrate_bps": bitrate([(tokens, vocab)], seconds),
            "frame_bitrate_bps": bitrate([(frames, K)], seconds),
            "bitrate_definition": BITRATE_DEFINITION,
        }
        atomic_write_json(tmp / SUMMARY, summary)
    logger.info(
        "tokens: %d utterances, %.1f s, %d frames -> %d tokens (vocab %d): %.1f tokens/s, %.1f bit/s; "
        "wrote %s",
        utts, seconds, frames, tokens, vocab, summary["tokens_per_second"], summary["bitrate_bps"], out_dir,
    )  # fmt: skip
    return summary


def decode_tokens(token_dir: str | Path) -> dict[str, list[int]]:
    """The inverse of the extract: one unit per frame for every utterance of a tokens dir (BPE pieces
    decoded, de-duplicated units expanded with their run lengths); equal to `kmeans label`'s labels."""
    token_dir = Path(token_dir)
    summary = json.loads((token_dir / SUMMARY).read_text(encoding="utf-8"))
    tokens = read_labels(token_dir / TOKENS)  # `utt id id ...`, as a labels file
    if summary["bpe_vocab"] is not None:
        bpe = UnitBPE(token_dir / SPM_MODEL)
        tokens = {utt: bpe.decode(ids) for utt, ids in tokens.items()}
    if summary["dedup"]:
        durations = read_labels(token_dir / DURATIONS)
        tokens = {utt: expand(values, durations[utt]) for utt, values in tokens.items()}
    return tokens


__all__ = ["COMMAND", "TokenConfig", "bitrate", "decode_tokens", "expand", "extract_tokens"]
