"""CTC: the loss and best-path decoding shared by the downstream PR/ASR tasks and CTC fine-tuning.

Blank is id 0. The loss is fairseq's `sentence_avg`: summed over frames, averaged over
utterances, with impossible alignments (fewer frames than labels) counted as 0
(`zero_infinity`) instead of poisoning the batch with inf.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def ctc_loss(log_probs: Tensor, lengths: Tensor, targets: Tensor, target_lens: Tensor) -> Tensor:
    """log_probs: (B, T, V) log-softmax outputs; lengths: (B,) valid frames; targets: (B, L)
    padded with any value; target_lens: (B,)."""
    return F.ctc_loss(log_probs.transpose(0, 1), targets.clamp(min=0), lengths, target_lens, blank=0,
                      reduction="sum", zero_infinity=True) / max(len(lengths), 1)  # fmt: skip


def ctc_greedy(scores: Tensor, lengths: Tensor, blank: int = 0) -> list[list[int]]:
    """Best path of (B, T, V) logits or log-probabilities: argmax per frame, repeats merged,
    blanks dropped, over each utterance's valid frames."""
    best = scores.argmax(dim=-1).cpu()  # (B, T)
    out = []
    for b, n in enumerate(lengths.tolist()):
        path = torch.unique_consecutive(best[b, :n]).tolist()
        out.append([t for t in path if t != blank])
    return out
