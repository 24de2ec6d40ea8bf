"""Row group 4: the HuBERT head on N masked frames, forward + backward of the loss.

- our cosine head (one normalised (N, C) matrix product + CE over classes) vs torchaudio's
  LogitGenerator logits (cosine against a (N, 1 + C, final_dim) gathered tensor, fairseq's way);
- our linear head + CE (k2SSL / Fast-HuBERT) vs our cosine head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.harness import Case, Row, Settings, Spec, Step, run_cases
from speechssl.objectives.hubert import HubertObjectiveConfig, build_label_head, masked_prediction_loss

GROUP = "hubert head"


def head_step(contender: str, num_frames: int, embed_dim: int, num_classes: int, final_dim: int) -> Step:
    """Forward + backward of the masked-prediction loss on (N, embed_dim) frames."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(num_frames, embed_dim, generator=g, requires_grad=True)
    labels = torch.randint(0, num_classes, (num_frames,), generator=g)
    torch.manual_seed(0)
    if contender in ("ours", "cosine"):
        head = build_label_head(
            embed_dim, HubertObjectiveConfig(num_classes=[num_classes], final_dim=final_dim)
        )
    elif contender in ("linear",):
        head = build_label_head(embed_dim, HubertObjectiveConfig(num_classes=[num_classes], head="linear"))
    elif contender == "torchaudio":
        from torchaudio.models.wav2vec2.components import LogitGenerator, _compute_logits

        ta = LogitGenerator(embed_dim, num_classes, final_dim, skip_masked=False, skip_nomask=True)

        def ta_step() -> None:
            logits = _compute_logits(ta.final_proj(x), labels, ta.label_embeddings)  # (N, 1 + C)
            F.cross_entropy(logits, torch.zeros(num_frames, dtype=torch.long), reduction="sum").backward()

        return ta_step
    else:
        raise ValueError(f"unknown head contender '{contender}'; valid: ours, cosine, linear, torchaudio")

    def step() -> None:
        masked_prediction_loss(head(x)[0], labels)[0].backward()

    return step


def run(settings: Settings) -> list[Row]:
    # full: about the masked frames of one GPU's batch in fairseq's HuBERT Base (87.5 s -> 4,375
    # frames, ~half masked); torchaudio's gathered (N, 1 + C, final_dim) tensor then peaks near 7 GB
    n, d, c, f = (
        (64, 32, 20, 16)
        if settings.tiny
        else (500, 768, 500, 256)
        if settings.quick
        else (2000, 768, 500, 256)
    )
    kw = {"num_frames": n, "embed_dim": d, "num_classes": c, "final_dim": f}

    def spec(contender: str) -> Spec:
        return Spec(module=__name__, factory="head_step", kwargs={"contender": contender, **kw})

    cases = [
        Case(name=f"cosine head, {n} frames, {c} classes", work=n, unit="frames/s",
             contenders={"ours": spec("ours"), "torchaudio": spec("torchaudio")}),
        Case(name=f"linear+CE vs cosine, {n} frames, {c} classes", work=n, unit="frames/s",
             contenders={"ours": spec("linear"), "our cosine head": spec("cosine")}),
    ]  # fmt: skip
    return run_cases(GROUP, cases, settings, note="forward + backward")
