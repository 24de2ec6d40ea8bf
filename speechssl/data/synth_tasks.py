"""The task subsets of the embedded corpus: diarization, query-by-example, slot filling, multilingual.

`speechssl synth` builds them beside the base corpus (speechssl.data.synth) from the same
espeak-ng engine, the same speaker table and the same degradations; see README "Embedded
corpus" for the files. Determinism: each unit (a recording, a query, a document, an
utterance) draws all its randomness from `np.random.default_rng([seed, stream, k])`, where
`stream` is fixed per data dir and `k` is the unit's index in it, and each data dir runs in
shards of its own. So a task subset has the same bytes whichever other subsets are built
and whatever --nj is.

- diar/{train,dev,test}: conversations of 2-3 speakers (seen speakers in train, unseen in dev
  and test, so diarization is judged on new voices): turns follow each other with pauses, a
  quarter of them start before the previous one ends (overlap), mixed at the sample level.
  Kaldi `segments` (one utterance per turn, from its first to its last phone), `utt2spk`,
  `reco2dur` and an NIST `rttm` of the same turns.
- qbe/queries (QBE_TERMS spoken alone, by 3 speakers each at the default size), qbe/docs (read
  sentences, most with 1-2 terms planted), qbe/ground_truth: `query_uttid doc_uttid start end`
  (seconds of the term in the document, from espeak's word events snapped to its phones).
- slots/{train,dev,test}: commands of a SNIPS-like grammar; `text`, `utt2iob` (a slot name or O
  per word), `utt2slot_text` (the transcript with B-<slot>/E-<slot> tokens, SUPERB's CTC
  target) and `intent`.
- multilingual/{train,dev,test}: read word sequences in the ten LANGUAGES, 4 voices each;
  `utt2lang` (ISO 639-3), `phones`/`phone_ctm` in espeak's mnemonics, and one inventory per
  language in multilingual/phones/<iso3>.txt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechssl.data import synth_grammar, synth_text
from speechssl.data.alignments import SILENCE_PHONE, PhoneSegment, format_ctm
from speechssl.data.datadir import write_data_dir
from speechssl.data.espeak import get_espeak
from speechssl.data.rttm import Turn as rttm_turn
from speechssl.data.rttm import format_rttm
from speechssl.data.synth import (
    FEMALE_VARIANTS,
    MALE_VARIANTS,
    SHARD_SIZE,
    Speaker,
    SynthConfig,
    _speech_rms,
    _write_wav,
    build_speakers,
    draw_degradation,
)
from speechssl.data.synth_audio import (
    SpeechSegments,
    add_noise,
    pad_segments,
    resample,
    rescale_segments,
    segments_from_events,
    speed_orig_freq,
    to_int16,
)
from speechssl.io import atomic_write_text

TASK_SUBSETS = ("diar", "qbe", "slots", "multilingual")
LANGUAGE_SPEAKER_SEED = 20261127  # the multilingual speaker table is part of the corpus definition
VOICES_PER_LANGUAGE = 4
DIAR_OVERLAP_PROB = 0.25


@dataclass(frozen=True)
class TaskPlan:
    """One data dir of a task subset: its share of --hours and its typical unit duration."""

    subset: str
    split: str
    kind: str  # diar | query | doc | slot | lang
    share: float
    mean_duration_s: float
    min_units: int
    stream: int  # keeps this dir's generators apart from every other dir's

    @property
    def name(self) -> str:
        return f"{self.subset}/{self.split}"


TASK_PLAN = (
    TaskPlan("diar", "train", "diar", 0.08, 30.0, 2, 2_000_001),
    TaskPlan("diar", "dev", "diar", 0.02, 30.0, 1, 2_000_002),
    TaskPlan("diar", "test", "diar", 0.02, 30.0, 1, 2_000_003),
    # 3 speakers per term at the default 3 h, at least 1
    TaskPlan("qbe", "queries", "query", 0.0067, 1.0, len(synth_grammar.QBE_TERMS), 2_000_011),
    TaskPlan("qbe", "docs", "doc", 0.05, 5.5, 12, 2_000_012),
    TaskPlan("slots", "train", "slot", 0.06, 2.3, 10, 2_000_021),
    TaskPlan("slots", "dev", "slot", 0.01, 2.3, 5, 2_000_022),
    TaskPlan("slots", "test", "slot", 0.01, 2.3, 5, 2_000_023),
    TaskPlan("multilingual", "train", "lang", 0.20, 5.0, 2 * len(synth_grammar.LANGUAGES), 2_000_031),
    TaskPlan("multilingual", "dev", "lang", 0.03, 5.0, len(synth_grammar.LANGUAGES), 2_000_032),
    TaskPlan("multilingual", "test", "lang", 0.03, 5.0, len(synth_grammar.LANGUAGES), 2_000_033),
)


def language_speakers() -> dict[str, tuple[Speaker, ...]]:
    """VOICES_PER_LANGUAGE voices per language (half male, half female variants): ids <iso3>01..."""
    rng = np.random.default_rng(LANGUAGE_SPEAKER_SEED)
    out: dict[str, tuple[Speaker, ...]] = {}
    for li, lang in enumerate(synth_grammar.LANGUAGES):
        voices = []
        for j in range(VOICES_PER_LANGUAGE):
            female = j % 2 == 1
            pool = FEMALE_VARIANTS if female else MALE_VARIANTS
            variant = pool[(li * VOICES_PER_LANGUAGE + j) // 2 % len(pool)]
            voices.append(
                Speaker(
                    spk_id=f"{lang.iso3}{j + 1:02d}",
                    accent=lang.voice,
                    variant=variant,
                    pitch=int(rng.integers(40, 76) if female else rng.integers(20, 56)),
                    pitch_range=int(rng.integers(25, 86)),
                    rate=int(rng.integers(140, 191)),
                    seen=True,
                )
            )
        out[lang.iso3] = tuple(voices)
    return out


@dataclass(frozen=True)
class Turn:
    """One diarization turn: who, where in the recording (samples), what was said."""

    uttid: str
    spk_id: str
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class TaskResult:
    uid: str  # utterance id (recording id for diar)
    num_samples: int
    text: str = ""
    segments: tuple = ()  # SpeechSegments of a one-speaker unit
    turns: tuple[Turn, ...] = ()
    terms: tuple[tuple[int, int, int], ...] = ()  # qbe docs: (term index, start, end) in samples
    iob: str = ""
    slot_text: str = ""
    intent: str = ""


@dataclass(frozen=True)
class TaskUnit:
    """One work unit of a task data dir; `synthesize` runs it in a worker (see synth._run_shard)."""

    plan: TaskPlan
    k: int
    uid: str
    speakers: tuple[Speaker, ...]
    wav_path: str
    term: int = -1  # qbe query: index into QBE_TERMS
    language: str = ""  # multilingual: iso3

    @property
    def speaker(self) -> Speaker:
        return self.speakers[0]

    def synthesize(self, config: SynthConfig) -> TaskResult:
        rng = np.random.default_rng([config.seed, self.plan.stream, self.k])
        kind = self.plan.kind
        if kind == "diar":
            return _conversation(self, rng, config)
        return _one_speaker(self, rng, config)


def plan_task_units(config: SynthConfig, subsets: Sequence[str]) -> list[TaskUnit]:
    """Every unit of the selected task subsets, in TASK_PLAN order."""
    speakers = build_speakers(config.num_seen_speakers, config.num_unseen_speakers)
    seen = [s for s in speakers if s.seen]
    unseen = [s for s in speakers if not s.seen]
    by_language = language_speakers()
    out = Path(config.out_dir).resolve()
    total_s = config.hours * 3600.0
    units: list[TaskUnit] = []
    for plan in TASK_PLAN:
        if plan.subset not in subsets:
            continue
        count = max(plan.min_units, round(total_s * plan.share / plan.mean_duration_s))
        wav_dir = out / "wav" / plan.subset / plan.split
        for k in range(count):
            term, language = -1, ""
            if plan.kind == "diar":
                pool = seen if plan.split == "train" else unseen
                rng = np.random.default_rng([config.seed, plan.stream, k, 1])  # who talks: fixed by k
                num = 3 if rng.random() < 0.4 and len(pool) >= 3 else 2
                chosen = tuple(pool[int(i)] for i in sorted(rng.choice(len(pool), size=num, replace=False)))
                uid = f"diar-{plan.split}-{k:06d}"
            elif plan.kind == "query":
                term = k % len(synth_grammar.QBE_TERMS)
                # each round of terms has other speakers, spread over the seen speakers
                chosen = (seen[(term * 7 + (k // len(synth_grammar.QBE_TERMS)) * 13) % len(seen)],)
                uid = f"{chosen[0].spk_id}-qbe-query-{k:06d}"
            elif plan.kind == "lang":
                lang = synth_grammar.LANGUAGES[k % len(synth_grammar.LANGUAGES)]
                voices = by_language[lang.iso3]
                chosen = (voices[(k // len(synth_grammar.LANGUAGES)) % len(voices)],)
                language = lang.iso3
                uid = f"{chosen[0].spk_id}-{plan.subset}-{plan.split}-{k:06d}"
            else:
                chosen = (seen[k % len(seen)],)
                uid = f"{chosen[0].spk_id}-{plan.subset}-{plan.split}-{k:06d}"
            units.append(
                TaskUnit(
                    plan=plan,
                    k=k,
                    uid=uid,
                    speakers=chosen,
                    wav_path=str(wav_dir / f"{uid}.wav"),
                    term=term,
                    language=language,
                )
            )
    return units


def task_shards(units: Sequence[TaskUnit]) -> list[list[TaskUnit]]:
    """Shards that never cross a data dir: a dir's units see the same espeak history whatever else runs."""
    shards: list[list[TaskUnit]] = []
    for plan in TASK_PLAN:
        group = [u for u in units if u.plan == plan]
        shards += [group[i : i + SHARD_SIZE] for i in range(0, len(group), SHARD_SIZE)]
    return shards


