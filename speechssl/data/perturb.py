"""`speechssl data copy`: a data dir copied with new ids (Kaldi's utils/copy_data_dir.sh) and,
optionally, its audio speed- or volume-perturbed (utils/data/perturb_data_dir_speed.sh,
perturb_data_dir_volume.sh).

Kaldi perturbs through `sox ... |` pipes in wav.scp; speechssl reads wav.scp entries as audio files
only (`speechssl.data.datadir`, PIPE_POLICY), so the perturbed audio is written as files under
`OUT/wav/` (one per kept recording, same format, subtype and rate as its source; a format
libsndfile cannot write becomes 16-bit WAV) and wav.scp lists their absolute paths. A plain copy
(no perturbation) writes no audio: its wav.scp lists the source's paths, as Kaldi's does.

- Speed `f` (sox `speed f`): the waveform is resampled by f, so pitch and tempo change together
  and every length is divided by f: the audio (ceil(samples / f) samples), segments, utt2dur,
  reco2dur and phone_ctm times. Utterance, speaker and recording ids take the prefix `sp<f>-`
  (Kaldi's), and utt2uniq maps each new utterance to its source one.
- Volume `v`: samples are multiplied by v. Samples past [-1, 1] (a loud volume, or the ripple of
  resampling) are clipped for integer formats, as sox does, and counted in the result's notes.
  Ids stay the same unless prefixes are given (Kaldi's volume perturbation renames nothing). One
  factor for every recording: Kaldi's perturb_data_dir_volume.sh draws one per recording in
  [0.125, 2] instead. Kaldi's speed script also prefixes the file id inside reco2file_and_channel
  values; ours renames only the keys.
- Features of the old audio (every `<name>.scp` other than wav.scp, e.g. feats.scp, cmvn.scp) are
  not copied when the audio changes, nor is utt2num_frames when its length does.
- Prefixes (`utt_prefix`, `spk_prefix`) replace the speed prefix for their ids; without segments a
  recording is its utterance, with them recordings keep their ids in a plain copy (as Kaldi) and
  take the utterance prefix when their audio is rewritten.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import soundfile as sf
import torch
import torchaudio.functional as AF

from speechssl.data.audio import INTEGER_SUBTYPES, read_audio_file
from speechssl.data.derive import DerivedDir, NewAudio, Rename, check_id_prefix, derive_data_dir, read_source
from speechssl.outputs import check_output

COPY = "data copy"  # the command named in the output marker
AUDIO_DIR = "wav"  # OUT/wav/<recording id>.<wav|flac>
SPEED_RANGE = (0.5, 2.0)
_WRITABLE_FORMATS = {"WAV": ".wav", "WAVEX": ".wav", "FLAC": ".flac"}


@dataclass(frozen=True, kw_only=True)
class CopyConfig:
    """What `copy_data_dir` changes: id prefixes (None: the speed prefix, or none), the speed
    factor (sox `speed`: lengths divided by it) and the volume factor (samples multiplied by it)."""

    utt_prefix: str | None = None
    spk_prefix: str | None = None
    speed: float = 1.0
    volume: float = 1.0

    def __post_init__(self) -> None:
        for name in ("utt_prefix", "spk_prefix"):
            value = getattr(self, name)
            if value is not None:
                check_id_prefix(value, f"--{name.replace('_', '-')}")
        low, high = SPEED_RANGE
        if not (math.isfinite(self.speed) and low <= self.speed <= high):
            raise ValueError(f"speed must be between {low} and {high} (sox speed factor), found {self.speed}")
        if abs(float(self.speed_fraction) - self.speed) > 1e-9:
            raise ValueError(f"speed must have at most 3 decimals (0.9, 1.1, 0.95...), found {self.speed}")
        if not (math.isfinite(self.volume) and self.volume > 0):
            raise ValueError(f"volume must be a factor > 0, found {self.volume}")

    @property
    def speed_fraction(self) -> Fraction:
        """The speed as a ratio of small integers: the resampling is exact (0.9 = 9/10)."""
        return Fraction(self.speed).limit_denominator(1000)

    @property
    def speed_prefix(self) -> str:
        """Kaldi's `sp0.9-`, `sp1.0-`, `sp1.1-`; '' without speed perturbation."""
        if self.speed == 1.0:
            return ""
        text = f"{self.speed:g}"
        return f"sp{text if '.' in text else text + '.0'}-"

    @property
    def perturbs(self) -> bool:
        return self.speed != 1.0 or self.volume != 1.0


