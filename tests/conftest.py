"""Shared fixtures: tiny valid Kaldi data dirs (helpers live in speechssl.testing.datadirs) and a
size-limited file system for full-disk tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from speechssl.data.datadir import DataDir
from speechssl.testing.datadirs import make_data_dir


@pytest.fixture
def data_dir(tmp_path) -> DataDir:
    """2 speakers x 2 utterances, one wav per utterance, with text and utt2dur."""
    return make_data_dir(tmp_path)


@pytest.fixture
def segmented_data_dir(tmp_path) -> DataDir:
    """2 speakers x 2 utterances cut by segments from one recording per speaker."""
    return make_data_dir(tmp_path, segments=True)


@pytest.fixture
def tiny_fs(tmp_path):
    """`tiny_fs(size_kb)` mounts a tmpfs of that size and returns it: a disk that really fills up
    (root only; the test is skipped where mounting is not allowed)."""
    mount = tmp_path / "fs"
    mount.mkdir()

    def mount_with(size_kb: int) -> Path:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mount)], capture_output=True
        )
        if done.returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        return mount

    yield mount_with
    subprocess.run(
        ["umount", "--lazy", str(mount)], capture_output=True
    )  # lazy: an open handle in a traceback