# --- synthesis ---


@dataclass(frozen=True)
class Spoken:
    audio: np.ndarray  # (samples,) float32 at the output rate
    segments: SpeechSegments
    words: dict[int, tuple[int, int]]  # word index -> (start, end) sample, for words espeak marked


def _speak(
    speaker: Speaker, text: str, rng: np.random.Generator, speed: float, sample_rate: int, uid: str
) -> Spoken:
    """Synthesize with per-utterance prosody jitter (as synth._speak) and keep word boundaries."""
    engine = get_espeak()
    engine.set_voice(
        speaker.voice_name,
        rate=int(np.clip(speaker.rate * rng.uniform(0.92, 1.08), 80, 450)),
        pitch=int(np.clip(speaker.pitch + rng.integers(-4, 5), 0, 100)),
        pitch_range=int(np.clip(speaker.pitch_range + rng.integers(-6, 7), 0, 100)),
    )
    synthesis = engine.synthesize(text)
    if synthesis.audio.size == 0:
        raise RuntimeError(f"espeak-ng produced no audio for utterance {uid} ({text!r})")
    num_in = synthesis.audio.shape[0]
    segments = segments_from_events(synthesis.phoneme_events, num_in)
    audio = resample(synthesis.audio, speed_orig_freq(synthesis.sample_rate, speed), sample_rate)
    num_out = audio.shape[0]
    words = {
        w: (round(s * num_out / num_in), round(e * num_out / num_in))
        for w, (s, e) in _word_spans(text, synthesis.phoneme_events, synthesis.word_events, num_in).items()
    }
    return Spoken(audio, rescale_segments(segments, num_in, num_out), words)


