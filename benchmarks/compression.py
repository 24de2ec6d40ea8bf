"""Row group 6: teacher vs distilled vs pruned inference, once speechssl.compression exists."""

from __future__ import annotations

import importlib.util

from benchmarks.harness import Row, Settings, make_row

GROUP = "compression"


def available() -> bool:
    try:
        return importlib.util.find_spec("speechssl.compression.distill") is not None
    except ModuleNotFoundError:
        return False


def run(settings: Settings) -> list[Row]:
    if not available():
        return [make_row(GROUP, "teacher vs distilled vs pruned inference", None, None, "audio-s/s",
                         note="not available: speechssl.compression does not exist yet")]  # fmt: skip
    return [make_row(GROUP, "teacher vs distilled vs pruned inference", None, None, "audio-s/s",
                     note="speechssl.compression exists; its benchmark rows are not written yet")]  # fmt: skip
