"""Discrete tokens of an upstream layer, and those tokens as an upstream: `load_upstream("tokens:DIR")`.

DIR is the output of `speechssl tokens extract` (speechssl.units.tokens): the k-means units of layer
L of an upstream, optionally de-duplicated (runs of one unit become one token; their lengths are
kept so the frames can be rebuilt) and optionally BPE-compressed with sentencepiece (each unit is
written as one character, U+4E00 + unit, as ESPnet's discrete-unit recipes do, so that a
sentencepiece model trained on those "sentences" merges frequent unit n-grams). This module holds
the pieces both sides need, so that the tokens a model trains on are computed exactly as the
extract computed them:

- `dedup` / `expand` (run lengths), `units_to_text` / `text_to_units` (the unit characters),
  `UnitBPE` (sentencepiece over unit characters, encode and decode),
- `TokenSettings` (DIR/tokens.json) and `TokenUpstream`, which recomputes the tokens of any audio
  with the recorded upstream, layer, centroids, de-duplication and BPE, and returns them one-hot
  as its one hidden state (V = vocabulary size dims, padded frames zero). A downstream head's first
  Linear(V, D) on a one-hot input is exactly a trainable embedding table of the tokens, so
  `speechssl downstream train --task asr --upstream tokens:DIR` is ASR on tokens: token embedding,
  the ASR head's BiLSTM encoder, CTC to characters, scored and reported like any other upstream.

It lives in models because `load_upstream` (interop) builds it and may not import units.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from speechssl.errors import SpeechSSLError
from speechssl.models.upstream_api import UpstreamModel, UpstreamOutput

TOKENS_PREFIX = "tokens:"  # load_upstream("tokens:DIR")
SUMMARY = "tokens.json"  # DIR/tokens.json: settings, counts, bitrate
CENTROIDS = "centroids.npy"  # DIR/centroids.npy: the k-means centroids the tokens were made with
SPM_MODEL = "spm.model"  # DIR/spm.model: the BPE model (--bpe-vocab)
UNIT_CHAR_BASE = 0x4E00  # unit u is written as chr(UNIT_CHAR_BASE + u) for BPE (CJK block)
MAX_UNITS = 0x9FFF - UNIT_CHAR_BASE + 1  # 20992 code points in the block


class TokenDirError(SpeechSSLError, ValueError):
    """A tokens dir that is missing, damaged, or does not fit the upstream it names."""


def dedup(units: Sequence[int]) -> tuple[list[int], list[int]]:
    """[5, 5, 5, 2, 2, 5] -> ([5, 2, 5], [3, 2, 1]): one token per run, and each run's length."""
    values: list[int] = []
    lengths: list[int] = []
    for u in units:
        u = int(u)
        if values and values[-1] == u:
            lengths[-1] += 1
        else:
            values.append(u)
            lengths.append(1)
    return values, lengths


def expand(values: Sequence[int], lengths: Sequence[int]) -> list[int]:
    """The inverse of `dedup`: each value repeated its run length."""
    if len(values) != len(lengths):
        raise ValueError(f"{len(values)} tokens but {len(lengths)} run lengths")
    out: list[int] = []
    for v, n in zip(values, lengths, strict=True):
        if n < 1:
            raise ValueError(f"run length must be >= 1, found {n}")
        out.extend([int(v)] * int(n))
    return out


def units_to_text(units: Sequence[int]) -> str:
    """Units as one character each (U+4E00 + unit): the "sentence" sentencepiece sees."""
    return "".join(chr(UNIT_CHAR_BASE + int(u)) for u in units)


def text_to_units(text: str) -> list[int]:
    """The inverse of `units_to_text`; a character outside the unit block is an error naming it."""
    out = []
    for c in text:
        u = ord(c) - UNIT_CHAR_BASE
        if not 0 <= u < MAX_UNITS:
            raise ValueError(f"'{c}' (U+{ord(c):04X}) is not a unit character (U+4E00 + unit)")
        out.append(u)
    return out


class UnitBPE:
    """A sentencepiece BPE model over unit characters: units <-> piece ids. Units the model never
    saw (absent from the text it was trained on) become its unknown piece (id 0) and do not decode
    back: every unit of the training text does."""

    def __init__(self, model_file: str | Path) -> None:
        import sentencepiece as spm

        self.model_file = Path(model_file)
        if not self.model_file.is_file():
            raise TokenDirError(f"sentencepiece model {self.model_file} does not exist")
        self.sp = spm.SentencePieceProcessor(model_file=str(self.model_file))

    @property
    def vocab_size(self) -> int:
        return int(self.sp.get_piece_size())

    def encode(self, units: Sequence[int]) -> list[int]:
        return list(self.sp.encode(units_to_text(units)))

    def decode(self, ids: Sequence[int]) -> list[int]:
        return text_to_units(self.sp.decode([int(i) for i in ids]))