def _word_spans(
    text: str, phonemes: list[tuple[str, int]], word_events: list[tuple[int, int]], num_samples: int
) -> dict[int, tuple[int, int]]:
    """Word index -> (start, end) sample at espeak's rate, for each word with a word event.

    A word starts at the first phoneme at or after its event (events may lead by ~12 ms) and
    ends where the next marked word starts or at the first pause after it, whichever comes
    first. espeak resyllabifies across words ('an avocado' is 'a navocado'): the word then
    starts with the consonant it took over, as espeak's own event says.
    """
    offsets, pos = {}, 0
    for index, word in enumerate(text.split(" ")):
        offsets[pos + 1] = index  # espeak's text_position is 1-based
        pos += len(word) + 1
    starts = [s for name, s in phonemes if not name.startswith("(")]
    pauses = [s for name, s in phonemes if name.startswith("_")]
    marked = sorted((s, offsets[p]) for p, s in word_events if p in offsets)
    snapped = [(next((s for s in starts if s >= sample), num_samples), index) for sample, index in marked]
    spans: dict[int, tuple[int, int]] = {}
    for i, (start, index) in enumerate(snapped):
        following = snapped[i + 1][0] if i + 1 < len(snapped) else num_samples
        end = min([following, num_samples, *(p for p in pauses if p > start)])
        if end > start:
            spans[index] = (start, end)
    return spans


