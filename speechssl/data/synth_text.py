"""What the synthetic speakers say: read sentences, keywords, and a command grammar.

The word list (`wordlist.txt`, shipped in the package) was filtered from Debian's
`wamerican`: lowercase words of 4-8 letters that have at least three inflected
forms in the dictionary (a cheap proxy for "common"), minus offensive words.
Sentences interleave those content words with English function words, so that
their rhythm and word-length distribution resemble read speech.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from importlib import resources

import numpy as np

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN = "_unknown_"
SILENCE = "_silence_"
KEYWORD_CLASSES = (*KEYWORDS, UNKNOWN, SILENCE)  # the 12 classes of Speech Commands v1 (SUPERB KS)

FUNCTION_WORDS = (
    "the", "a", "of", "to", "and", "in", "is", "was", "it", "for", "with", "as", "his", "her",
    "they", "at", "by", "from", "this", "that", "we", "not", "but", "all", "will", "can", "one",
    "their", "there", "been", "when", "more", "some", "into", "then", "very", "after", "our",
)  # fmt: skip
FUNCTION_WORD_PROB = 0.4  # share of function words in running English text is about 40-50%


@functools.cache
def load_vocabulary() -> tuple[str, ...]:
    """The shipped content-word list (sorted, unique, without the keywords)."""
    text = resources.files("speechssl.data").joinpath("wordlist.txt").read_text(encoding="utf-8")
    words = sorted({w.strip() for w in text.split() if w.strip()} - set(KEYWORDS))
    if len(words) < 2000:
        raise ValueError(f"speechssl/data/wordlist.txt has {len(words)} words; at least 2000 are expected")
    return tuple(words)


def sample_sentence(rng: np.random.Generator, num_words: int) -> str:
    """`num_words` words: content words from the vocabulary mixed with function words."""
    vocab = load_vocabulary()
    words = []
    for _ in range(num_words):
        if rng.random() < FUNCTION_WORD_PROB:
            words.append(FUNCTION_WORDS[int(rng.integers(len(FUNCTION_WORDS)))])
        else:
            words.append(vocab[int(rng.integers(len(vocab)))])
    return " ".join(words)


def sample_unknown_word(rng: np.random.Generator) -> str:
    """A non-keyword for the `_unknown_` class."""
    vocab = load_vocabulary()
    return vocab[int(rng.integers(len(vocab)))]


# --- spoken commands: action x object x location (like Fluent Speech Commands) ---

ACTIONS = ("activate", "deactivate", "increase", "decrease")
OBJECTS = ("lights", "heat", "music", "fan")
LOCATIONS = ("none", "kitchen", "bedroom", "washroom")

# Several phrasings per action; {obj} and {loc} are filled in ("" when location is none).
PHRASINGS = {
    "activate": ("turn on the {obj}{loc}", "switch on the {obj}{loc}", "start the {obj}{loc}",
                 "{obj} on{loc}"),
    "deactivate": ("turn off the {obj}{loc}", "switch off the {obj}{loc}", "stop the {obj}{loc}",
                   "{obj} off{loc}"),
    "increase": ("turn up the {obj}{loc}", "increase the {obj}{loc}", "more {obj}{loc} please",
                 "raise the {obj}{loc}"),
    "decrease": ("turn down the {obj}{loc}", "decrease the {obj}{loc}", "less {obj}{loc} please",
                 "lower the {obj}{loc}"),
}  # fmt: skip
LOCATION_PHRASES = ("in the {loc}", "in my {loc}")


@dataclass(frozen=True)
class Intent:
    action: str
    object: str
    location: str

    def __str__(self) -> str:
        return f"{self.action} {self.object} {self.location}"


def all_intents() -> tuple[Intent, ...]:
    """Every valid (action, object, location) triple: 4 x 4 x 4 = 64 intents."""
    return tuple(Intent(a, o, loc) for a, o, loc in itertools.product(ACTIONS, OBJECTS, LOCATIONS))


def sample_command(rng: np.random.Generator) -> tuple[str, Intent]:
    """A random intent and one of its phrasings."""
    intents = all_intents()
    intent = intents[int(rng.integers(len(intents)))]
    template = PHRASINGS[intent.action][int(rng.integers(len(PHRASINGS[intent.action])))]
    loc = ""
    if intent.location != "none":
        phrase = LOCATION_PHRASES[int(rng.integers(len(LOCATION_PHRASES)))]
        loc = " " + phrase.format(loc=intent.location)
    return template.format(obj=intent.object, loc=loc), intent
