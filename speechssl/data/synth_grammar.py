"""What the task subsets of the synthetic corpus say: slot-filling commands, query terms, other languages.

- Slot filling: a small SNIPS-like grammar (5 intents, 7 slot types). Each command comes with one
  tag per word (`O` outside a slot, else the slot name), as s3prl's SNIPS preparation writes its
  `iob` column, and the transcript with SUPERB's slot tokens (`B-<slot> ... E-<slot>`), the target
  SUPERB's slot filling trains CTC on.
- Query-by-example: QBE_TERMS, three-to-four-syllable words that the read-speech generator never
  draws, so a document contains a term exactly when it was planted there.
- Multilingual: LANGUAGES, espeak-ng voices of ten language families, each with a word list
  (`synth_langs/<iso3>.txt`, one entry per line: the same ~95 everyday words, written by us)
  from which sentences are drawn as random word sequences (like the English read speech).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

import numpy as np

# --- slot filling ---

OUTSIDE = "O"
SLOT_VALUES: dict[str, tuple[str, ...]] = {
    "time": ("seven thirty", "six fifteen", "noon", "midnight", "nine forty five", "ten", "half past six",
             "five", "eleven thirty", "eight"),
    "date": ("today", "tomorrow", "monday", "friday", "this weekend", "tonight", "next week"),
    "music_genre": ("jazz", "rock", "classical", "blues", "reggae", "hip hop", "country", "pop", "folk"),
    "room": ("kitchen", "bedroom", "living room", "bathroom", "garage", "office", "hallway"),
    "city": ("paris", "london", "tokyo", "berlin", "cairo", "toronto", "boston", "madrid", "sydney"),
    "temperature": ("eighteen", "nineteen", "twenty", "twenty one", "twenty two", "twenty three"),
    "party_size": ("two", "three", "four", "five", "six", "eight"),
}  # fmt: skip
# intent -> phrasings; {slot} is filled with one of SLOT_VALUES[slot]
SLOT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "SetAlarm": ("set an alarm for {time}", "wake me up at {time} {date}",
                 "set an alarm for {date} at {time}", "i need an alarm at {time}"),
    "PlayMusic": ("play {music_genre} in the {room}", "play some {music_genre}",
                  "put on {music_genre} music in the {room}", "i want to hear {music_genre}"),
    "GetWeather": ("what is the weather in {city} {date}", "will it rain in {city} {date}",
                   "how cold is it in {city}", "tell me the forecast for {city}"),
    "SetTemperature": ("set the {room} to {temperature} degrees", "make the {room} {temperature} degrees",
                       "heat the {room} to {temperature}"),
    "BookRestaurant": ("book a table for {party_size} at {time}", "book a table for {party_size} {date}",
                       "reserve a table in {city} for {party_size} people"),
}  # fmt: skip
_SLOT = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class SlotCommand:
    """One command: words, one tag per word (OUTSIDE or a slot name) and its intent."""

    words: tuple[str, ...]
    tags: tuple[str, ...]
    intent: str

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def iob(self) -> str:
        """s3prl's SNIPS `iob` column: a slot name (or O) per word of `text`."""
        return " ".join(self.tags)

    @property
    def slot_text(self) -> str:
        """The transcript with SUPERB's slot tokens: 'set an alarm for B-time seven thirty E-time'."""
        out: list[str] = []
        for i, (word, tag) in enumerate(zip(self.words, self.tags)):
            if tag != OUTSIDE and (i == 0 or self.tags[i - 1] != tag):
                out.append(f"B-{tag}")
            out.append(word)
            if tag != OUTSIDE and (i + 1 == len(self.tags) or self.tags[i + 1] != tag):
                out.append(f"E-{tag}")
        return " ".join(out)


def sample_slot_command(rng: np.random.Generator) -> SlotCommand:
    """A random intent, one of its phrasings, and a value for each slot in it."""
    intents = sorted(SLOT_TEMPLATES)
    intent = intents[int(rng.integers(len(intents)))]
    templates = SLOT_TEMPLATES[intent]
    template = templates[int(rng.integers(len(templates)))]
    words: list[str] = []
    tags: list[str] = []
    for token in template.split():
        match = _SLOT.fullmatch(token)
        if match is None:
            words.append(token)
            tags.append(OUTSIDE)
            continue
        slot = match.group(1)
        values = SLOT_VALUES[slot]
        value = values[int(rng.integers(len(values)))].split()
        words += value
        tags += [slot] * len(value)
    return SlotCommand(tuple(words), tuple(tags), intent)


def slot_names() -> tuple[str, ...]:
    return tuple(sorted(SLOT_VALUES))


# --- query-by-example ---

QBE_TERMS = (
    "umbrella", "elephant", "telephone", "tomato", "banana", "computer", "potato", "dinosaur",
    "kangaroo", "volcano", "butterfly", "pineapple", "hospital", "chocolate", "triangle", "saxophone",
    "motorcycle", "calendar", "astronaut", "mosquito", "avocado", "lemonade", "spaghetti", "broccoli",
)  # fmt: skip


# --- multilingual ---


@dataclass(frozen=True)
class Language:
    """An espeak-ng voice and the ISO 639-3 code that `utt2lang` and ids use (ML-SUPERB's codes)."""

    iso3: str
    voice: str  # espeak_SetVoiceByName name
    name: str
    family: str


LANGUAGES = (
    Language("eng", "en-us", "English", "Indo-European (Germanic)"),
    Language("spa", "es", "Spanish", "Indo-European (Romance)"),
    Language("rus", "ru", "Russian", "Indo-European (Slavic)"),
    Language("hin", "hi", "Hindi", "Indo-European (Indo-Aryan)"),
    Language("cmn", "cmn-latn-pinyin", "Mandarin (pinyin)", "Sino-Tibetan"),
    Language("ara", "ar", "Arabic", "Afro-Asiatic (Semitic)"),
    Language("tur", "tr", "Turkish", "Turkic"),
    Language("fin", "fi", "Finnish", "Uralic"),
    Language("swa", "sw", "Swahili", "Niger-Congo (Bantu)"),
    Language("ind", "id", "Indonesian", "Austronesian"),
)


@functools.cache
def load_language_words(iso3: str) -> tuple[str, ...]:
    """The word list of one language (sorted, unique; an entry may hold several words)."""
    name = f"{iso3}.txt"
    text = resources.files("speechssl.data").joinpath("synth_langs", name).read_text(encoding="utf-8")
    words = sorted({" ".join(line.split()) for line in text.splitlines() if line.strip()})
    if len(words) < 50:
        raise ValueError(
            f"speechssl/data/synth_langs/{name} has {len(words)} entries; at least 50 are expected"
        )
    return tuple(words)


def sample_language_sentence(rng: np.random.Generator, iso3: str, num_words: int) -> str:
    words = load_language_words(iso3)
    return " ".join(words[int(rng.integers(len(words)))] for _ in range(num_words))