def _finish(unit: TaskUnit, rng, config: SynthConfig, spoken: Spoken, lead: int, tail: int, degradation):
    """Pad, add noise, apply gain, write the wav; returns (segments, num_samples)."""
    audio = np.concatenate([np.zeros(lead, np.float32), spoken.audio, np.zeros(tail, np.float32)])
    segments = pad_segments(spoken.segments, lead, tail)
    noisy = add_noise(
        rng, audio, _speech_rms(audio, segments), degradation.snr_db, degradation.noise_exponent
    )
    samples = to_int16(noisy, degradation.gain_db)
    _write_wav(unit.wav_path, samples, config.sample_rate)
    return tuple(segments), int(samples.shape[0])


def _fit_duration(unit, rng, config, degradation, draw_text, bounds: tuple[float, float], check=None):
    """Draw text (`draw_text(rng, num_words)`) until the speech lasts within `bounds` seconds."""
    sr = config.sample_rate
    target = rng.uniform(bounds[0] + 0.5, bounds[1] - 1.0)
    num_words = max(2, round(target * unit.speaker.rate / 60.0))
    for _attempt in range(8):
        text = draw_text(rng, num_words)
        spoken = _speak(unit.speaker, text, rng, degradation.speed, sr, unit.uid)
        duration = spoken.audio.shape[0] / sr
        if bounds[0] <= duration <= bounds[1] and (check is None or check(text, spoken)):
            return text, spoken
        num_words = max(1, round(num_words * target / max(duration, 0.1)))
    raise RuntimeError(f"could not make utterance {unit.uid} last {bounds[0]}-{bounds[1]} s")


def _doc_text(rng: np.random.Generator, num_words: int) -> tuple[str, list[tuple[int, int]]]:
    """A read sentence without query terms, then 0-2 terms planted: (text, [(word index, term)])."""
    terms = set(synth_grammar.QBE_TERMS)
    words = [w for w in synth_text.sample_sentence(rng, num_words).split() if w not in terms]
    num_terms = int(rng.choice(3, p=[0.25, 0.5, 0.25]))
    chosen = rng.choice(len(synth_grammar.QBE_TERMS), size=num_terms, replace=False)
    for term in chosen:
        words.insert(int(rng.integers(0, len(words) + 1)), synth_grammar.QBE_TERMS[int(term)])
    planted = [(i, synth_grammar.QBE_TERMS.index(w)) for i, w in enumerate(words) if w in terms]
    return " ".join(words), planted


def _one_speaker(unit: TaskUnit, rng: np.random.Generator, config: SynthConfig) -> TaskResult:
    sr = config.sample_rate
    degradation = draw_degradation(rng, config)
    kind = unit.plan.kind
    fields: dict = {}
    if kind == "query":
        text = synth_grammar.QBE_TERMS[unit.term]
        spoken = _speak(unit.speaker, text, rng, degradation.speed, sr, unit.uid)
    elif kind == "slot":
        command = synth_grammar.sample_slot_command(rng)
        text = command.text
        spoken = _speak(unit.speaker, text, rng, degradation.speed, sr, unit.uid)
        fields = {"iob": command.iob, "slot_text": command.slot_text, "intent": command.intent}
    elif kind == "lang":

        def draw(r, n):
            return synth_grammar.sample_language_sentence(r, unit.language, n)

        text, spoken = _fit_duration(unit, rng, config, degradation, draw, (2.0, 9.0))
    elif kind == "doc":
        planted: list[tuple[int, int]] = []

        def draw(r, n):
            words, found = _doc_text(r, n)
            planted[:] = found
            return words

        def all_terms_marked(_text, spoken):
            return all(i in spoken.words for i, _term in planted)

        text, spoken = _fit_duration(unit, rng, config, degradation, draw, (2.0, 9.0), all_terms_marked)
    else:
        raise AssertionError(f"unknown kind {kind}")
    lead, tail = (int(rng.uniform(0.05, 0.3) * sr) for _ in range(2))
    segments, num_samples = _finish(unit, rng, config, spoken, lead, tail, degradation)
    if kind == "doc":
        fields["terms"] = tuple(
            (term, spoken.words[i][0] + lead, spoken.words[i][1] + lead) for i, term in planted
        )
    return TaskResult(unit.uid, num_samples, text, segments, **fields)


def _trim(spoken: Spoken) -> tuple[np.ndarray, int, int]:
    """The speech between the first and the last phone (espeak's edge silences cut)."""
    speech = [(s, e) for p, s, e in spoken.segments if p != SILENCE_PHONE]
    first, last = (speech[0][0], speech[-1][1]) if speech else (0, spoken.audio.shape[0])
    return spoken.audio[first:last], first, last