def perturb_audio(wav: torch.Tensor, speed: Fraction, volume: float) -> torch.Tensor:
    """(channels, samples) -> (channels, ceil(samples / speed)): resampled as sox `speed` does (the
    signal is taken to be at rate speed * r and resampled to r), then scaled by `volume`."""
    if speed != 1:
        wav = AF.resample(wav, orig_freq=speed.numerator, new_freq=speed.denominator)
    if volume != 1.0:
        wav = wav * volume
    return wav


def _write_perturbed(
    source: str, directory: Path, stem: str, config: CopyConfig, reco: str
) -> tuple[str, float, int]:
    """Perturb audio file `source` into `directory/stem.<wav|flac>`; returns (file name, seconds,
    clipped samples)."""
    wav, info = read_audio_file(source, utt_id=reco)
    wav = perturb_audio(wav, config.speed_fraction, config.volume)
    fmt, subtype = info.format, info.subtype
    if fmt not in _WRITABLE_FORMATS or not sf.check_format(fmt, subtype):
        fmt, subtype = "WAV", "PCM_16"
    clipped = 0
    if subtype in INTEGER_SUBTYPES:
        clipped = int((wav.abs() > 1.0).sum())
        wav = wav.clamp(-1.0, 1.0)
    name = stem + _WRITABLE_FORMATS[fmt]
    sf.write(directory / name, wav.T.numpy(), info.sample_rate, format=fmt, subtype=subtype)
    return name, wav.shape[1] / info.sample_rate, clipped


def _audio_name(reco: str) -> str:
    if "/" in reco or "\0" in reco or reco in (".", ".."):
        raise ValueError(f"recording id '{reco}' cannot name an audio file (it holds '/' or is . or ..)")
    return reco


def copy_data_dir(
    src: str | Path,
    out: str | Path,
    config: CopyConfig = CopyConfig(),
    *,
    nj: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> DerivedDir:
    """Copy data dir `src` to `out` with new ids, its audio perturbed as `config` says (see the
    module docstring), every file carried (`speechssl.data.derive`), and validate the result
    (audio headers included when audio was written). `out` follows the output-path rule; the
    perturbed audio is written inside it, on `nj` threads."""
    if nj < 1:
        raise ValueError(f"--nj must be at least 1, found {nj}")
    check_output(out, COPY, overwrite=overwrite, inputs=(src,))
    files, spk_sorted = read_source(src)
    utt_prefix = config.speed_prefix if config.utt_prefix is None else config.utt_prefix
    spk_prefix = config.speed_prefix if config.spk_prefix is None else config.spk_prefix
    segments = files.has("segments")
    rename = Rename(
        utt_prefix=utt_prefix, spk_prefix=spk_prefix, reco_prefix=utt_prefix if config.perturbs else ""
    )
    drop: dict[str, str] = {}
    if config.perturbs:
        for name in files.listing.tables:
            if name.endswith(".scp") and name != "wav.scp":
                drop[name] = "computed from the audio before perturbation"
    if config.speed != 1.0 and files.has("utt2num_frames"):
        drop["utt2num_frames"] = "frame counts of the audio before speed perturbation"
    audio = None
    clipped: list[int] = []
    if config.perturbs:
        final = Path(out).resolve() / AUDIO_DIR
        wav_scp: dict[str, str] = files.tables["wav.scp"]

        def audio(tmp: Path, recos: list[str]) -> dict[str, NewAudio]:
            from tqdm import tqdm

            (tmp / AUDIO_DIR).mkdir()
            names = {r: _audio_name((rename.reco_prefix if segments else utt_prefix) + r) for r in recos}

            def one(reco: str) -> tuple[str, NewAudio]:
                name, seconds, count = _write_perturbed(
                    wav_scp[reco], tmp / AUDIO_DIR, names[reco], config, reco
                )
                clipped.append(count)
                return reco, NewAudio(str(final / name), f"{AUDIO_DIR}/{name}", seconds)

            with ThreadPoolExecutor(max_workers=nj) as pool:
                done = pool.map(one, recos)
                return dict(tqdm(done, total=len(recos), desc="perturb", unit="file", disable=not progress))

    result = derive_data_dir(
        files,
        out,
        COPY,
        sorted(files.tables["utt2spk"]),
        spk_sorted=spk_sorted,
        rename=rename,
        time_scale=1.0 / config.speed,
        drop=drop,
        audio=audio,
        add_utt2uniq=config.perturbs and utt_prefix != "",
        overwrite=overwrite,
    )
    notes = list(result.notes)
    if sum(clipped):
        notes.append(
            f"{sum(clipped)} perturbed samples past [-1, 1] clipped (the file format holds no more),"
            f" in {sum(c > 0 for c in clipped)} of {len(clipped)} recordings"
        )
    return replace(result, notes=tuple(notes))
