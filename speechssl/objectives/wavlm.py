"""WavLM objective: HuBERT's masked prediction on a WavLM encoder, on utterance-mixed input.

The YAML section `wavlm:` holds HuBERT's fields (num_classes, head, final_dim, ...) plus
`mixing:` (speechssl.objectives.mixing.MixingConfig). Labels are the primary utterance's units,
as in HuBERT: the model learns to predict the clean utterance's targets from the mixture.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from speechssl.objectives.hubert import HubertObjectiveConfig
from speechssl.objectives.mixing import MixingConfig


@dataclass(frozen=True, kw_only=True)
class WavLMObjectiveConfig(HubertObjectiveConfig):
    """HuBERT's heads and weights plus utterance mixing."""

    mixing: MixingConfig = field(default_factory=MixingConfig)
