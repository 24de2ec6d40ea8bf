"""The embedded default corpus: multi-speaker speech synthesized offline with espeak-ng.

`build_corpus(SynthConfig(out_dir=...))` writes Kaldi data dirs with 16 kHz wavs and
exact phone alignments (from espeak-ng's phoneme events) for read speech,
keywords, spoken commands and speaker verification (the base corpus, sized by
`hours`), and the task subsets of speechssl.data.synth_tasks (diarization,
query-by-example, slot filling, multilingual), sized from the same `hours`; see
README "Embedded corpus". `subsets` picks what to build.

Determinism: every utterance is one work unit that draws all its randomness
(words, prosody jitter, speed, padding, gain, noise) from
`np.random.default_rng([seed, unit index])`, and torch runs single-threaded while
resampling, so the files are byte-identical for a seed whatever --nj is.

Beside the speech subsets, `noise/train` holds noise-only clips (4 s each, about 20 per
corpus hour, at least 8) for WavLM's noise mixing (`speechssl pretrain --noise`): coloured
noise (white to brown) and babble (5 overlapped windows of read/train utterances), each
drawn from `np.random.default_rng([seed, NOISE_STREAM, clip index])`.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from speechssl.data import synth_audio, synth_text
from speechssl.data.alignments import SILENCE_PHONE, PhoneSegment, format_ctm
from speechssl.data.audio import SAMPLE_RATE
from speechssl.data.datadir import write_data_dir
from speechssl.data.espeak import get_espeak
from speechssl.data.synth_audio import (
    Degradation,
    SpeechSegments,
    add_noise,
    pad_segments,
    resample,
    rescale_segments,
    segments_from_events,
    speed_orig_freq,
    to_int16,
)
from speechssl.data.trials import format_trials, make_trials
from speechssl.io import atomic_file, atomic_write_text
from speechssl.outputs import claim_directories

log = logging.getLogger(__name__)

# espeak-ng English voices (accents) and voice variants that exist in Debian's espeak-ng-data.
# ('en' is British English: espeak_SetVoiceByName does not know 'en-gb'.)
ACCENTS = (
    "en-us",
    "en",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
MALE_VARIANTS = (
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "klatt",
    "klatt2",
    "klatt3",
    "Andy",
    "david",
    "edward",
)
FEMALE_VARIANTS = (
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "steph",
    "linda",
    "Annie",
    "belinda",
    "anika",
    "Alicia",
    "Andrea",
)
SPEAKER_TABLE_SEED = 20240601  # the speaker table is part of the corpus definition, not of --seed
BASE = "base"  # read, keywords, commands, asv and noise: the corpus before the task subsets
SUBSETS = (BASE, "diar", "qbe", "slots", "multilingual")  # the last four: speechssl.data.synth_tasks


@dataclass(frozen=True, kw_only=True)
class Speaker:
    """A fixed espeak-ng voice: accent + variant + prosody. Keeps its id in every subset."""

    spk_id: str
    accent: str
    variant: str
    pitch: int  # espeak base pitch 0-100
    pitch_range: int  # espeak pitch range 0-100
    rate: int  # words per minute
    seen: bool  # seen speakers: read/keywords/commands; unseen: asv/test only

    @property
    def voice_name(self) -> str:
        return f"{self.accent}+{self.variant}"


def build_speakers(num_seen: int = 40, num_unseen: int = 10) -> tuple[Speaker, ...]:
    """spk001.. (seen) then the unseen ones; no two share accent and variant."""
    variants = [v for pair in zip(MALE_VARIANTS, FEMALE_VARIANTS) for v in pair] + list(MALE_VARIANTS[12:])
    total = num_seen + num_unseen
    # len(variants) = 25 is coprime with len(ACCENTS) = 8: pairs repeat only after 200 speakers.
    if total > len(variants) * len(ACCENTS):
        raise ValueError(f"at most {len(variants) * len(ACCENTS)} distinct speakers, asked for {total}")
    rng = np.random.default_rng(SPEAKER_TABLE_SEED)
    speakers = []
    for i in range(total):
        variant = variants[i % len(variants)]
        female = variant in FEMALE_VARIANTS
        speakers.append(
            Speaker(
                spk_id=f"spk{i + 1:03d}",
                accent=ACCENTS[i % len(ACCENTS)],
                variant=variant,
                pitch=int(rng.integers(40, 76) if female else rng.integers(20, 56)),
                pitch_range=int(rng.integers(25, 86)),
                rate=int(rng.integers(140, 201)),
                seen=i < num_seen,
            )
        )
    return tuple(speakers)


@dataclass(frozen=True, kw_only=True)
class SynthConfig:
    """Options of `speechssl synth` (defaults: the ~3 h embedded corpus with realistic degradations)."""

    out_dir: str
    hours: float = 3.0
    seed: int = 0
    num_jobs: int = 1
    clean: bool = False  # no noise, gain or speed changes
    snr_db: tuple[float, float] = (5.0, 25.0)
    gain_db: tuple[float, float] = (-6.0, 3.0)
    speed: tuple[float, float] = (0.9, 1.1)
    sample_rate: int = SAMPLE_RATE
    num_seen_speakers: int = 40
    num_unseen_speakers: int = 10
    subsets: tuple[str, ...] = SUBSETS  # BASE (read, keywords, commands, asv, noise) and the task subsets
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.hours > 0:
            raise ValueError(f"hours must be > 0, found {self.hours}")
        if self.num_jobs < 1:
            raise ValueError(f"num_jobs must be >= 1, found {self.num_jobs}")
        if self.num_seen_speakers < 1 or self.num_unseen_speakers < 2:
            raise ValueError(
                "need at least 1 seen and 2 unseen speakers (asv trials need target and nontarget pairs)"
            )
        for name in ("snr_db", "gain_db", "speed"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name} must be (low, high) with low <= high, found ({lo}, {hi})")
        if self.speed[0] <= 0:
            raise ValueError(f"speed must be positive, found {self.speed}")
        unknown = [s for s in self.subsets if s not in SUBSETS]
        if unknown or not self.subsets:
            raise ValueError(
                f"subsets must be some of {', '.join(SUBSETS)}; found {', '.join(unknown) or 'none'}"
            )


@dataclass(frozen=True)
class SubsetPlan:
    """One data dir: its share of the hours, its typical duration and who speaks."""

    subset: str
    split: str
    kind: str  # read | keyword | command
    share: float  # of the total hours
    mean_duration_s: float  # to turn hours into an utterance count
    min_utterances: int
    seen_speakers: bool


PLAN = (
    SubsetPlan("read", "train", "read", 0.50, 7.6, 4, True),
    SubsetPlan("read", "dev", "read", 0.05, 7.6, 2, True),
    SubsetPlan("read", "test", "read", 0.05, 7.6, 2, True),
    SubsetPlan("keywords", "train", "keyword", 0.12, 1.0, 12, True),
    SubsetPlan("keywords", "dev", "keyword", 0.02, 1.0, 12, True),
    SubsetPlan("keywords", "test", "keyword", 0.02, 1.0, 12, True),
    SubsetPlan("commands", "train", "command", 0.12, 1.85, 4, True),
    SubsetPlan("commands", "dev", "command", 0.02, 1.85, 2, True),
    SubsetPlan("commands", "test", "command", 0.02, 1.85, 2, True),
    SubsetPlan("asv", "test", "read", 0.08, 7.6, 4, False),
)

READ_DURATION_S = (2.5, 11.0)  # target range; the result is kept within 2-12 s
KEYWORD_CLIP_S = 1.0  # Speech Commands clips are 1 s


@dataclass(frozen=True)
class UttSpec:
    """One work unit; `index` seeds its Generator, so the unit is reproducible on its own."""

    index: int
    uttid: str
    subset: str
    split: str
    kind: str
    speaker: Speaker
    wav_path: str
    keyword_class: int = -1


@dataclass(frozen=True)
class UttResult:
    uttid: str
    text: str
    intent: str
    segments: SpeechSegments  # at the output sample rate
    num_samples: int


def plan_utterances(config: SynthConfig) -> list[UttSpec]:
    """All work units in a fixed order (subset plan order, then utterance index)."""
    speakers = build_speakers(config.num_seen_speakers, config.num_unseen_speakers)
    seen = [s for s in speakers if s.seen]
    unseen = [s for s in speakers if not s.seen]
    out = Path(config.out_dir).resolve()
    specs: list[UttSpec] = []
    total_s = config.hours * 3600.0
    for plan in PLAN:
        pool = seen if plan.seen_speakers else unseen
        count = max(plan.min_utterances, round(total_s * plan.share / plan.mean_duration_s))
        if not plan.seen_speakers:  # verification trials need >= 2 utterances per speaker
            pool = pool[: max(2, min(len(pool), count // 2))]
        for k in range(count):
            speaker = pool[k % len(pool)]
            uttid = f"{speaker.spk_id}-{plan.subset}-{plan.split}-{k:06d}"
            specs.append(
                UttSpec(
                    index=len(specs),
                    uttid=uttid,
                    subset=plan.subset,
                    split=plan.split,
                    kind=plan.kind,
                    speaker=speaker,
                    wav_path=str(out / "wav" / plan.subset / plan.split / f"{uttid}.wav"),
                    keyword_class=_keyword_class(k, len(pool)) if plan.kind == "keyword" else -1,
                )
            )
    return specs


def _keyword_class(k: int, num_speakers: int) -> int:
    """Classes cycle, shifted by one each round of speakers, so no speaker is tied to a few classes."""
    return (k + k // num_speakers) % len(synth_text.KEYWORD_CLASSES)


def draw_degradation(rng: np.random.Generator, config: SynthConfig) -> Degradation:
    if config.clean:
        return Degradation()
    return Degradation(
        speed=float(rng.uniform(*config.speed)),
        gain_db=float(rng.uniform(*config.gain_db)),
        snr_db=float(rng.uniform(*config.snr_db)),
        noise_exponent=float(rng.uniform(0.0, 2.0)),
    )


def _speak(spec: UttSpec, text: str, rng: np.random.Generator, speed: float, sample_rate: int):
    """Synthesize with per-utterance prosody jitter; returns float audio and segments at sample_rate."""
    engine = get_espeak()
    spk = spec.speaker
    engine.set_voice(
        spk.voice_name,
        rate=int(np.clip(spk.rate * rng.uniform(0.92, 1.08), 80, 450)),
        pitch=int(np.clip(spk.pitch + rng.integers(-4, 5), 0, 100)),
        pitch_range=int(np.clip(spk.pitch_range + rng.integers(-6, 7), 0, 100)),
    )
    synthesis = engine.synthesize(text)
    if synthesis.audio.size == 0:
        raise RuntimeError(f"espeak-ng produced no audio for utterance {spec.uttid} ({text!r})")
    segments = segments_from_events(synthesis.phoneme_events, synthesis.audio.shape[0])
    orig_freq = speed_orig_freq(synthesis.sample_rate, speed)
    audio = resample(synthesis.audio, orig_freq, sample_rate)  # (samples,) float32
    return audio, rescale_segments(segments, synthesis.audio.shape[0], audio.shape[0])


def _speech_rms(audio: np.ndarray, segments: SpeechSegments) -> float:
    """RMS over the non-silence segments (SNR is defined on speech, not on the pauses)."""
    parts = [audio[s:e] for p, s, e in segments if p != SILENCE_PHONE]
    if not parts:
        return 0.0
    speech = np.concatenate(parts)
    return float(np.sqrt(np.mean(speech.astype(np.float64) ** 2)))


def synthesize_utterance(spec: UttSpec, config: SynthConfig) -> UttResult:
    """Make one utterance, write its wav (atomically) and return its transcripts and alignment."""
    rng = np.random.default_rng([config.seed, spec.index])
    sr = config.sample_rate
    degradation = draw_degradation(rng, config)
    intent = ""
    if spec.kind == "read":
        target = rng.uniform(*READ_DURATION_S)
        num_words = max(3, round(target * spec.speaker.rate / 46.0))
        for _attempt in range(6):
            text = synth_text.sample_sentence(rng, num_words)
            audio, segments = _speak(spec, text, rng, degradation.speed, sr)
            duration = audio.shape[0] / sr
            if 1.9 <= duration <= 11.4:  # the padding below adds 0.1-0.6 s
                break
            num_words = max(2, round(num_words * target / max(duration, 0.1)))
        else:
            raise RuntimeError(
                f"could not make utterance {spec.uttid} last 2-12 s (last try {duration:.2f} s)"
            )
        lead, tail = (int(rng.uniform(0.05, 0.3) * sr) for _ in range(2))
    elif spec.kind == "keyword":
        label = synth_text.KEYWORD_CLASSES[spec.keyword_class]
        clip = int(KEYWORD_CLIP_S * sr)
        if label == synth_text.SILENCE:
            text, audio, segments = label, np.zeros(0, np.float32), []
        else:
            word = synth_text.sample_unknown_word(rng) if label == synth_text.UNKNOWN else label
            audio, segments = _speak(spec, word, rng, degradation.speed, sr)
            text = label
        free = max(clip - audio.shape[0], 0)
        lead = int(rng.integers(0, free + 1))
        tail = free - lead
    elif spec.kind == "command":
        text, triple = synth_text.sample_command(rng)
        intent = str(triple)
        audio, segments = _speak(spec, text, rng, degradation.speed, sr)
        lead, tail = (int(rng.uniform(0.05, 0.3) * sr) for _ in range(2))
    else:
        raise AssertionError(f"unknown kind {spec.kind}")

    audio = np.concatenate([np.zeros(lead, np.float32), audio, np.zeros(tail, np.float32)])
    segments = pad_segments(segments, lead, tail) if segments else [(SILENCE_PHONE, 0, audio.shape[0])]
    assert segments[-1][2] == audio.shape[0], (spec.uttid, segments[-1], audio.shape)
    noisy = add_noise(
        rng, audio, _speech_rms(audio, segments), degradation.snr_db, degradation.noise_exponent
    )
    samples = to_int16(noisy, degradation.gain_db)
    _write_wav(spec.wav_path, samples, sr)
    return UttResult(spec.uttid, text, intent, segments, int(samples.shape[0]))


def _write_wav(path: str, samples: np.ndarray, sample_rate: int) -> None:
    buffer = io.BytesIO()  # libsndfile says only "System error" on a full disk; Python's write names it
    sf.write(buffer, samples, sample_rate, subtype="PCM_16", format="WAV")
    with atomic_file(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


# --- running the units ---
# espeak-ng's output depends on its history in the process (e.g. its pitch-flutter
# phase carries over between calls, and espeak_Initialize does not reset it). So
# units run in fixed shards, each in a fresh process: the same shard always sees
# the same history, whatever --nj is. The forkserver makes a fresh process cheap.

SHARD_SIZE = 16
_WORKER_CONFIG: SynthConfig | None = None


def _init_worker(config: SynthConfig) -> None:
    global _WORKER_CONFIG
    _WORKER_CONFIG = config
    torch.set_num_threads(1)  # resampling results must not depend on thread count


def _run_shard(specs: list) -> list:
    """UttSpecs of the base corpus, or task units (speechssl.data.synth_tasks) that synthesize themselves."""
    assert _WORKER_CONFIG is not None
    return [
        synthesize_utterance(spec, _WORKER_CONFIG)
        if isinstance(spec, UttSpec)
        else spec.synthesize(_WORKER_CONFIG)
        for spec in specs
    ]


def _run_all(
    specs: Sequence[UttSpec], config: SynthConfig, more_shards: Sequence[list] = ()
) -> Iterator[list]:
    shards = [list(specs[i : i + SHARD_SIZE]) for i in range(0, len(specs), SHARD_SIZE)] + list(more_shards)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    with ctx.Pool(config.num_jobs, initializer=_init_worker, initargs=(config,), maxtasksperchild=1) as pool:
        yield from pool.imap(_run_shard, shards)


# --- writing the data dirs ---


def _ctm_segments(result: UttResult, sample_rate: int) -> list[PhoneSegment]:
    return [PhoneSegment(s / sample_rate, (e - s) / sample_rate, p) for p, s, e in result.segments]


def _phone_sequence(result: UttResult) -> str:
    phones = [p for p, _s, _e in result.segments if p != SILENCE_PHONE]
    return " ".join(phones) if phones else SILENCE_PHONE


def _write_data_dir(
    path: Path, specs: list[UttSpec], results: dict[str, UttResult], sample_rate: int
) -> None:
    """The Kaldi files through the shared DataDir writer, then phone_ctm (several lines per utterance)."""
    res = [results[s.uttid] for s in specs]
    extra = {"phones": {r.uttid: _phone_sequence(r) for r in res}}
    if any(r.intent for r in res):
        extra["intent"] = {r.uttid: r.intent for r in res}
    write_data_dir(
        path,
        {s.uttid: s.wav_path for s in specs},
        utt2spk={s.uttid: s.speaker.spk_id for s in specs},
        text={r.uttid: r.text for r in res},
        utt2dur={r.uttid: r.num_samples / sample_rate for r in res},
        extra=extra,
    )
    ordered = sorted(res, key=lambda r: r.uttid.encode())
    atomic_write_text(
        path / "phone_ctm", "".join(format_ctm(r.uttid, _ctm_segments(r, sample_rate)) for r in ordered)
    )


NOISE_STREAM = 1_000_003  # keeps the noise clips' generators apart from the utterances'
NOISE_CLIP_S = 4.0
NOISE_CLIPS_PER_HOUR = 20
NOISE_MIN_CLIPS = 8
BABBLE_TALKERS = 5


def _babble(rng: np.random.Generator, sources: Sequence[str], num_samples: int) -> np.ndarray:
    """BABBLE_TALKERS random windows of the given utterances, each at unit RMS, summed."""
    mix = np.zeros(num_samples, dtype=np.float64)
    for path in rng.choice(len(sources), size=BABBLE_TALKERS, replace=True):
        audio, _ = sf.read(sources[int(path)], dtype="float64")
        if audio.shape[0] < num_samples:
            audio = np.tile(audio, -(-num_samples // audio.shape[0]))
        start = int(rng.integers(0, audio.shape[0] - num_samples + 1))
        window = audio[start : start + num_samples]
        mix += window / (np.sqrt(np.mean(window**2)) + 1e-12)
    return mix


def build_noise(out: Path, config: SynthConfig, babble_sources: Sequence[str]) -> dict:
    """The noise-only data dir `out/noise/train` (see the module docstring); its summary entry."""
    num_clips = max(NOISE_MIN_CLIPS, round(config.hours * NOISE_CLIPS_PER_HOUR))
    num_samples = round(NOISE_CLIP_S * config.sample_rate)
    wav_scp, utt2dur, kinds = {}, {}, {}
    for k in range(num_clips):
        rng = np.random.default_rng([config.seed, NOISE_STREAM, k])
        kind = "babble" if k % 2 and babble_sources else "coloured"
        if kind == "babble":
            audio = _babble(rng, babble_sources, num_samples)
        else:
            audio = synth_audio.coloured_noise(rng, num_samples, float(rng.uniform(0.0, 2.0)))
        audio = 0.1 * audio / (np.sqrt(np.mean(np.square(audio, dtype=np.float64))) + 1e-12)  # -20 dBFS
        uttid = f"noise-{kind}-{k:05d}"
        path = out / "wav" / "noise" / "train" / f"{uttid}.wav"
        _write_wav(str(path), to_int16(audio, 0.0), config.sample_rate)
        wav_scp[uttid], utt2dur[uttid], kinds[uttid] = str(path), num_samples / config.sample_rate, kind
    write_data_dir(out / "noise" / "train", wav_scp, utt2dur=utt2dur, extra={"utt2kind": kinds})
    return {
        "dir": "noise/train",
        "clips": num_clips,
        "hours": round(num_clips * NOISE_CLIP_S / 3600.0, 4),
        "kinds": sorted(set(kinds.values())),
    }


def build_corpus(config: SynthConfig, *, overwrite: bool = False) -> dict:
    """Synthesize the corpus under config.out_dir; returns (and writes) summary.json's content.
    An out_dir with files `synth` did not write is refused unless `overwrite` (speechssl.outputs)."""
    from speechssl.data import synth_tasks  # it builds on this module's speakers and helpers

    out = Path(config.out_dir)
    claim_directories([out], "synth", overwrite=overwrite)
    specs = plan_utterances(config) if BASE in config.subsets else []
    units = synth_tasks.plan_task_units(config, config.subsets)
    log.info("synthesizing %d utterances and %d task units (%.2f h base corpus) into %s with %d job(s)",
             len(specs), len(units), config.hours, out, config.num_jobs)  # fmt: skip
    results: dict[str, UttResult] = {}
    task_results: dict = {}
    bar = tqdm(total=len(specs) + len(units), desc="synth", unit="utt", disable=not config.progress)
    for shard in _run_all(specs, config, synth_tasks.task_shards(units)):
        for result in shard:
            if isinstance(result, UttResult):
                results[result.uttid] = result
            else:
                task_results[result.uid] = result
        bar.update(len(shard))
    bar.close()

    by_dir: dict[tuple[str, str], list[UttSpec]] = defaultdict(list)
    for spec in specs:
        by_dir[(spec.subset, spec.split)].append(spec)
    subsets = {}
    inventory: set[str] = set()
    vocabulary: set[str] = set()
    for (subset, split), group in by_dir.items():
        path = out / subset / split
        _write_data_dir(path, group, results, config.sample_rate)
        if subset == "asv":
            # every pair, or a seeded sample of 20000 (the same list for the same seed)
            trials = make_trials(
                {s.uttid: s.speaker.spk_id for s in group}, max_trials=20000, seed=config.seed
            )
            atomic_write_text(path / "trials", format_trials(trials))
        seconds = sum(results[s.uttid].num_samples for s in group) / config.sample_rate
        subsets[f"{subset}/{split}"] = {
            "hours": round(seconds / 3600.0, 4),
            "utterances": len(group),
            "speakers": len({s.speaker.spk_id for s in group}),
        }
        for s in group:
            inventory.update(p for p, _a, _b in results[s.uttid].segments)
            if subset in ("read", "asv"):
                vocabulary.update(results[s.uttid].text.split())
    noise = None
    if specs:
        babble_sources = [s.wav_path for s in specs if (s.subset, s.split) == ("read", "train")]
        noise = build_noise(out, config, babble_sources)
    task_summary, task_phones = synth_tasks.write_task_dirs(out, units, task_results, config.sample_rate)
    subsets.update(task_summary)
    inventory |= task_phones
    phones = [SILENCE_PHONE] + sorted(inventory - {SILENCE_PHONE}, key=str.encode) if inventory else []
    if phones:  # the English phones: base corpus and the English task dirs (slots, qbe)
        atomic_write_text(out / "phones.txt", "".join(f"{p} {i}\n" for i, p in enumerate(phones)))
    speakers = build_speakers(config.num_seen_speakers, config.num_unseen_speakers)
    atomic_write_text(
        out / "speakers.txt",
        "".join(
            f"{s.spk_id} {s.voice_name} pitch={s.pitch} range={s.pitch_range} rate={s.rate} "
            f"{'seen' if s.seen else 'unseen'}\n"
            for s in speakers
        ),  # fmt: skip
    )
    summary = {
        "hours": round(sum(v["hours"] for v in subsets.values()), 4),
        "utterances": len(specs) + sum(v.get("utterances", v.get("turns", 0)) for v in task_summary.values()),
        "speakers": {"seen": config.num_seen_speakers, "unseen": config.num_unseen_speakers},
        "subsets": subsets,
        "noise": noise,  # the noise-only dir (not speech: outside subsets and hours)
        "phone_inventory": phones,
        "num_phones": len(phones),
        "vocabulary_size": len(synth_text.load_vocabulary()) + len(synth_text.FUNCTION_WORDS),
        "words_used": len(vocabulary),
        "keyword_classes": list(synth_text.KEYWORD_CLASSES),
        "num_intents": len(synth_text.all_intents()),
        "config": {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in asdict(config).items()
            if k not in ("out_dir", "num_jobs", "progress")
        },  # fmt: skip
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
