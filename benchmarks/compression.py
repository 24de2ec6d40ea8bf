"""Row group 6: teacher vs distilled vs pruned inference (parameters, counted MACs, CPU time).

The teacher is hubert_base (random weights: speed does not depend on them); the distilled
student is DistilHuBERT's shape (its frontend and 2 layers); the pruned model has the layer
sizes `speechssl prune` left at 75 % sparsity on hubert_base (random gates, fixed at the
target count; see README "Compression"). Measured by speechssl.compression.report, which
`speechssl compare` also uses: interleaved repeats, median.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from benchmarks.harness import Row, Settings, make_row
from speechssl.compression.report import compare_upstreams
from speechssl.models import build_model, get_preset, save_checkpoint

GROUP = "compression"

# hubert_base pruned to 25 % of its parameters (94.37M -> 23.59M) by speechssl prune
PRUNED_CONV_DIM = [167, 168, 167, 142, 152, 142, 512]
PRUNED_HEADS = [4, 5, 2, 1, 1, 0, 6, 0, 0, 5, 0, 0]
PRUNED_FFN = [918, 934, 0, 969, 0, 963, 968, 942, 973, 945, 982, 0]


def _models(root: Path, tiny: bool) -> dict[str, Path]:
    teacher = get_preset("hubert_tiny" if tiny else "hubert_base")
    distilled = replace(teacher, encoder=replace(teacher.encoder, num_layers=1 if tiny else 2))
    conv_dim, heads, ffn = (
        ([32] * 6 + [64], [2, 0], [64, 0]) if tiny else (PRUNED_CONV_DIM, PRUNED_HEADS, PRUNED_FFN)
    )
    pruned = replace(
        teacher,
        frontend=replace(teacher.frontend, conv_dim=conv_dim),
        encoder=replace(teacher.encoder, layer_num_heads=heads, layer_ffn_dims=ffn),
    )
    paths = {}
    for name, config in (("teacher", teacher), ("distilled", distilled), ("pruned", pruned)):
        paths[name] = save_checkpoint(build_model(config), config, root / name)
    return paths


def run(settings: Settings) -> list[Row]:
    seconds = 1.0 if settings.tiny else 2.0 if settings.quick else 10.0
    with tempfile.TemporaryDirectory() as tmp:
        profiles = compare_upstreams(_models(Path(tmp), settings.tiny), seconds=seconds,
                                     repeats=settings.repeats, threads=settings.threads)  # fmt: skip
    teacher, name = profiles[0], "hubert_tiny" if settings.tiny else "hubert_base"
    rows = []
    for p in profiles[1:]:
        note = f"{p.params / 1e6:.2f}M vs {teacher.params / 1e6:.2f}M parameters; 1 x {seconds:g} s, eval"
        rows.append(make_row(GROUP, f"{p.name} vs teacher ({name}): CPU time per audio-second",
                             p.seconds_per_audio_second, teacher.seconds_per_audio_second, "s/audio-s",
                             higher_is_better=False, note=note))  # fmt: skip
        rows.append(make_row(GROUP, f"{p.name} vs teacher ({name}): MACs per audio-second",
                             p.macs_per_audio_second / 1e9, teacher.macs_per_audio_second / 1e9,
                             "GMAC", higher_is_better=False,
                             note="counted with torch's FlopCounterMode"))  # fmt: skip
    return rows
