"""Label/frame-count guard run before training.

Labels are produced at the feature frame rate (e.g. MFCC 100 Hz taken every
2nd frame, or an upstream's 50 Hz output) while the model computes its own
frame count from the audio length. The two should agree exactly; a difference
of one frame (`tolerance=1`, the default) is accepted because conventions for
the last partial frame differ between feature extractors (e.g. Kaldi's
snip_edges=False, resampled audio, labels made by another toolkit), and the
trainer trims/pads that one frame. Anything larger means labels for a
different audio file or frame rate, which would silently misalign every target.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from speechssl.errors import SpeechSSLError


class LabelLengthError(SpeechSSLError, ValueError):
    """Labels whose frame count does not match the model's for the audio."""


def check_label_lengths(
    labels: Mapping[str, Sequence[int]],
    num_samples: Mapping[str, int],
    frames_for_samples: Callable[[int], int],
    tolerance: int = 1,
) -> None:
    """Raise LabelLengthError listing every utterance whose label count differs from
    `frames_for_samples(num_samples[utt])` by more than `tolerance`, or that has
    no labels at all."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, found {tolerance}")
    problems = []
    for utt, samples in num_samples.items():
        if utt not in labels:
            problems.append(f"{utt}: no labels ({samples} samples)")
            continue
        expected = int(frames_for_samples(int(samples)))
        found = len(labels[utt])
        if abs(found - expected) > tolerance:
            problems.append(f"{utt}: {found} labels, model gives {expected} frames for {samples} samples")
    if problems:
        shown = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise LabelLengthError(
            f"{len(problems)} of {len(num_samples)} utterance(s) have label counts that differ from the "
            f"model's frame count by more than {tolerance}:\n  {shown}{more}"
        )
