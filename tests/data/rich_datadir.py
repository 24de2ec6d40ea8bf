"""A data dir holding every kind of file the data tools carry, for the subset / copy / phone_ctm tests."""

from __future__ import annotations

from pathlib import Path

from speechssl.data.alignments import PhoneSegment, format_ctm
from speechssl.data.kaldi import read_table
from speechssl.data.layout import list_data_dir
from speechssl.testing.datadirs import make_data_dir


def make_rich_dir(
    root: Path, *, segments: bool = False, num_speakers: int = 3, utts_per_speaker: int = 3
) -> Path:
    """make_data_dir plus phones, intent, utt2lang, spk2gender, reco2file_and_channel, feats.scp,
    cmvn.scp, phone_ctm (sil + 'a' up to utt2dur), trials, frame_shift, num_jobs, NOTES and a
    units subdirectory."""
    d = make_data_dir(
        root, num_speakers=num_speakers, utts_per_speaker=utts_per_speaker, segments=segments
    ).path
    utt2dur = {u: float(v) for u, v in read_table(d / "utt2dur").items()}
    utts = sorted(utt2dur)
    speakers = sorted({u.split("-")[0] for u in utts})
    recos = sorted(read_table(d / "wav.scp"))
    (d / "phones").write_text("".join(f"{u} a b\n" for u in utts))
    (d / "intent").write_text("".join(f"{u} intent{i % 2}\n" for i, u in enumerate(utts)))
    (d / "utt2lang").write_text("".join(f"{u} en\n" for u in utts))
    (d / "feats.scp").write_text("".join(f"{u} feats.ark:{i}\n" for i, u in enumerate(utts)))
    (d / "spk2gender").write_text("".join(f"{s} {'mf'[i % 2]}\n" for i, s in enumerate(speakers)))
    (d / "cmvn.scp").write_text("".join(f"{s} cmvn.ark:{i}\n" for i, s in enumerate(speakers)))
    (d / "reco2file_and_channel").write_text("".join(f"{r} {r} A\n" for r in recos))
    ctm = ""
    for u in utts:
        ctm += format_ctm(
            u, [PhoneSegment(0.0, 0.2, "sil"), PhoneSegment(0.2, round(utt2dur[u] - 0.2, 4), "a")]
        )
    (d / "phone_ctm").write_text(ctm)
    trials = [(a, b) for i, a in enumerate(utts) for b in utts[i + 1 :]]
    (d / "trials").write_text(
        "".join(
            f"{a} {b} {'target' if a.split('-')[0] == b.split('-')[0] else 'nontarget'}\n" for a, b in trials
        )
    )
    (d / "frame_shift").write_text("0.01\n")
    (d / "num_jobs").write_text("4\n")
    (d / "NOTES").write_text("made for the tests\n")
    (d / "units_k5").mkdir()
    (d / "units_k5" / "labels").write_text("".join(f"{u} 1 2 3\n" for u in utts))
    return d


def tables_of(path: Path) -> dict[str, dict[str, str]]:
    """Every table of a data dir by the table rule, as {name: {key: value}}."""
    return {name: read_table(path / name) for name in list_data_dir(path).tables}


def ctm_lines(path: Path) -> list[list[str]]:
    return [line.split() for line in (path / "phone_ctm").read_text().splitlines() if line.strip()]


def trials_lines(path: Path) -> list[list[str]]:
    return [line.split() for line in (path / "trials").read_text().splitlines() if line.strip()]
