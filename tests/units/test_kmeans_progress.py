"""k-means fit progress: a log line at the first init / step of every backend and of the streamed
fit, then at most every PROGRESS_SECONDS; the reporting leaves the fit unchanged."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from speechssl.features.dump import FeatureReader
from speechssl.units import kmeans as km
from speechssl.units.kmeans import fit_kmeans
from tests.units.test_kmeans_backends import FAST, blobs_dump, needs_faiss


def _fit(tmp_path, caplog, dump=None, **options):
    feats, _ = blobs_dump(tmp_path, **(dump or {}))
    with caplog.at_level(logging.INFO, logger="speechssl.units.kmeans"):
        model = fit_kmeans(FeatureReader(feats), 6, **{**FAST, **options})
    return model, [r.getMessage() for r in caplog.records if r.name == "speechssl.units.kmeans"]


def test_sklearn_fit_logs_its_first_init_and_step(tmp_path, caplog):
    _, lines = _fit(tmp_path, caplog)
    assert any(line.startswith("k-means: reading ") for line in lines)
    assert any(line.startswith("k-means: init 1/3 (k-means++)") for line in lines)
    assert any(line.startswith("k-means: mini-batch step 1 of at most ") for line in lines)


def test_streamed_fit_logs_its_first_batch(tmp_path, caplog):
    dump = {"num_utts": 400, "dim": 16}
    cap_gb = 0.6 * 4 * FeatureReader(blobs_dump(tmp_path / "probe", **dump)[0]).num_frames * 16 / 2**30
    _, lines = _fit(tmp_path, caplog, dump, max_memory_gb=cap_gb)  # less than the frames: streamed
    assert any(line.startswith("k-means: streamed fit: pass 1/2, 0/") for line in lines), lines
    assert any(line.startswith("k-means: inertia: 0 frames done") for line in lines)


@needs_faiss
def test_faiss_fit_logs_its_inits_and_the_lloyd_iterations(tmp_path, caplog):
    _, lines = _fit(tmp_path, caplog, backend="faiss")
    assert any(line.startswith("k-means: init candidate 1/3") for line in lines)
    assert any(line.startswith("k-means: faiss: 30 Lloyd iterations on ") for line in lines)


def test_every_event_logs_when_due_and_the_fit_is_unchanged(tmp_path, caplog, monkeypatch):
    quiet, _ = _fit(tmp_path / "a", caplog)
    monkeypatch.setattr(km, "PROGRESS_SECONDS", 0.0)
    caplog.clear()
    chatty, lines = _fit(tmp_path / "b", caplog)
    assert sum(line.startswith("k-means: init ") for line in lines) == 3
    assert sum(line.startswith("k-means: mini-batch step ") for line in lines) > 1
    np.testing.assert_array_equal(quiet.centroids, chatty.centroids)


def test_watchdog_repeats_a_silent_stage(caplog):
    """A stage that reports nothing (faiss' C++ loop) still gets a line from the watchdog thread."""
    import threading

    progress = km.FitProgress(every=0.05)
    seen = threading.Event()

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "silent stage" in record.getMessage():
                seen.set()

    handler = Handler()
    logging.getLogger("speechssl.units.kmeans").addHandler(handler)
    try:
        with caplog.at_level(logging.INFO, logger="speechssl.units.kmeans"), progress:
            progress.report("silent stage", first=False)  # not due yet: no line
            assert seen.wait(30), "the watchdog never logged"
    finally:
        logging.getLogger("speechssl.units.kmeans").removeHandler(handler)


@pytest.mark.parametrize("first", [True, False])
def test_first_event_logs_at_once(caplog, first):
    progress = km.FitProgress(every=3600)
    with caplog.at_level(logging.INFO, logger="speechssl.units.kmeans"):
        progress.report("a stage", first=first)
    assert ("k-means: a stage" in caplog.text) == first
