"""Audio I/O: read a (segment of a) file as float32 at the model's sample rate.

Reading goes through soundfile (libsndfile: wav, flac, ogg/vorbis, ...) and
seeks to the segment, so a 2 s Kaldi segment of a 1 h recording costs 2 s of
decoding, not 1 h. Integer PCM (16/24/32 bit) is scaled to [-1, 1) by
libsndfile; float files are returned as stored (nominally [-1, 1], never
clipped, so nothing is silently changed).

Resampling policy: a file whose rate differs from ``sample_rate`` is
resampled with ``torchaudio.functional.resample`` (windowed sinc, Hann window,
torchaudio's defaults), after cutting the segment. This is logged once per
(file rate, target rate) pair so a corpus at the wrong rate is visible in the
log without flooding it. Pass ``sample_rate=None`` to keep the file's rate.

Segment times follow Kaldi's ``extract-segments``: ``start``/``end`` are
seconds, rounded to the nearest sample; an ``end`` that overshoots the file by
less than ``max_overshoot`` seconds (0.5 s, Kaldi's default) is truncated to
the file's end, a larger one is an error.

Only regular files are opened (a FIFO or device in wav.scp would block the
reader forever), and a WAV whose data chunk is shorter than its header declares
(a truncated copy or download) is an error, not a shorter utterance: libsndfile
would silently report the frames that are present.

Every failure is an ``AudioError`` (a ``ValueError``) naming the utterance id
and the path.
"""

from __future__ import annotations

import logging
import math
import os
import stat
import struct
import threading
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from speechssl.data.layout import file_kind
from speechssl.errors import SpeechSSLError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # what training reads and models expect (the Upstream contract); others are resampled
MAX_OVERSHOOT = 0.5  # seconds an end time may pass the end of the file (Kaldi extract-segments)

_logged_rates: set[tuple[int, int]] = set()
_logged_lock = threading.Lock()


# bytes per sample of the WAV subtypes whose frames have a fixed size
_SAMPLE_BYTES = {
    "PCM_U8": 1,
    "PCM_S8": 1,
    "ULAW": 1,
    "ALAW": 1,
    "PCM_16": 2,
    "PCM_24": 3,
    "PCM_32": 4,
    "FLOAT": 4,
    "DOUBLE": 8,
}
_STREAMED_SIZES = (0, 0xFFFFFFFF)  # data chunk size written by streaming writers that did not know it

# integer PCM cannot hold NaN or infinity, so its samples need no finiteness scan
INTEGER_SUBTYPES = frozenset({"PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32", "ULAW", "ALAW"})


class AudioError(SpeechSSLError, ValueError):
    """An audio file (or segment of one) that cannot be read as asked."""


@dataclass(frozen=True)
class AudioInfo:
    """What the file header says; no samples are decoded."""

    sample_rate: int
    num_frames: int  # samples per channel
    num_channels: int
    format: str  # e.g. WAV, FLAC, OGG
    subtype: str  # e.g. PCM_16, PCM_24, FLOAT, VORBIS

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.num_frames / self.sample_rate


def _where(path: str | os.PathLike, utt_id: str | None) -> str:
    return f"utterance '{utt_id}' ({path})" if utt_id is not None else f"{path}"


def _check_path(path: str | os.PathLike, utt_id: str | None) -> None:
    text = os.fspath(path)
    if text.rstrip().endswith("|"):
        raise AudioError(
            f"{_where(path, utt_id)}: piped wav.scp commands are not supported; "
            "convert the audio to files (e.g. flac) first"
        )
    if not os.path.exists(text):
        raise AudioError(f"{_where(path, utt_id)}: file not found")
    if os.path.isdir(text):
        raise AudioError(f"{_where(path, utt_id)}: is a directory, not an audio file")


def _regular_size(path: str | os.PathLike, utt_id: str | None) -> int:
    """The size of `path`, checked to be a regular file before anything opens it (opening a FIFO blocks)."""
    try:
        st = os.stat(path)
    except OSError:
        _check_path(path, utt_id)  # names a pipe entry or a missing file
        raise AudioError(f"{_where(path, utt_id)}: cannot read the file") from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioError(f"{_where(path, utt_id)}: is a directory, not an audio file")
    if not stat.S_ISREG(st.st_mode):
        raise AudioError(
            f"{_where(path, utt_id)}: is {file_kind(st.st_mode)}, not an audio file;"
            " wav.scp must list regular audio files"
        )
    return st.st_size


