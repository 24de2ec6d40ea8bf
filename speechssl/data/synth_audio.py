"""Turning espeak-ng output into corpus audio: phone segments, speed, padding, gain, noise.

Everything here is a pure function of its inputs and a numpy Generator, so the
same seed gives the same samples whatever process runs it. Alignments are kept
in integer samples and follow every change of the time axis (speed, padding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchaudio.functional as AF
from scipy.fft import next_fast_len

from speechssl.data.alignments import SILENCE_PHONE

SpeechSegments = list[tuple[str, int, int]]  # (phone, start sample, end sample), contiguous from 0


def segments_from_events(events: list[tuple[str, int]], num_samples: int) -> SpeechSegments:
    """espeak phoneme events -> contiguous segments covering [0, num_samples).

    Pauses ('_', '_:', '_!', ...) and the lead-in before the first phoneme become
    'sil'; zero-length events are dropped; neighbouring silences are merged. Language-switch
    markers ('(en)', '(cmn)': other languages' voices) are not phones and are dropped.
    """
    points: list[tuple[str, int]] = [(SILENCE_PHONE, 0)]
    for name, sample in events:
        if name.startswith("("):
            continue
        phone = SILENCE_PHONE if name.startswith("_") or not name else name
        points.append((phone, min(max(int(sample), 0), num_samples)))
    segments: SpeechSegments = []
    for i, (phone, start) in enumerate(points):
        end = points[i + 1][1] if i + 1 < len(points) else num_samples
        if end <= start:
            continue
        if segments and segments[-1][0] == phone == SILENCE_PHONE:
            segments[-1] = (phone, segments[-1][1], end)
        else:
            segments.append((phone, start, end))
    return segments


def rescale_segments(segments: SpeechSegments, num_in: int, num_out: int) -> SpeechSegments:
    """Map boundaries from a time axis of num_in samples onto one of num_out samples."""
    out: SpeechSegments = []
    for phone, start, end in segments:
        s, e = round(start * num_out / num_in), round(end * num_out / num_in)
        if e > s:
            out.append((phone, s, e))
    if out:  # the last boundary lands exactly on the end, whatever the rounding
        out[-1] = (out[-1][0], out[-1][1], num_out)
    return out


def pad_segments(segments: SpeechSegments, lead: int, tail: int) -> SpeechSegments:
    """Shift by `lead` samples and add silence around (merged with existing edge silences)."""
    shifted = [(p, s + lead, e + lead) for p, s, e in segments]
    if lead:
        shifted.insert(0, (SILENCE_PHONE, 0, lead))
    if tail:
        end = shifted[-1][2]
        shifted.append((SILENCE_PHONE, end, end + tail))
    merged: SpeechSegments = []
    for seg in shifted:
        if merged and merged[-1][0] == seg[0] == SILENCE_PHONE:
            merged[-1] = (SILENCE_PHONE, merged[-1][1], seg[2])
        else:
            merged.append(seg)
    return merged


def speed_orig_freq(native_rate: int, speed: float) -> int:
    """Speed perturbation as in Kaldi: read audio as if sampled at native_rate * speed.

    Rounded to a multiple of 50 Hz so the resampling ratio (and its kernel) stays small.
    """
    return max(50, int(round(native_rate * speed / 50.0)) * 50)


def resample(audio: np.ndarray, orig_freq: int, new_freq: int) -> np.ndarray:
    """int16 or float (samples,) -> float32 (samples',) in [-1, 1] via torchaudio."""
    x = torch.from_numpy(audio.astype(np.float32) / (32768.0 if audio.dtype == np.int16 else 1.0))
    if orig_freq == new_freq:
        return x.numpy()
    return AF.resample(x, orig_freq, new_freq).numpy()


def coloured_noise(rng: np.random.Generator, num_samples: int, exponent: float) -> np.ndarray:
    """Unit-RMS noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown)."""
    length = next_fast_len(num_samples, real=True)  # a prime length would make the FFT slow
    white = rng.standard_normal(length)
    spectrum = np.fft.rfft(white)
    freqs = np.arange(spectrum.shape[0], dtype=np.float64)
    freqs[0] = 1.0
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2.0), n=length)[:num_samples]
    rms = np.sqrt(np.mean(noise**2)) + 1e-12
    return (noise / rms).astype(np.float32)


@dataclass(frozen=True, kw_only=True)
class Degradation:
    """What happens to one utterance: all drawn from its own Generator."""

    speed: float = 1.0
    gain_db: float = 0.0
    snr_db: float | None = None  # None: no noise
    noise_exponent: float = 1.0


def add_noise(
    rng: np.random.Generator, audio: np.ndarray, speech_rms: float, snr_db: float | None, exponent: float
) -> np.ndarray:
    """Add coloured noise at `snr_db` relative to the speech RMS (for pure silence: a fixed floor)."""
    if snr_db is None:
        return audio
    level = speech_rms / (10.0 ** (snr_db / 20.0)) if speech_rms > 0 else 10.0 ** (-35.0 / 20.0)
    return audio + level * coloured_noise(rng, audio.shape[0], exponent)


def to_int16(audio: np.ndarray, gain_db: float) -> np.ndarray:
    """Apply gain, keep the peak below full scale (no clipping), quantize to 16 bit."""
    x = audio.astype(np.float64) * 10.0 ** (gain_db / 20.0)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 0.98:
        x *= 0.98 / peak
    return np.round(x * 32767.0).astype(np.int16)
