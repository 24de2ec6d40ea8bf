"""Shared fixtures: tiny valid Kaldi data dirs (helpers live in speechssl.testing.datadirs)."""

from __future__ import annotations

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
