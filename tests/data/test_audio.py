"""load_audio / audio_duration: formats, segments, resampling, channels, errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from speechssl.data.audio import AudioError, audio_duration, audio_info, load_audio


def ramp(n: int, peak: float = 0.9) -> np.ndarray:
    """A float signal whose every sample identifies its position."""
    return (np.linspace(-peak, peak, n)).astype(np.float64)


def dominant_hz(wav: torch.Tensor, sample_rate: int) -> float:
    spectrum = torch.fft.rfft(wav.double() * torch.hann_window(len(wav), dtype=torch.float64)).abs()
    return float(spectrum.argmax()) * sample_rate / len(wav)


@pytest.mark.parametrize(
    ("fmt", "subtype", "tol"),
    [
        ("WAV", "PCM_16", 1 / 2**15),
        ("WAV", "PCM_24", 1 / 2**23),
        ("WAV", "PCM_32", 1 / 2**31),
        ("WAV", "FLOAT", 1e-7),
        ("FLAC", "PCM_16", 1 / 2**15),
        ("FLAC", "PCM_24", 1 / 2**23),
    ],
)
def test_formats_read_as_float_in_range(tmp_path, fmt, subtype, tol):
    x = ramp(1600)
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, x, 16000, format=fmt, subtype=subtype)
    wav = load_audio(path)
    assert wav.dtype == torch.float32 and wav.shape == (1600,)
    assert wav.abs().max() <= 1.0
    np.testing.assert_allclose(wav.numpy(), x, atol=tol * 1.01 + 1e-7)
    assert audio_duration(path) == pytest.approx(0.1)
    assert audio_info(path).subtype == subtype


def test_int16_full_scale_maps_to_minus_one(tmp_path):
    path = tmp_path / "i16.wav"
    sf.write(path, np.array([-32768, 0, 16384, 32767], dtype=np.int16), 16000, subtype="PCM_16")
    wav = load_audio(path)
    assert wav.tolist() == pytest.approx([-1.0, 0.0, 0.5, 32767 / 32768])


def test_ogg_vorbis_reads(tmp_path):
    t = np.arange(16000) / 16000
    path = tmp_path / "a.ogg"
    sf.write(path, 0.5 * np.sin(2 * np.pi * 440 * t), 16000, format="OGG", subtype="VORBIS")
    wav = load_audio(path)
    assert abs(len(wav) - 16000) <= 1
    assert dominant_hz(wav, 16000) == pytest.approx(440, abs=2)


@pytest.mark.parametrize("suffix", ["wav", "flac"])
def test_segment_reads_exact_samples(tmp_path, suffix):
    x = (np.arange(16000) % 30000 - 15000).astype(np.int16)  # sample value encodes its index
    path = tmp_path / f"a.{suffix}"
    sf.write(path, x, 16000, subtype="PCM_16")
    wav = load_audio(path, start=0.25, end=0.5)
    expected = torch.from_numpy(x[4000:8000].astype(np.float32) / 32768)
    assert torch.equal(wav, expected)
    tail = load_audio(path, start=0.75)
    assert torch.equal(tail, torch.from_numpy(x[12000:].astype(np.float32) / 32768))


def test_segment_overshoot_within_tolerance_is_truncated(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, ramp(16000), 16000, subtype="PCM_16")
    assert len(load_audio(path, start=0.5, end=1.2)) == 8000


@pytest.mark.parametrize(
    ("start", "end", "match"),
    [
        (1.5, None, "starts at 1.500 s, at or after the end"),
        (0.5, 2.0, "past the end of the file"),
        (0.5, 0.4, r"end \(0.4\) must be after its start"),
        (-0.1, None, "start must be a finite time"),
    ],
)
def test_segment_outside_file_names_utt_and_path(tmp_path, start, end, match):
    path = tmp_path / "a.wav"
    sf.write(path, ramp(16000), 16000, subtype="PCM_16")
    with pytest.raises(AudioError, match=f"utterance 'spk1-utt7' \\({path}\\).*{match}"):
        load_audio(path, start=start, end=end, utt_id="spk1-utt7")


@pytest.mark.parametrize("orig_sr", [8000, 44100])
def test_resample_to_16k_keeps_length_and_frequency(tmp_path, orig_sr, caplog):
    t = np.arange(orig_sr) / orig_sr  # 1 s
    path = tmp_path / f"sine{orig_sr}.wav"
    sf.write(path, 0.5 * np.sin(2 * np.pi * 1000 * t), orig_sr, subtype="FLOAT")
    with caplog.at_level(logging.INFO, logger="speechssl.data.audio"):
        wav = load_audio(path, sample_rate=16000)
        load_audio(path, sample_rate=16000)
    assert len(wav) == 16000
    assert dominant_hz(wav, 16000) == pytest.approx(1000, abs=1.5)
    ideal = 0.5 * torch.sin(2 * torch.pi * 1000 * torch.arange(16000, dtype=torch.float64) / 16000)
    assert (wav.double() - ideal)[200:-200].abs().max() < 1e-3  # measured 8.5e-5 (8 kHz), 2.0e-4 (44.1 kHz)
    logged = [r for r in caplog.records if f"from {orig_sr} Hz to 16000 Hz" in r.getMessage()]
    assert len(logged) <= 1  # once per rate pair (may have been logged by an earlier test)
    # segment then resample: 0.5 s -> 8000 samples
    assert len(load_audio(path, start=0.25, end=0.75)) == 8000
    assert len(load_audio(path, sample_rate=None)) == orig_sr


def test_multichannel_needs_channel(tmp_path):
    path = tmp_path / "stereo.wav"
    left, right = ramp(800, 0.5), -ramp(800, 0.25)
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    with pytest.raises(
        AudioError, match=r"utterance 'u1' .*has 2 channels and speechssl reads mono audio: .*channel=0..1"
    ):
        load_audio(path, utt_id="u1")
    np.testing.assert_allclose(load_audio(path, channel=1).numpy(), right, atol=1e-7)
    np.testing.assert_allclose(load_audio(path, channel=0).numpy(), left, atol=1e-7)
    with pytest.raises(AudioError, match="channel 2 requested, file has 2 channel"):
        load_audio(path, channel=2, utt_id="u1")


def test_missing_corrupt_empty_files_name_utt_and_path(tmp_path):
    missing = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match=f"utterance 'u-missing' \\({missing}\\): file not found"):
        load_audio(missing, utt_id="u-missing")
    with pytest.raises(AudioError, match="file not found"):
        audio_duration(missing)

    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF not really a wave file" * 10)
    with pytest.raises(AudioError, match=f"utterance 'u-corrupt' \\({corrupt}\\): cannot read audio header"):
        load_audio(corrupt, utt_id="u-corrupt")

    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.int16), 16000, subtype="PCM_16")
    with pytest.raises(AudioError, match=f"utterance 'u-empty' \\({empty}\\): file holds no samples"):
        load_audio(empty, utt_id="u-empty")

    with pytest.raises(AudioError, match="piped wav.scp commands are not supported"):
        load_audio("sox a.wav -t wav - |", utt_id="u-pipe")
    with pytest.raises(AudioError, match="is a directory"):
        load_audio(tmp_path, utt_id="u-dir")


def test_audio_error_is_value_error():
    assert issubclass(AudioError, ValueError)


def _truncate(path, num_bytes):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - num_bytes])


@pytest.mark.parametrize("cut", [1, 16000])
def test_truncated_wav_is_an_error_naming_utterance_and_path_not_a_shorter_file(tmp_path, cut):
    # a copy cut short: libsndfile reports only the frames present, so the header is checked
    path = tmp_path / "a.wav"
    sf.write(path, ramp(16000), 16000, subtype="PCM_16")
    _truncate(path, cut)
    message = rf"utterance 'u1' \({path}\): truncated WAV file: its header declares 16000 samples \(1.000 s\)"
    with pytest.raises(AudioError, match=message):
        audio_info(path, utt_id="u1")
    with pytest.raises(AudioError, match=message):
        load_audio(path, utt_id="u1")
    with pytest.raises(AudioError, match="truncated WAV file"):
        audio_duration(path)


def test_streamed_wav_of_unknown_length_still_reads(tmp_path):
    # writers that stream to a pipe leave 0xFFFFFFFF as the data size: the frames present are the audio
    path = tmp_path / "a.wav"
    sf.write(path, ramp(1600), 16000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    assert data[36:40] == b"data"
    data[40:44] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))
    assert len(load_audio(path)) == 1600


@pytest.mark.timeout(10)
def test_fifo_is_refused_without_blocking(tmp_path):
    import os

    fifo = tmp_path / "a.wav"
    os.mkfifo(fifo)  # nobody writes it: opening it would block forever
    with pytest.raises(
        AudioError, match=rf"utterance 'u1' \({fifo}\): is a FIFO \(named pipe\), not an audio file"
    ):
        audio_info(fifo, utt_id="u1")
    with pytest.raises(AudioError, match="is a FIFO"):
        load_audio(fifo, utt_id="u1")


def test_directory_and_missing_file_are_named(tmp_path):
    with pytest.raises(AudioError, match=rf"utterance 'u1' \({tmp_path}\): is a directory"):
        audio_info(tmp_path, utt_id="u1")
    with pytest.raises(AudioError, match="file not found"):
        load_audio(tmp_path / "nope.wav", utt_id="u1")