def _conversation(unit: TaskUnit, rng: np.random.Generator, config: SynthConfig) -> TaskResult:
    """2-3 speakers taking turns; each turn at its speaker's level, mixed, then noise and gain."""
    sr = config.sample_rate
    degradation = draw_degradation(rng, config)
    target = rng.uniform(20.0, 40.0) * sr
    levels = {s.spk_id: 10.0 ** (rng.uniform(-3.0, 3.0) / 20.0) for s in unit.speakers}
    placed: list[tuple[Speaker, int, np.ndarray, str]] = []
    cursor = int(rng.uniform(0.2, 0.8) * sr)
    current = -1
    while cursor < target or len(placed) < 2 * len(unit.speakers):
        others = [i for i in range(len(unit.speakers)) if i != current]
        current = others[int(rng.integers(len(others)))]
        speaker = unit.speakers[current]
        text = synth_text.sample_sentence(rng, int(rng.integers(3, 11)))
        audio, _first, _last = _trim(_speak(speaker, text, rng, degradation.speed, sr, unit.uid))
        if placed and rng.random() < DIAR_OVERLAP_PROB:
            prev_start, prev_end = placed[-1][1], placed[-1][1] + placed[-1][2].shape[0]
            start = max(prev_start + int(0.3 * sr), prev_end - int(rng.uniform(0.2, 1.0) * sr))
        else:
            start = cursor + int(rng.uniform(0.1, 1.0) * sr) if placed else cursor
        placed.append((speaker, start, audio, text))
        cursor = max(cursor, start + audio.shape[0])
    num_samples = cursor + int(rng.uniform(0.2, 0.8) * sr)
    mix = np.zeros(num_samples, np.float64)
    active = np.zeros(num_samples, bool)
    turns = []
    for t, (speaker, start, audio, text) in enumerate(placed):
        mix[start : start + audio.shape[0]] += levels[speaker.spk_id] * audio
        active[start : start + audio.shape[0]] = True
        turns.append(
            Turn(f"{speaker.spk_id}-{unit.uid}-{t:03d}", speaker.spk_id, start, start + audio.shape[0], text)
        )
    speech_rms = float(np.sqrt(np.mean(mix[active] ** 2)))
    noisy = add_noise(rng, mix, speech_rms, degradation.snr_db, degradation.noise_exponent)
    samples = to_int16(noisy, degradation.gain_db)
    _write_wav(unit.wav_path, samples, sr)
    return TaskResult(unit.uid, int(samples.shape[0]), turns=tuple(turns))


# --- writing ---


def _write_diar(path: Path, units: list[TaskUnit], results: dict[str, TaskResult], sr: int) -> dict:
    wav_scp, reco2dur, segments, utt2spk, text, utt2dur = {}, {}, {}, {}, {}, {}
    rttm: dict[str, list[rttm_turn]] = {}
    for unit in units:
        result = results[unit.uid]
        wav_scp[unit.uid] = unit.wav_path
        reco2dur[unit.uid] = result.num_samples / sr
        for turn in result.turns:
            start, end = round(turn.start / sr, 3), round(turn.end / sr, 3)  # the RTTM's precision
            segments[turn.uttid] = (unit.uid, start, end)
            utt2spk[turn.uttid], text[turn.uttid], utt2dur[turn.uttid] = turn.spk_id, turn.text, end - start
            rttm.setdefault(unit.uid, []).append(rttm_turn(turn.spk_id, start, end))
    write_data_dir(
        path, wav_scp, utt2spk=utt2spk, text=text, segments=segments, utt2dur=utt2dur, reco2dur=reco2dur
    )
    atomic_write_text(path / "rttm", format_rttm(rttm))
    turns = [t for u in units for t in results[u.uid].turns]
    overlapped = sum(
        1 for u in units for a, b in zip(results[u.uid].turns, results[u.uid].turns[1:]) if b.start < a.end
    )
    return {
        "hours": round(sum(reco2dur.values()) / 3600.0, 4),
        "recordings": len(units),
        "turns": len(turns),
        "overlapping_turns": overlapped,
        "speakers": len(set(utt2spk.values())),
    }


def _phone_sequence(segments: Sequence[tuple[str, int, int]]) -> str:
    phones = [p for p, _s, _e in segments if p != SILENCE_PHONE]
    return " ".join(phones) if phones else SILENCE_PHONE


