"""The shared CTC loss: per-utterance average, impossible alignments count 0, not inf."""

import torch

from speechssl.objectives.ctc import ctc_loss


def test_ctc_loss_averages_over_utterances_and_zeroes_impossible_alignments():
    torch.manual_seed(0)
    log_probs = torch.randn(1, 6, 5).log_softmax(-1)  # (B, T, V)
    targets, lengths, target_lens = torch.tensor([[1, 2, 3]]), torch.tensor([6]), torch.tensor([3])
    one = ctc_loss(log_probs, lengths, targets, target_lens)
    two = ctc_loss(log_probs.repeat(2, 1, 1), lengths.repeat(2), targets.repeat(2, 1), target_lens.repeat(2))
    torch.testing.assert_close(one, two)  # sentence average, not a sum over the batch
    expected = torch.nn.functional.ctc_loss(log_probs.transpose(0, 1), targets, lengths, target_lens)
    torch.testing.assert_close(one, expected * 3)  # torch's "mean" divides by the target length
    # 2 frames cannot carry 3 labels: that utterance adds 0, the other its loss; padding -100 is fine
    padded = torch.tensor([[1, 2, 3], [1, 2, -100]])
    mixed = ctc_loss(log_probs.repeat(2, 1, 1), torch.tensor([2, 6]), padded, torch.tensor([3, 2]))
    assert torch.isfinite(mixed)
    alone = ctc_loss(log_probs, torch.tensor([6]), padded[1:].clamp(min=0), torch.tensor([2]))
    torch.testing.assert_close(mixed, alone / 2)
