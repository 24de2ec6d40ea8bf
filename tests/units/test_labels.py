"""Unit label parsing and range checks (speechssl.units.labels)."""

from __future__ import annotations

import pytest
import torch

from speechssl.units.labels import check_unit_ids, parse_unit_ids, parse_units, read_labels


def test_parse_units_and_its_error():
    assert torch.equal(parse_units("12 7 7 3"), torch.tensor([12, 7, 7, 3]))
    assert parse_unit_ids("") == []
    with pytest.raises(ValueError, match="expected integer units, found 'x'"):
        parse_unit_ids("1 x 3")


def test_read_labels_uses_the_same_parser(tmp_path):
    path = tmp_path / "labels"
    path.write_text("a 1 2 3\nb 4\n")
    assert read_labels(path) == {"a": [1, 2, 3], "b": [4]}
    path.write_text("a 1 2 3\nb 4 five\n")
    with pytest.raises(ValueError, match=r"labels:2: utterance 'b': units must be integers, found '4 five'"):
        read_labels(path)


def test_check_unit_ids_names_the_file_and_utterances():
    check_unit_ids({"a": [0, 4], "b": []}, 5, where="units/labels")
    with pytest.raises(ValueError, match=r"units/labels: unit ids outside 0\.\.4 in b, c"):
        check_unit_ids({"a": [0, 4], "b": [5], "c": [-1]}, 5, where="units/labels")