@dataclass(frozen=True, kw_only=True)
class TokenSettings:
    """What a tokens dir's tokens are made of (DIR/tokens.json)."""

    upstream: str  # a load_upstream source (an absolute path, or a built-in name)
    layer: int  # hidden-state index: 0 = transformer input, L = output of layer L
    num_clusters: int  # K, the k-means units
    dedup: bool = False  # runs of one unit -> one token (run lengths in DIR/durations)
    bpe_vocab: int | None = None  # sentencepiece BPE over the units (DIR/spm.model)

    def __post_init__(self) -> None:
        if self.layer < 0:
            raise ValueError(f"layer must be >= 0, found {self.layer}")
        if not 2 <= self.num_clusters <= MAX_UNITS:
            raise ValueError(f"num_clusters must be in 2..{MAX_UNITS}, found {self.num_clusters}")
        if self.bpe_vocab is not None and self.bpe_vocab < 2:
            raise ValueError(f"bpe_vocab must be >= 2, found {self.bpe_vocab}")

    @classmethod
    def read(cls, token_dir: str | Path) -> TokenSettings:
        """DIR/tokens.json's settings; a missing file or key is a TokenDirError naming it."""
        path = Path(token_dir) / SUMMARY
        if not path.is_file():
            raise TokenDirError(f"{path} does not exist: give the --out of `speechssl tokens extract`")
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                upstream=str(summary["upstream"]),
                layer=int(summary["layer"]),
                num_clusters=int(summary["num_clusters"]),
                dedup=bool(summary["dedup"]),
                bpe_vocab=None if summary["bpe_vocab"] is None else int(summary["bpe_vocab"]),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise TokenDirError(f"{path} is not a tokens summary ({type(err).__name__}: {err})") from None


def nearest_centroid(x: Tensor, centroids: Tensor, block: int = 65536) -> Tensor:
    """x: (N, D), centroids: (K, D) -> (N,) argmin_k ||x - c_k||^2 via ||c||^2 - 2 x.c in float32
    (||x||^2 is the same for every k, so it is left out): `speechssl kmeans label`'s assignment, and
    the token upstream's, so both give the same units."""
    if x.shape[-1] != centroids.shape[-1]:
        raise ValueError(f"features have {x.shape[-1]} dims but the centroids have {centroids.shape[-1]}")
    c = centroids.to(torch.float32)
    c_sq = (c * c).sum(dim=1)  # (K,)
    out = torch.empty(x.shape[0], dtype=torch.int64)
    for a in range(0, x.shape[0], block):
        xb = x[a : a + block].to(c.device, torch.float32)  # (n, D)
        dist = c_sq.unsqueeze(0) - 2.0 * (xb @ c.T)  # (n, K)
        out[a : a + block] = dist.argmin(dim=1).cpu()
    return out


