"""Sharded dumping: file layout, sharding, skipping finished shards, reading back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from speechssl.data.audio import load_audio
from speechssl.features.dump import FeatureReader, dump_features, shard_range, write_shard
from speechssl.features.mfcc import MfccExtractor, mfcc_features


def test_shard_ranges_cover_everything_once():
    for n in (0, 1, 5, 7):
        for nshard in (1, 2, 3, 8):
            ranges = [shard_range(n, nshard, r) for r in range(nshard)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    with pytest.raises(ValueError, match=r"rank must be in \[0, 1\], found 2"):
        shard_range(5, 2, 2)


def test_dump_shards_and_read_back(tiny_data, tmp_path):
    out = tmp_path / "feats"
    for rank in range(2):
        dump_features(tiny_data, MfccExtractor(), out, nshard=2, rank=rank, progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{r}_2.{e}" for r in range(2) for e in ("npy", "len", "ids", "json")
    )
    assert (out / "0_2.ids").read_text().split() == ["utt_a", "utt_b"]
    assert (out / "1_2.ids").read_text().split() == ["utt_c", "utt_d", "utt_e"]
    meta = json.loads((out / "1_2.json").read_text())
    assert (meta["feature"], meta["feature_dim"], meta["frame_rate"], meta["num_utts"]) == (
        "mfcc",
        39,
        50.0,
        3,
    )

    reader = FeatureReader(out)
    assert reader.utt_ids() == ["utt_a", "utt_b", "utt_c", "utt_d", "utt_e"]
    got = dict(iter(reader))
    wav = load_audio(tiny_data.parent / "wav" / "utt_b.wav")
    np.testing.assert_array_equal(got["utt_b"], mfcc_features(wav).numpy())
    assert got["utt_a"].shape == ((8000 - 400) // 320 + 1, 39)
    assert reader.num_frames == sum(len(f) for f in got.values())
    all_frames = reader.gather(reader.select(1.0))
    np.testing.assert_array_equal(all_frames, np.concatenate(list(got.values())))


def test_finished_shard_is_skipped_and_stale_one_redone(tiny_data, tmp_path, caplog):
    out = tmp_path / "feats"
    dump_features(tiny_data, MfccExtractor(), out, progress=False)
    npy = out / "0_1.npy"
    stamp = npy.stat().st_mtime_ns
    with caplog.at_level("INFO"):
        dump_features(tiny_data, MfccExtractor(), out, progress=False)
    assert "already dumped" in caplog.text and npy.stat().st_mtime_ns == stamp
    # float16 is another dump: redone
    dump_features(tiny_data, MfccExtractor(), out, dtype="float16", progress=False)
    assert np.load(npy).dtype == np.float16


def test_unfinished_shard_is_not_read(tiny_data, tmp_path):
    out = tmp_path / "feats"
    dump_features(tiny_data, MfccExtractor(), out, nshard=2, rank=0, progress=False)
    with pytest.raises(FileNotFoundError, match=r"shard\(s\) 1_2 not finished"):
        FeatureReader(out)


class Boom:
    """An extractor that dies on the third utterance, like a killed job."""

    name, feature_dim, frame_rate, sample_rate = "boom", 2, 50.0, 16000

    def __init__(self):
        self.calls = 0

    def extract(self, wavs):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("killed")
        return [np.zeros((3, 2), np.float32) for _ in wavs]


def test_a_crash_leaves_no_finished_marker_and_no_temp_files(tiny_data, tmp_path):
    out = tmp_path / "feats"
    with pytest.raises(RuntimeError, match="killed"):
        dump_features(tiny_data, Boom(), out, batch_seconds=0.01, progress=False)
    assert list(out.iterdir()) == []


def test_batches_respect_the_padded_budget(tiny_data, tmp_path):
    sizes = []

    class Recorder(MfccExtractor):
        def extract(self, wavs):
            sizes.append(len(wavs) * max(w.numel() for w in wavs))
            return super().extract(wavs)

    dump_features(tiny_data, Recorder(), tmp_path / "f", batch_seconds=1.6, progress=False)
    # a | b | c+d | e: each call within 1.6 s of padded audio
    assert len(sizes) == 4 and all(s <= 1.6 * 16000 for s in sizes)


def test_extractor_shape_errors_name_the_utterance(tiny_data, tmp_path):
    class Wrong(MfccExtractor):
        def extract(self, wavs):
            return [torch.zeros(4, 5).numpy() for _ in wavs]

    with pytest.raises(
        ValueError, match=r"utterance 'utt_a': extractor returned shape \(4, 5\), expected \(frames, 39\)"
    ):
        dump_features(tiny_data, Wrong(), tmp_path / "f", progress=False)


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FeatureReader(tmp_path / "missing")
    write_shard(tmp_path / "f", {"a": np.zeros((2, 3))}, feature="x", frame_rate=50.0, rank=0, nshard=1)
    write_shard(tmp_path / "f", {"b": np.zeros((2, 3))}, feature="x", frame_rate=50.0, rank=0, nshard=2)
    with pytest.raises(ValueError, match=r"mixes dumps with nshard \[1, 2\]"):
        FeatureReader(tmp_path / "f")


def test_more_shards_than_utterances(tiny_data, tmp_path):
    out = tmp_path / "feats"
    for rank in range(7):
        dump_features(tiny_data, MfccExtractor(), out, nshard=7, rank=rank, progress=False)
    reader = FeatureReader(out)
    assert reader.num_utts == 5 and [len(i) for i in reader.ids].count(0) == 2
    assert reader.gather(reader.select(1.0)).shape == (reader.num_frames, 39)


def test_segments_are_cut_from_their_recording(tmp_path):
    from speechssl.testing.datadirs import make_data_dir

    data = make_data_dir(tmp_path, segments=True)
    dump_features(data.path, MfccExtractor(), tmp_path / "feats", progress=False)
    got = dict(iter(FeatureReader(tmp_path / "feats")))
    assert list(got) == data.utt_ids()
    for utt in data.utterances():
        wav = load_audio(utt.path, start=utt.start, end=utt.end)
        np.testing.assert_array_equal(got[utt.utt_id], mfcc_features(wav).numpy(), err_msg=utt.utt_id)


def test_too_short_utterance_is_named(data_dir_factory, tmp_path):
    data = data_dir_factory({"ok1": 0.5, "short": 0.02, "ok2": 0.4})
    with pytest.raises(
        ValueError, match=r"utterance 'short': waveform of 320 samples is shorter than one 25.0 ms window"
    ):
        dump_features(data, MfccExtractor(), tmp_path / "f", progress=False)
    assert not (tmp_path / "f" / "0_1.json").exists()
