"""Teacher vs compressed models side by side: parameters, MACs per audio-second, CPU time.

MACs are counted by running the model once under torch's FlopCounterMode (2 FLOPs per
multiply-add), so they are exact for any architecture, pruned layers included. Time is
the median of interleaved repeats (A, B, C, A, B, C, ...) on the same input after a
warm-up, so every model sees the same machine state.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula

from speechssl.data.audio import SAMPLE_RATE
from speechssl.interop.upstream import UpstreamModel, load_upstream
from speechssl.io import atomic_write_json, atomic_write_text
from speechssl.outputs import check_output, record_output


@dataclass(frozen=True)
class ModelProfile:
    name: str
    source: str
    params: int
    macs_per_audio_second: float
    seconds_per_audio_second: float  # real-time factor on this machine (lower is faster)


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """QK^T and the weighted sum of values: 2 * 2 B H T S d FLOPs."""
    B, H, T, d = query_shape
    S, dv = key_shape[2], value_shape[3]
    return 2 * B * H * T * S * (d + dv)


def _register_cpu_attention() -> None:
    """torch counts the CUDA attention kernels but not SDPA's CPU one: add its formula once."""
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if op not in flop_registry:
        register_flop_formula(op, get_raw=False)(_cpu_attention_flops)


def count_macs(up: UpstreamModel, seconds: float) -> float:
    """Multiply-adds of one forward over `seconds` of audio (batch 1)."""
    _register_cpu_attention()
    wav = torch.zeros(1, round(seconds * SAMPLE_RATE))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        up(wav, torch.tensor([wav.shape[1]]))
    return counter.get_total_flops() / 2


def compare_upstreams(
    sources: Mapping[str, str | Path], *, seconds: float = 10.0, repeats: int = 5, threads: int | None = None
) -> list[ModelProfile]:
    """Profile each named upstream on one utterance of `seconds` of noise."""
    if threads:
        torch.set_num_threads(threads)
    ups = {name: load_upstream(src).eval() for name, src in sources.items()}
    wav = 0.1 * torch.randn(1, round(seconds * SAMPLE_RATE), generator=torch.Generator().manual_seed(0))
    lens = torch.tensor([wav.shape[1]])
    times: dict[str, list[float]] = {name: [] for name in ups}
    with torch.no_grad():
        for up in ups.values():  # warm-up
            up(wav, lens)
        for _ in range(repeats):
            for name, up in ups.items():
                start = time.perf_counter()
                up(wav, lens)
                times[name].append(time.perf_counter() - start)
    return [
        ModelProfile(
            name=name, source=str(sources[name]), params=sum(p.numel() for p in up.parameters()),
            macs_per_audio_second=count_macs(up, seconds) / seconds,
            seconds_per_audio_second=statistics.median(times[name]) / seconds,
        )
        for name, up in ups.items()
    ]  # fmt: skip


def format_comparison(profiles: list[ModelProfile]) -> str:
    """Markdown table; ratios are against the first model (the teacher)."""
    base = profiles[0]
    lines = [
        "| model | parameters | vs first | GMACs per audio-s | CPU s per audio-s | speedup |",
        "|---|---|---|---|---|---|",
    ]
    for p in profiles:
        lines.append(
            f"| {p.name} | {p.params / 1e6:.2f}M | {p.params / base.params:.2f} | "
            f"{p.macs_per_audio_second / 1e9:.3f} | {p.seconds_per_audio_second:.4f} | "
            f"{base.seconds_per_audio_second / p.seconds_per_audio_second:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def check_comparison_output(
    out: str | Path, *, overwrite: bool = False, sources: Iterable[str | Path] = ()
) -> None:
    """Refuse OUT or its .json twin when they hold what `compare` did not write, or lie in one of
    the compared models (before any timing)."""
    for path in (Path(out), Path(out).with_suffix(".json")):
        check_output(path, "compare", overwrite=overwrite, is_file=True, inputs=tuple(sources))


def write_comparison(profiles: list[ModelProfile], out: str | Path, *, overwrite: bool = False) -> str:
    """OUT (markdown) and OUT with .json beside it."""
    out = Path(out)
    check_comparison_output(out, overwrite=overwrite, sources=[p.source for p in profiles])
    text = format_comparison(profiles)
    atomic_write_text(out, text)
    atomic_write_json(out.with_suffix(".json"), [asdict(p) for p in profiles])
    for path in (out, out.with_suffix(".json")):
        record_output(path, "compare")
    return text
