"""TensorBoard after a restart: each step once, as TensorBoard loads the dir (a killed session's
points after the restart's starting step are purged, also when the restart starts from scratch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from speechssl.training.logging import TrainLogger


def _session(out: Path, start_step: int, last_step: int) -> None:
    logger = TrainLogger(out, enabled=True, max_steps=8, start_step=start_step)
    for step in range(start_step + 1, last_step + 1):
        logger.scalars(step, {"train/loss": 1.0 / step})
    logger.close()


def _loss_steps(out: Path) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    return [event.step for event in events.Scalars("train/loss")]


@pytest.mark.parametrize("start_step", [0, 4], ids=["from-scratch", "from-checkpoint"])
def test_a_restart_keeps_no_point_of_the_killed_session_after_its_start(tmp_path, start_step):
    _session(tmp_path, 0, 6)  # killed after step 6, before its first checkpoint or after step 4's
    _session(tmp_path, start_step, 8)
    assert _loss_steps(tmp_path) == list(range(1, 9))
