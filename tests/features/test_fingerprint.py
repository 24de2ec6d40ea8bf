"""Issue 12 item 6: a shard is reused only while its inputs and files check out; otherwise it is redone
with a log line saying why, and readers name the damaged file. Killed jobs' temp files are removed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from speechssl.data.audio import load_audio
from speechssl.features.dump import DamagedShardError, FeatureReader, NonFiniteFeaturesError, dump_features
from speechssl.features.mfcc import MfccExtractor, mfcc_features


def dump(data, out, **kw):
    return dump_features(data, MfccExtractor(), out, progress=False, **kw)


def rewrite_wav(path, seconds, seed):
    x = 0.3 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))
    sf.write(path, x.astype(np.float32), 16000, subtype="PCM_16")


def test_audio_changed_under_the_same_id_is_redone_and_the_log_says_which(tiny_data, tmp_path, caplog):
    out = tmp_path / "feats"
    dump(tiny_data, out)
    wav = tiny_data.parent / "wav" / "utt_b.wav"
    rewrite_wav(wav, 0.9, seed=1)  # another recording under the same id and path
    with caplog.at_level("INFO"):
        dump(tiny_data, out)
    assert (
        "redoing shard 0/1" in caplog.text
        and "utterance 'utt_b'" in caplog.text
        and "changed size" in caplog.text
    )
    got = dict(FeatureReader(out))
    np.testing.assert_array_equal(got["utt_b"], mfcc_features(load_audio(wav)).numpy())

    # same size, new content: the mtime tells
    rewrite_wav(wav, 0.9, seed=2)
    stat = wav.stat()
    os.utime(wav, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    caplog.clear()
    with caplog.at_level("INFO"):
        dump(tiny_data, out)
    assert "utterance 'utt_b'" in caplog.text and "modified after the shard was written" in caplog.text
    np.testing.assert_array_equal(dict(FeatureReader(out))["utt_b"], mfcc_features(load_audio(wav)).numpy())


def test_truncated_npy_is_named_by_the_reader_and_redone_by_features(tiny_data, tmp_path, caplog):
    out = tmp_path / "feats"
    dump(tiny_data, out)
    good = dict((u, np.array(f)) for u, f in FeatureReader(out))
    npy = out / "0_1.npy"
    size = npy.stat().st_size
    with open(npy, "r+b") as f:
        f.truncate(size - 1000)  # a copy interrupted, a full disk
    with pytest.raises(DamagedShardError, match=rf"{npy} is truncated \({size - 1000} of {size} bytes\)"):
        FeatureReader(out)
    with caplog.at_level("INFO"):
        dump(tiny_data, out)
    assert "redoing shard 0/1" in caplog.text and "0_1.npy is truncated" in caplog.text
    again = dict(FeatureReader(out))
    assert list(again) == list(good) and all(np.array_equal(again[u], good[u]) for u in good)


@pytest.mark.parametrize("damage", ["swap_lines", "garbage", "truncate"])
def test_corrupt_len_is_named_and_redone(damage, tiny_data, tmp_path, caplog):
    out = tmp_path / "feats"
    dump(tiny_data, out)
    path = out / "0_1.len"
    lines = path.read_text().splitlines()
    if damage == "swap_lines":  # same total: only the checksum tells
        lines[0], lines[1] = lines[1], lines[0]
        path.write_text("\n".join(lines) + "\n")
    elif damage == "garbage":
        path.write_bytes(b"\x00\xff" * 8)
    else:
        path.write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(
        DamagedShardError, match=r"feature shard 0_1 is damaged: .*0_1\.len was changed or damaged"
    ):
        FeatureReader(out)
    with caplog.at_level("INFO"):
        dump(tiny_data, out)
    assert "redoing shard 0/1" in caplog.text and "0_1.len" in caplog.text
    assert FeatureReader(out).lengths[0].tolist() == [int(n) for n in (out / "0_1.len").read_text().split()]


def test_len_disagreeing_with_the_json_is_named_without_a_checksum(tiny_data, tmp_path):
    out = tmp_path / "feats"
    dump(tiny_data, out)
    meta = json.loads((out / "0_1.json").read_text())
    del meta["len_sha256"]  # an older or hand-made shard: the counts still tell
    (out / "0_1.json").write_text(json.dumps(meta))
    (out / "0_1.len").write_text("1\n2\n3\n4\n5\n")
    with pytest.raises(
        DamagedShardError, match=r"0_1\.len \(5 lengths, 15 frames\) and .*0_1\.json .* disagree"
    ):
        FeatureReader(out)


def test_shard_of_an_older_format_is_redone(tiny_data, tmp_path, caplog):
    out = tmp_path / "feats"
    dump(tiny_data, out)
    meta = json.loads((out / "0_1.json").read_text())
    (out / "0_1.json").write_text(
        json.dumps(
            {k: meta[k] for k in ("feature", "feature_dim", "frame_rate", "dtype", "num_utts", "num_frames")}
        )
    )
    FeatureReader(out)  # still readable
    with caplog.at_level("INFO"):
        dump(tiny_data, out)
    assert "recorded no input fingerprints" in caplog.text
    assert json.loads((out / "0_1.json").read_text())["format_version"] == 2


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temp_files_of_killed_jobs_are_removed_live_ones_kept(tiny_data, tmp_path, caplog):
    out = tmp_path / "feats"
    out.mkdir()
    pid = dead_pid()
    dead = [out / f".0_1.raw.{pid}.tmp", out / f".0_1.raw.tmp{pid}", out / f".0_1.{pid}.tmp.len"]
    for p in dead:
        p.write_bytes(b"x" * 100)
    live_job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = out / f".1_2.raw.{live_job.pid}.tmp"  # another shard being written right now
        live.write_bytes(b"y")
        with caplog.at_level("INFO"):
            dump(tiny_data, out)
        assert not any(p.exists() for p in dead) and live.read_bytes() == b"y"
        assert "removed 3 temp file(s) of killed jobs" in caplog.text
    finally:
        live_job.kill()
        live_job.wait()


def test_non_finite_features_are_refused_naming_the_utterance(tiny_data, tmp_path):
    class Broken(MfccExtractor):
        """A bit-flipped checkpoint: NaN for one utterance."""

        name = "upstream:exp/broken/checkpoints/last@abc:layer6"

        def extract(self, wavs):
            feats = super().extract(wavs)
            if any(len(f) == 51 for f in feats):  # utt_b (1.03 s)
                feats[[len(f) for f in feats].index(51)][3, 0] = np.nan
            return feats

    out = tmp_path / "feats"
    with pytest.raises(
        NonFiniteFeaturesError,
        match=r"utterance 'utt_b': upstream:exp/broken/checkpoints/last@abc"
        r":layer6 gave NaN or infinite features \(frame 3\)",
    ):
        dump_features(tiny_data, Broken(), out, progress=False)
    assert not (out / "0_1.json").exists() and not (out / "0_1.npy").exists()


def test_float16_overflow_is_refused(tiny_data, tmp_path):
    class Loud(MfccExtractor):
        def extract(self, wavs):
            return [f * 1e5 for f in super().extract(wavs)]

    with pytest.raises(
        NonFiniteFeaturesError, match=r"utterance 'utt_a': .* exceed the float16 range.*--dtype float32"
    ):
        dump_features(tiny_data, Loud(), tmp_path / "f", dtype="float16", progress=False)


def test_long_recordings_stream_in_chunks_with_the_same_features(data_dir_factory, tmp_path):
    """A recording longer than chunk_seconds is read and computed chunk by chunk; same frames."""
    data = data_dir_factory({"long": 2.345, "short": 0.25})  # 0.25 s: read whole
    reads = []

    class Counting(MfccExtractor):
        def extract_stream(self, read, num_samples):
            def counted(a, b):
                reads.append(b - a)
                return read(a, b)

            return super().extract_stream(counted, num_samples)

    dump_features(data, Counting(chunk_seconds=0.3), tmp_path / "f", progress=False)
    got = dict(FeatureReader(tmp_path / "f"))
    assert len(reads) == 8 and max(reads) <= 0.3 * 16000 + 2000  # a chunk + 8 frames of delta context
    for utt in ("long", "short"):
        whole = mfcc_features(load_audio(tmp_path / "wav" / f"{utt}.wav")).numpy()
        assert got[utt].shape == whole.shape
        np.testing.assert_allclose(got[utt], whole, rtol=0, atol=1e-4, err_msg=utt)


def test_streamed_segments_are_cut_from_their_recording(tmp_path):
    from speechssl.testing.datadirs import make_data_dir

    data = make_data_dir(tmp_path, segments=True)
    dump_features(data.path, MfccExtractor(chunk_seconds=0.05), tmp_path / "feats", progress=False)
    got = dict(FeatureReader(tmp_path / "feats"))
    for utt in data.utterances():
        whole = mfcc_features(load_audio(utt.path, start=utt.start, end=utt.end)).numpy()
        np.testing.assert_allclose(got[utt.utt_id], whole, rtol=0, atol=1e-4, err_msg=utt.utt_id)


def test_in_memory_long_waveform_is_chunked_too():
    torch.manual_seed(0)
    wav = torch.randn(16000) * 0.1
    (chunked,) = MfccExtractor(chunk_seconds=0.1).extract([wav])
    np.testing.assert_allclose(chunked, mfcc_features(wav).numpy(), rtol=0, atol=1e-4)
