"""SD pieces: RTTM round trip and errors, activity targets, the PIT loss (equal to s3prl's), decoding."""

import numpy as np
import pytest
import torch

from speechssl.data.rttm import RTTMError, Turn, format_rttm, read_rttm
from speechssl.downstream.diarization import activity_targets, decode_turns, pit_bce_loss
from speechssl.downstream.metrics import diarization_counts


def test_rttm_round_trip_and_one_line_errors(tmp_path):
    turns = {"reco2": [Turn("s1", 0.5, 1.25)], "reco1": [Turn("b", 2.0, 3.0), Turn("a", 0.0, 1.5)]}
    path = tmp_path / "ref.rttm"
    path.write_text(format_rttm(turns) + ";; a comment line\n")
    assert path.read_text().splitlines()[0] == "SPEAKER reco1 1 0.000 1.500 <NA> <NA> a <NA> <NA>"
    back = read_rttm(path)
    assert back["reco1"] == [Turn("a", 0.0, 1.5), Turn("b", 2.0, 3.0)] and back["reco2"] == turns["reco2"]
    path.write_text("SPEAKER r 1 0.0 1.0 <NA> <NA> a\nSPEAKER r 1 x 1.0 <NA> <NA> a\n")
    with pytest.raises(RTTMError, match=r"ref.rttm:2: start and duration"):
        read_rttm(path)
    path.write_text("SPEAKER r 1 0.0 0.0 <NA> <NA> a\n")
    with pytest.raises(RTTMError, match=r"ref.rttm:1:"):
        read_rttm(path)


def test_activity_targets_use_frame_centres():
    targets = activity_targets([Turn("a", 0.0, 0.05), Turn("b", 0.03, 0.1)], ["a", "b"], 6, 0.02)
    # centres 0.01 .. 0.11: a covers 0.01, 0.03; b covers 0.03 .. 0.09
    assert targets[:, 0].tolist() == [1, 1, 0, 0, 0, 0]
    assert targets[:, 1].tolist() == [0, 1, 1, 1, 1, 0]
    with pytest.raises(ValueError, match="speaker c"):
        activity_targets([Turn("c", 0, 1)], ["a", "b"], 3, 0.02)


def test_pit_loss_is_permutation_invariant_and_equals_s3prl():
    torch.manual_seed(0)
    logits = torch.randn(3, 17, 3)
    targets = (torch.rand(3, 17, 3) > 0.5).float()
    lengths = torch.tensor([17, 11, 5])
    loss, perms = pit_bce_loss(logits, targets, lengths)
    swapped, _ = pit_bce_loss(logits, targets[..., [2, 0, 1]], lengths)
    assert torch.allclose(loss, swapped)
    # the chosen permutation is the one with the least loss: applying it and asking again picks identity
    aligned = torch.stack([targets[b][:, list(p)] for b, p in enumerate(perms)])
    assert pit_bce_loss(logits, aligned, lengths)[1] == [(0, 1, 2)] * 3
    utils = pytest.importorskip("s3prl.downstream.diarization.utils")
    reference, _, _ = utils.pit_loss(logits, targets, lengths)
    assert torch.allclose(loss, reference, atol=1e-6)


def test_decode_turns_threshold_median_and_der():
    probs = np.zeros((20, 2))
    probs[2:9, 0] = 0.9
    probs[5, 0] = 0.1  # a one-frame dropout the median filter (3) fills
    probs[10:18, 1] = 0.8
    turns = decode_turns(probs, ["x", "y"], 0.1, median=3)
    assert turns == [
        Turn("x", pytest.approx(0.2), pytest.approx(0.9)),
        Turn("y", pytest.approx(1.0), pytest.approx(1.8)),
    ]
    reference = [Turn("A", 0.2, 0.9), Turn("B", 1.0, 1.8)]
    assert diarization_counts(reference, turns, collar=0.0).der == pytest.approx(0.0, abs=1e-9)