def _wav_data_chunk(path: str | os.PathLike, size: int) -> tuple[int, int] | None:
    """(declared, present) bytes of the data chunk of a RIFF/WAVE file, or None when the file is
    not one or its data size is unknown (streamed)."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            declared = struct.unpack("<I", chunk[4:])[0]
            if chunk[:4] == b"data":
                return None if declared in _STREAMED_SIZES else (declared, size - pos - 8)
            pos += 8 + declared + (declared & 1)  # chunks are padded to an even size
    return None


def _check_complete(path: str | os.PathLike, size: int, info: AudioInfo, where: str) -> None:
    """A WAV whose header declares more audio than the file holds is truncated: an error."""
    if info.format not in ("WAV", "WAVEX"):
        return
    chunk = _wav_data_chunk(path, size)
    if chunk is None or chunk[1] >= chunk[0]:
        return
    declared, present = chunk
    frame = _SAMPLE_BYTES.get(info.subtype, 0) * info.num_channels
    if frame:
        what = (
            f"its header declares {declared // frame} samples ({declared // frame / info.sample_rate:.3f} s),"
            f" the file holds {present // frame} ({present // frame / info.sample_rate:.3f} s)"
        )
    else:
        what = f"its header declares {declared} bytes of audio, the file holds {present}"
    raise AudioError(f"{where}: truncated WAV file: {what}; copy or convert it again")


def _open(path: str | os.PathLike, utt_id: str | None) -> tuple[sf.SoundFile, AudioInfo]:
    """Open a regular audio file for reading and check that it is complete; the reason for a
    failure (missing, pipe, FIFO, truncated, unreadable) is named either way."""
    size = _regular_size(path, utt_id)
    try:
        f = sf.SoundFile(os.fspath(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        _check_path(path, utt_id)
        raise AudioError(f"{_where(path, utt_id)}: cannot read audio header: {err}") from None
    try:
        info = _info(f)
        _check_complete(path, size, info, _where(path, utt_id))
    except BaseException:
        f.close()
        raise
    return f, info


def _info(f: sf.SoundFile) -> AudioInfo:
    return AudioInfo(
        sample_rate=int(f.samplerate),
        num_frames=int(f.frames),
        num_channels=int(f.channels),
        format=str(f.format),
        subtype=str(f.subtype),
    )


def audio_info(path: str | os.PathLike, *, utt_id: str | None = None) -> AudioInfo:
    """Read the header of `path`; raises AudioError if it is missing or unreadable."""
    if os.fspath(path).rstrip().endswith("|"):
        _check_path(path, utt_id)
    f, info = _open(path, utt_id)
    f.close()
    return info


def audio_duration(path: str | os.PathLike, *, utt_id: str | None = None) -> float:
    """Duration in seconds from the header (no decoding)."""
    return audio_info(path, utt_id=utt_id).duration


def segment_frames(
    start: float,
    end: float | None,
    info: AudioInfo,
    *,
    where: str,
    max_overshoot: float = MAX_OVERSHOOT,
) -> tuple[int, int]:
    """[first, last) sample indices of a segment in seconds, checked against the file."""
    if not (math.isfinite(start) and start >= 0):
        raise AudioError(f"{where}: segment start must be a finite time >= 0, found {start}")
    if end is not None and not math.isfinite(end):
        raise AudioError(f"{where}: segment end must be finite, found {end}")
    if end is not None and end <= start:
        raise AudioError(f"{where}: segment end ({end}) must be after its start ({start})")
    sr, total = info.sample_rate, info.num_frames
    first = round(start * sr)
    if first >= total:
        raise AudioError(
            f"{where}: segment starts at {start:.3f} s, at or after the end of the file "
            f"({info.duration:.3f} s)"
        )
    if end is None:
        return first, total
    last = round(end * sr)
    if last > total:
        if end - info.duration > max_overshoot:
            raise AudioError(
                f"{where}: segment ends at {end:.3f} s, past the end of the file ({info.duration:.3f} s) "
                f"by more than {max_overshoot} s"
            )
        last = total
    return first, last


def _log_resample_once(orig: int, new: int) -> None:
    with _logged_lock:
        if (orig, new) in _logged_rates:
            return
        _logged_rates.add((orig, new))
    logger.info("resampling audio from %d Hz to %d Hz (torchaudio sinc interpolation)", orig, new)


def load_audio(
    path: str | os.PathLike,
    *,
    start: float = 0.0,
    end: float | None = None,
    sample_rate: int | None = SAMPLE_RATE,
    channel: int | None = None,
    utt_id: str | None = None,
    max_overshoot: float = MAX_OVERSHOOT,
) -> torch.Tensor:
    """Read seconds [start, end) of `path` as a float32 tensor (samples,) at `sample_rate`.

    `end=None` reads to the end of the file. Multi-channel files need
    `channel` (0-based); mono files accept `channel=None` or 0.
    `sample_rate=None` returns the file's own rate (see `audio_info`).
    """
    where = _where(path, utt_id)
    if os.fspath(path).rstrip().endswith("|"):
        _check_path(path, utt_id)
    f, info = _open(path, utt_id)
    with f:
        if info.num_frames == 0:
            raise AudioError(f"{where}: file holds no samples")
        if channel is None and info.num_channels > 1:
            raise AudioError(
                f"{where}: file has {info.num_channels} channels and speechssl reads mono audio: "
                "mix it down or keep one channel (e.g. `sox IN OUT remix 1`), "
                f"or pass channel=0..{info.num_channels - 1} to load_audio"
            )
        if channel is not None and not 0 <= channel < info.num_channels:
            raise AudioError(f"{where}: channel {channel} requested, file has {info.num_channels} channel(s)")
        first, last = segment_frames(start, end, info, where=where, max_overshoot=max_overshoot)
        data = _decode(f, info, where, first, last - first)
    # a mono read is already contiguous; a channel of a multi-channel file is copied out
    wav = torch.from_numpy(data[:, 0] if info.num_channels == 1 else data[:, channel].copy())  # (samples,)
    if sample_rate is not None and sample_rate != info.sample_rate:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, found {sample_rate}")
        _log_resample_once(info.sample_rate, sample_rate)
        wav = AF.resample(wav, info.sample_rate, sample_rate)  # (ceil(samples * new / orig),)
    return wav


def read_audio_file(path: str | os.PathLike, *, utt_id: str | None = None) -> tuple[torch.Tensor, AudioInfo]:
    """Every channel of a whole file at its own rate, as float32 (channels, samples), with its header:
    what a copy of the file (speed or volume perturbation) starts from. Same checks as `load_audio`."""
    where = _where(path, utt_id)
    if os.fspath(path).rstrip().endswith("|"):
        _check_path(path, utt_id)
    f, info = _open(path, utt_id)
    with f:
        if info.num_frames == 0:
            raise AudioError(f"{where}: file holds no samples")
        data = _decode(f, info, where, 0, info.num_frames)
    return torch.from_numpy(data.T.copy()), info  # (channels, samples)


def _decode(f: sf.SoundFile, info: AudioInfo, where: str, first: int, num: int) -> np.ndarray:
    """`num` frames from frame `first` as float32 (samples, channels), every channel: a short read
    (a truncated file) and NaN/inf samples of a float file are errors naming `where`."""
    try:
        if first:
            f.seek(first)
        data = f.read(num, dtype="float32", always_2d=True)  # (samples, channels)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise AudioError(f"{where}: cannot decode audio: {err}") from None
    if data.shape[0] != num:
        raise AudioError(
            f"{where}: expected {num} samples from {first}, decoded {data.shape[0]} "
            "(truncated or corrupt file)"
        )
    if info.subtype not in INTEGER_SUBTYPES and not np.isfinite(data).all():
        raise AudioError(f"{where}: audio holds NaN or infinite samples")
    return data