def _write_one_speaker(path: Path, units: list[TaskUnit], results: dict[str, TaskResult], sr: int) -> dict:
    """wav.scp, utt2spk, text, utt2dur, phones and phone_ctm, plus the kind's own tables."""
    res = [results[u.uid] for u in units]
    extra: dict[str, dict[str, str]] = {"phones": {r.uid: _phone_sequence(r.segments) for r in res}}
    kind = units[0].plan.kind
    if kind == "slot":
        extra["utt2iob"] = {r.uid: r.iob for r in res}
        extra["utt2slot_text"] = {r.uid: r.slot_text for r in res}
        extra["intent"] = {r.uid: r.intent for r in res}
    if kind == "lang":
        extra["utt2lang"] = {u.uid: u.language for u in units}
    write_data_dir(
        path,
        {u.uid: u.wav_path for u in units},
        utt2spk={u.uid: u.speaker.spk_id for u in units},
        text={r.uid: r.text for r in res},
        utt2dur={r.uid: r.num_samples / sr for r in res},
        extra=extra,
    )
    ordered = sorted(res, key=lambda r: r.uid.encode())
    atomic_write_text(
        path / "phone_ctm",
        "".join(
            format_ctm(r.uid, [PhoneSegment(s / sr, (e - s) / sr, p) for p, s, e in r.segments])
            for r in ordered
        ),
    )
    return {
        "hours": round(sum(r.num_samples for r in res) / sr / 3600.0, 4),
        "utterances": len(units),
        "speakers": len({u.speaker.spk_id for u in units}),
    }


def format_ground_truth(queries: list[TaskUnit], docs: list[TaskUnit], results: dict, sr: int) -> str:
    """`query_uttid doc_uttid start end` for every query and every occurrence of its term."""
    lines = []
    for query in queries:
        for doc in docs:
            for term, start, end in results[doc.uid].terms:
                if term == query.term:
                    lines.append((query.uid, doc.uid, start / sr, end / sr))
    lines.sort(key=lambda x: (x[0].encode(), x[1].encode(), x[2]))
    return "".join(f"{q} {d} {s:.3f} {e:.3f}\n" for q, d, s, e in lines)


def write_task_dirs(
    out: Path, units: Sequence[TaskUnit], results: dict[str, TaskResult], sample_rate: int
) -> tuple[dict, set[str]]:
    """Every task data dir and its side files; returns (summary entries by dir, the phones of the
    English task dirs, which join the base corpus's phones.txt)."""
    summary: dict[str, dict] = {}
    groups = {plan: [u for u in units if u.plan == plan] for plan in TASK_PLAN}
    for plan, group in groups.items():
        if not group:
            continue
        path = out / plan.subset / plan.split
        if plan.kind == "diar":
            summary[plan.name] = _write_diar(path, group, results, sample_rate)
        else:
            summary[plan.name] = _write_one_speaker(path, group, results, sample_rate)
    queries = groups[TASK_PLAN[3]]
    docs = groups[TASK_PLAN[4]]
    if queries:
        text = format_ground_truth(queries, docs, results, sample_rate)
        atomic_write_text(out / "qbe" / "ground_truth", text)
        summary["qbe/queries"]["terms"] = len(synth_grammar.QBE_TERMS)
        summary["qbe/docs"]["ground_truth_lines"] = text.count("\n")
        summary["qbe/docs"]["docs_with_terms"] = sum(1 for d in docs if results[d.uid].terms)
    inventories: dict[str, set[str]] = {}
    for unit in units:
        if unit.plan.kind == "lang":
            inventories.setdefault(unit.language, set()).update(p for p, _s, _e in results[unit.uid].segments)
    if inventories:
        for iso3, phones in inventories.items():
            ordered = [SILENCE_PHONE] + sorted(phones - {SILENCE_PHONE}, key=str.encode)
            atomic_write_text(
                out / "multilingual" / "phones" / f"{iso3}.txt",
                "".join(f"{p} {i}\n" for i, p in enumerate(ordered)),
            )
        speakers = language_speakers()
        atomic_write_text(
            out / "multilingual" / "languages.txt",
            "".join(
                f"{lang.iso3} {lang.voice} {len(inventories.get(lang.iso3, ()))} "
                f"{' '.join(s.spk_id + '=' + s.voice_name for s in speakers[lang.iso3])}\n"
                for lang in synth_grammar.LANGUAGES
            ),
        )
    if inventories:
        summary["multilingual/train"]["phones_per_language"] = {
            k: len(v) for k, v in sorted(inventories.items())
        }
    english: set[str] = set()
    for unit in units:
        if unit.plan.kind in ("query", "doc", "slot"):
            english.update(p for p, _s, _e in results[unit.uid].segments)
    return summary, english
