"""ctypes wrapper of espeak-ng's C library (libespeak-ng.so.1) with phoneme events.

We call the library rather than the `espeak-ng` program because only the C API
reports where each phoneme starts in the audio (espeakEVENT_PHONEME with the
sample position), which gives exact phone alignments. espeak-ng keeps global
state per process: one `Espeak` per process (see `get_espeak`), and a process
pool for parallel synthesis.

Struct layouts and constants follow /usr/include/espeak-ng/speak_lib.h
(ESPEAK_API_REVISION 12).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass, field

import numpy as np

from speechssl.errors import SpeechSSLError

# espeak_AUDIO_OUTPUT
AUDIO_OUTPUT_SYNCHRONOUS = 2
# espeak_Initialize options
INITIALIZE_PHONEME_EVENTS = 0x0001
# espeak_EVENT_TYPE
EVENT_LIST_TERMINATED = 0
EVENT_WORD = 1
EVENT_PHONEME = 7
# espeak_PARAMETER
PARAM_RATE = 1
PARAM_VOLUME = 2
PARAM_PITCH = 3
PARAM_RANGE = 4
# espeak_Synth flags / position type
CHARS_UTF8 = 1
POS_CHARACTER = 1

LIBRARY_NAMES = ("libespeak-ng.so.1", "libespeak-ng.so")


class EspeakError(SpeechSSLError, RuntimeError):
    """espeak-ng is missing or one of its calls failed."""


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """espeak_EVENT: audio_position is in ms, sample is the sample index of the event."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass(frozen=True)
class Synthesis:
    """One synthesized utterance at espeak's native rate.

    audio: (samples,) int16; phoneme_events: (mnemonic, start sample) in time order,
    as espeak reports them (pauses are mnemonics starting with '_'; a language switch
    inside the text shows as '(en)' ... '(cmn)'); word_events: (1-based character
    offset of the word in the text, start sample). espeak may fold a short word into
    its neighbour's event ('of the'), and a word's event may come up to ~10 ms before
    its first phoneme.
    """

    audio: np.ndarray
    sample_rate: int
    phoneme_events: list[tuple[str, int]]
    word_events: list[tuple[int, int]] = field(default_factory=list)


def load_library() -> ctypes.CDLL:
    """Open libespeak-ng; the error says which package to install."""
    names = list(LIBRARY_NAMES)
    found = ctypes.util.find_library("espeak-ng")
    if found:
        names.append(found)
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise EspeakError(
        f"cannot load espeak-ng's C library (tried {', '.join(names)}); "
        "install it, e.g. `apt-get install espeak-ng` (Debian/Ubuntu) or `brew install espeak-ng`"
    )


class Espeak:
    """The per-process espeak-ng engine in synchronous mode with phoneme events."""

    def __init__(self, data_path: str | None = None) -> None:
        lib = load_library()
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]  # fmt: skip
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        path = data_path.encode() if data_path else None
        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, path, INITIALIZE_PHONEME_EVENTS)
        if rate <= 0:
            raise EspeakError(f"espeak_Initialize failed (returned {rate}); is espeak-ng-data installed?")
        self.lib = lib
        self.sample_rate = int(rate)
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[str, int]] = []
        self._words: list[tuple[int, int]] = []
        # Keep a reference: the C library holds this pointer for the life of the process.
        self._callback = _SynthCallback(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav, num_samples: int, events) -> int:  # noqa: ANN001 (ctypes pointers)
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events[i].type != EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type == EVENT_PHONEME:
                name = bytes(event.id.string).split(b"\0", 1)[0].decode("utf-8", "replace")
                self._events.append((name, int(event.sample)))
            elif event.type == EVENT_WORD:
                self._words.append((int(event.text_position), int(event.sample)))
            i += 1
        return 0  # continue synthesis

    def set_voice(self, name: str, *, rate: int, pitch: int, pitch_range: int) -> None:
        """Select a voice like 'en-us+m3' and its prosody (rate in words/min, pitch/range 0-100)."""
        if self.lib.espeak_SetVoiceByName(name.encode()) != 0:
            raise EspeakError(
                f"espeak-ng has no voice '{name}' (see `espeak-ng --voices=en` and --voices=variant)"
            )
        for param, value in ((PARAM_RATE, rate), (PARAM_PITCH, pitch), (PARAM_RANGE, pitch_range)):
            if self.lib.espeak_SetParameter(param, int(value), 0) != 0:
                raise EspeakError(f"espeak_SetParameter({param}, {value}) failed for voice '{name}'")

    def synthesize(self, text: str) -> Synthesis:
        """Speak `text` with the current voice; returns int16 audio and phoneme start samples."""
        self._chunks, self._events, self._words = [], [], []
        data = text.encode("utf-8") + b"\0"
        buf = ctypes.create_string_buffer(data, len(data))
        err = self.lib.espeak_Synth(buf, len(data), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
        if err != 0:
            raise EspeakError(f"espeak_Synth failed with error {err} for text {text!r}")
        self.lib.espeak_Synchronize()
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
        return Synthesis(audio=audio.astype(np.int16, copy=False), sample_rate=self.sample_rate,
                         phoneme_events=list(self._events), word_events=list(self._words))  # fmt: skip


_ENGINE: Espeak | None = None


def get_espeak() -> Espeak:
    """The process-wide engine, created on first use (espeak-ng state is global per process)."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = Espeak()
    return _ENGINE