class TokenUpstream(UpstreamModel):
    """Waveforms -> the tokens of a tokens dir, one-hot: hidden_states = [(B, N, V)], N the longest
    token sequence, padded tokens all zero; `lengths` = tokens per utterance.

    The inner upstream runs one utterance at a time, so a token never depends on what else is in
    the batch (group-norm frontends normalise over padding). Its weights stay frozen (a token is an
    argmin: no gradient reaches them); what trains is the head on top."""

    feature_cache_bypass = (
        "tokens are recomputed by the tokens dir's k-means and BPE model, which the cache key does not hash"
    )

    def __init__(
        self, inner: UpstreamModel, settings: TokenSettings, centroids: Tensor, bpe: UnitBPE | None = None
    ) -> None:
        super().__init__()
        K, D = centroids.shape  # clusters, feature dim
        if K != settings.num_clusters:
            raise TokenDirError(f"{K} centroids, but the tokens were made with K = {settings.num_clusters}")
        if D != inner.hidden_dim:
            raise TokenDirError(
                f"the centroids have {D} dims but layer {settings.layer} of {settings.upstream} has "
                f"{inner.hidden_dim}"
            )
        if not 0 <= settings.layer <= inner.num_layers:
            raise TokenDirError(
                f"layer {settings.layer} is not in 0..{inner.num_layers} for {settings.upstream}"
            )
        if (bpe is None) != (settings.bpe_vocab is None):
            raise TokenDirError("a BPE model is needed exactly when the settings name bpe_vocab")
        self.inner = inner.eval().requires_grad_(False)
        self.settings = settings
        self.bpe = bpe
        self.register_buffer("centroids", centroids.to(torch.float32), persistent=False)
        self.vocab_size = bpe.vocab_size if bpe is not None else settings.num_clusters
        # one token per frame only without dedup and BPE: frame-level targets cannot align otherwise
        self.fixed_rate = not settings.dedup and bpe is None

    @property
    def downsample_rate(self) -> int:
        """The inner upstream's (tokens come at most at its frame rate; fewer after dedup or BPE)."""
        return self.inner.downsample_rate

    @property
    def num_layers(self) -> int:
        return 0  # one hidden state: the tokens

    @property
    def hidden_dim(self) -> int:
        return self.vocab_size

    def train(self, mode: bool = True) -> TokenUpstream:
        super().train(mode)
        self.inner.eval()  # no dropout in the upstream the tokens come from, ever
        return self

    @torch.no_grad()
    def tokenize(self, wavs: Tensor, wav_lens: Tensor | None = None) -> list[list[int]]:
        """wavs: (B, S) at 16 kHz; wav_lens: (B,) valid samples -> each utterance's tokens."""
        if wav_lens is None:
            wav_lens = torch.full((wavs.shape[0],), wavs.shape[1], dtype=torch.long, device=wavs.device)
        out = []
        for wav, n in zip(wavs, wav_lens.tolist(), strict=True):
            res = self.inner(wav[None, : int(n)], torch.tensor([int(n)], device=wavs.device))
            feats = res.hidden_states[self.settings.layer][0, : int(res.lengths[0])]  # (T, D)
            units = nearest_centroid(feats, self.centroids).tolist()
            if self.settings.dedup:
                units, _ = dedup(units)
            out.append(self.bpe.encode(units) if self.bpe is not None else units)
        return out

    def forward(self, wavs: Tensor, wav_lens: Tensor | None = None) -> UpstreamOutput:
        tokens = self.tokenize(wavs, wav_lens)
        B, N = len(tokens), max((len(t) for t in tokens), default=0)  # batch, longest token sequence
        ids = torch.zeros(B, max(N, 1), dtype=torch.long, device=wavs.device)  # (B, N)
        lengths = torch.tensor([len(t) for t in tokens], dtype=torch.long, device=wavs.device)  # (B,)
        for i, t in enumerate(tokens):
            ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        valid = torch.arange(ids.shape[1], device=wavs.device)[None, :] < lengths[:, None]  # (B, N)
        one_hot = torch.nn.functional.one_hot(ids, self.vocab_size).to(torch.float32) * valid[..., None]
        return UpstreamOutput(hidden_states=[one_hot], lengths=lengths)  # [(B, N, V)]


def load_token_upstream(spec: str | Path, load_inner: Callable[[str], UpstreamModel]) -> TokenUpstream:
    """`tokens:DIR` (or DIR) -> TokenUpstream; `load_inner` loads the recorded upstream
    (load_upstream: it lives a layer above)."""
    text = str(spec)
    token_dir = Path(text[len(TOKENS_PREFIX) :] if text.startswith(TOKENS_PREFIX) else text)
    if not token_dir.is_dir():
        raise TokenDirError(
            f"tokens dir {token_dir} does not exist (upstream '{text}': give tokens:DIR with DIR the --out "
            "of `speechssl tokens extract`)"
        )
    settings = TokenSettings.read(token_dir)
    path = token_dir / CENTROIDS
    if not path.is_file():
        raise TokenDirError(f"{path} does not exist: {token_dir} is not a complete tokens dir")
    centroids = np.load(path, allow_pickle=False)
    if centroids.ndim != 2 or not np.isfinite(centroids).all():
        raise TokenDirError(
            f"{path}: expected finite (clusters, dim) centroids, found shape {centroids.shape}"
        )
    bpe = UnitBPE(token_dir / SPM_MODEL) if settings.bpe_vocab is not None else None
    inner = load_inner(settings.upstream)
    return TokenUpstream(inner, settings, torch.from_numpy(centroids.astype(np.float32)), bpe).eval()


def token_upstream_name(spec: str | Path, inner_name: Callable[[str], str]) -> str:
    """A readable name for results: `<upstream>_l<L>_k<K>[_dedup][_bpe<N>]` (e.g.
    hubert_iter1_l2_k100_dedup), from DIR/tokens.json; the dir's name when it cannot be read."""
    text = str(spec)
    token_dir = Path(text[len(TOKENS_PREFIX) :] if text.startswith(TOKENS_PREFIX) else text)
    try:
        s = TokenSettings.read(token_dir)
    except (TokenDirError, OSError):
        return token_dir.name
    name = f"{inner_name(s.upstream)}_l{s.layer}_k{s.num_clusters}"
    return name + ("_dedup" if s.dedup else "") + (f"_bpe{s.bpe_vocab}" if s.bpe_vocab else "")
