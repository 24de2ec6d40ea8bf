"""DownstreamModel: upstream -> featurizer -> task head, with the trainer's
`forward(batch) -> (loss, metrics)` interface.

The upstream is frozen unless some of its parameters require grad (full
fine-tuning, or a tuning method that added trainable weights). A frozen
upstream runs under torch.no_grad in eval mode (no dropout), and its weights
are left out of `state_dict()`: checkpoints hold the featurizer, the head and
the tuned upstream weights only, apart from the upstream they came from.

A batch of cached features (speechssl.downstream.feature_cache.FeatureBatch: a frozen
upstream's hidden states dumped once) skips the upstream and goes to the featurizer.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.module import _IncompatibleKeys

from speechssl.data.dataset import Batch
from speechssl.downstream.feature_cache import FeatureBatch
from speechssl.downstream.tasks import check_batch_frames, min_input_samples, upstream_label
from speechssl.models.upstream_api import UpstreamModel

UPSTREAM = "upstream."


class DownstreamModel(nn.Module):
    def __init__(self, upstream: UpstreamModel, featurizer: nn.Module, head: nn.Module, task: Any) -> None:
        super().__init__()
        self.upstream, self.featurizer, self.head = upstream, featurizer, head
        self.task = task  # plain object: no parameters
        self._min_samples, self._label = min_input_samples(upstream), upstream_label(upstream)

    # --- which upstream weights train -------------------------------------------------
    def upstream_trainable(self) -> bool:
        return any(p.requires_grad for p in self.upstream.parameters())

    def _frozen_upstream_keys(self) -> set[str]:
        params = dict(self.upstream.named_parameters())
        if params and all(p.requires_grad for p in params.values()):
            return set()  # full fine-tuning: the whole upstream is part of the result
        keys = {UPSTREAM + k for k in self.upstream.state_dict()}
        return keys - {UPSTREAM + n for n, p in params.items() if p.requires_grad}

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:  # type: ignore[override]
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        for key in self._frozen_upstream_keys():
            state.pop(prefix + key, None)
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        frozen = self._frozen_upstream_keys()
        missing = [k for k in result.missing_keys if k not in frozen]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"downstream checkpoint does not fit the model: missing {missing[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}"
            )
        return _IncompatibleKeys(missing, result.unexpected_keys)

    def train(self, mode: bool = True) -> DownstreamModel:
        super().train(mode)
        if not self.upstream_trainable():
            self.upstream.eval()  # frozen features: no dropout / layerdrop, as at test time
        return self

    def num_parameters(self) -> tuple[int, int]:
        """(trainable, total) parameter counts, upstream included in total."""
        params = list(self.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    # --- forward ------------------------------------------------------------------------
    def features(self, batch: Batch | FeatureBatch) -> tuple[Tensor, Tensor]:
        """Upstream + featurizer: ((B, T, D), valid frames (B,)); cached hidden states go
        straight to the featurizer."""
        if isinstance(batch, FeatureBatch):
            if self.upstream_trainable():
                raise RuntimeError("cached features of an upstream that trains: the cache is for frozen ones")
            return self.featurizer(batch.hidden_states(), batch.lengths)
        self.check_frames(batch)
        grad = contextlib.nullcontext() if self.upstream_trainable() else torch.no_grad()
        with grad:
            out = self.upstream(batch.wavs, batch.wav_lens)
        return self.featurizer(out.hidden_states, out.lengths)

    def check_frames(self, batch: Batch) -> None:
        """Each utterance as read gives the upstream a frame (a stale utt2dur hid one that does not)."""
        lengths = batch.host_wav_lens if batch.host_wav_lens is not None else batch.wav_lens
        check_batch_frames(batch.utt_ids, lengths, self._min_samples, self._label)

    def forward(self, batch: Batch | FeatureBatch) -> tuple[Tensor, dict[str, Tensor]]:
        x, lengths = self.features(batch)
        return self.task.loss(self.head, x, lengths, batch)

    def layer_weights(self) -> list[float] | None:
        fn = getattr(self.featurizer, "layer_weights", None)
        return fn().tolist() if fn is not None else None
