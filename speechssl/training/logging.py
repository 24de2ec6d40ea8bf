"""Rank-0 reporting: TensorBoard scalars, a console progress line with ETA, a final summary.

Tags: `train/<loss or metric>`, `train/lr`, `train/grad_norm`,
`train/audio_seconds_per_second`, `train/padding_efficiency`,
`train/skipped_steps`, `memory/<...>`, `valid/<loss or metric>`.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from pathlib import Path

import torch

log = logging.getLogger("speechssl.training")

# A console line at least this often while training or validating (besides every `log_every` updates),
# so a slow step or a large `log_every` never looks like a hang; it reads only the main rank's state.
HEARTBEAT_SECONDS = 10.0


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


def memory_stats(device: torch.device) -> dict[str, float]:
    """Peak accelerator memory (CUDA) or peak resident memory of this process (CPU), in GiB."""
    if device.type == "cuda":
        return {
            "memory/max_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "memory/max_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
        }
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":  # bytes there
        rss_kib /= 1024
    return {"memory/max_rss_gib": rss_kib / 2**20}


class TrainLogger:
    """Writes only on the main rank; on other ranks every call is a no-op."""

    def __init__(
        self,
        out_dir: str | Path,
        *,
        enabled: bool,
        max_steps: int,
        start_step: int,
        heartbeat_seconds: float | None = None,  # None: HEARTBEAT_SECONDS
    ) -> None:
        self.enabled = enabled
        self.max_steps = max_steps
        self.start_step = start_step
        self.start_time = time.monotonic()
        self.heartbeat_seconds = HEARTBEAT_SECONDS if heartbeat_seconds is None else heartbeat_seconds
        self.last_line = self.start_time  # when the last console line was written
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops the points a killed run logged after the checkpoint this one resumes
            # from, or all of them when this one starts from scratch (killed before a checkpoint)
            self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=start_step + 1)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def due(self, step: int) -> bool:
        """Whether a console line is due between two `log_every` lines: after the session's first
        update (training has started), then `heartbeat_seconds` after the last line."""
        if not self.enabled:
            return False
        return step == self.start_step + 1 or time.monotonic() - self.last_line >= self.heartbeat_seconds

    def heartbeat(self, message: str, *args: object) -> None:
        """A console line outside the update loop (validation), at most every `heartbeat_seconds`."""
        if self.enabled and time.monotonic() - self.last_line >= self.heartbeat_seconds:
            log.info(message, *args)
            self.last_line = time.monotonic()

    def progress(self, step: int, epoch: int, values: dict[str, float]) -> None:
        """One console line: step, epoch, loss, lr, grad norm, throughput, ETA."""
        if not self.enabled:
            return
        done = step - self.start_step
        elapsed = time.monotonic() - self.start_time
        eta = elapsed / done * (self.max_steps - step) if done > 0 else float("nan")
        parts = [f"step {step}/{self.max_steps} ({100 * step / self.max_steps:.0f}%)", f"epoch {epoch}"]
        for key, fmt in (
            ("train/loss", "loss {:.4g}"),
            ("train/lr", "lr {:.3g}"),
            ("train/grad_norm", "gnorm {:.3g}"),
            ("train/audio_seconds_per_second", "{:.0f} audio-s/s"),
            ("train/skipped_steps", "skipped {:.0f}"),
        ):
            if key in values:
                parts.append(fmt.format(values[key]))
        parts.append(f"ETA {format_duration(eta) if eta == eta else '?'}")
        log.info(" | ".join(parts))
        self.last_line = time.monotonic()

    def valid(self, step: int, values: dict[str, float]) -> None:
        self.scalars(step, values)
        if self.enabled:
            log.info(
                "valid at step %d: %s",
                step,
                ", ".join(f"{k.split('/', 1)[1]} {v:.4g}" for k, v in values.items()),
            )
            self.last_line = time.monotonic()

    def summary(self, lines: dict[str, str]) -> None:
        if self.enabled:
            width = max(len(k) for k in lines)
            log.info("training summary:\n%s", "\n".join(f"  {k:<{width}}  {v}" for k, v in lines.items()))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
