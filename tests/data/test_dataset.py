"""AudioDataset over tiny Kaldi data dirs, targets, skipping, cropping, collation."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from speechssl.data.audio import AudioError
from speechssl.data.datadir import write_data_dir
from speechssl.data.dataset import AudioDataset, Batch, ClassIndex, collate_audio
from speechssl.data.sampler import DurationBucketSampler
from speechssl.units.labels import parse_units

SR = 16000


def tone(seconds: float, hz: float = 220.0, sr: int = SR) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return 0.3 * np.sin(2 * np.pi * hz * t)


def make_dir(tmp_path: Path, lengths: dict[str, float], *, utt2dur: bool = False, **extra) -> Path:
    """A data dir whose utterance `u` is a tone of lengths[u] seconds in its own flac."""
    wav_scp = {}
    for utt, seconds in lengths.items():
        path = tmp_path / "audio" / f"{utt}.flac"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, tone(seconds), SR, subtype="PCM_16")
        wav_scp[utt] = str(path)
    durs = dict(lengths) if utt2dur else None
    write_data_dir(tmp_path / "data", wav_scp, utt2dur=durs, **extra)
    return tmp_path / "data"


def test_items_carry_id_wav_and_converted_targets(tmp_path):
    data = make_dir(tmp_path, {"a1": 0.5, "a2": 0.25, "a3": 1.0})
    units = {"a1": "1 2 3", "a2": "4 5", "a3": "6"}
    ds = AudioDataset(data, targets={"units": units}, target_transforms={"units": parse_units})
    assert len(ds) == 3 and ds.utt_ids() == ["a1", "a2", "a3"]
    assert ds.durations == pytest.approx([0.5, 0.25, 1.0])
    item = ds[1]
    assert item["utt_id"] == "a2" and item["wav"].shape == (4000,) and item["wav"].dtype == torch.float32
    assert torch.equal(item["units"], torch.tensor([4, 5]))


def test_targets_from_file_and_raw_strings(tmp_path):
    data = make_dir(tmp_path, {"a1": 0.1, "a2": 0.1}, text={"a1": "HELLO WORLD", "a2": "HI"})
    labels = tmp_path / "labels"
    labels.write_text("a1 7 7\na2 8\n")
    ds = AudioDataset(data, targets={"text": data / "text", "units": labels})
    assert ds[0]["text"] == "HELLO WORLD" and ds[0]["units"] == "7 7"


def test_target_id_mismatch_names_first_ids_and_file(tmp_path):
    data = make_dir(tmp_path, {"a1": 0.1, "a2": 0.1, "a3": 0.1})
    labels = tmp_path / "km.labels"
    labels.write_text("a1 1\na3 2\nzz 3\n")
    with pytest.raises(
        ValueError,
        match=rf"target 'units' \({labels}\): ids do not match the data dir: "
        r"1 utterance\(s\) of .* have no entry "
        r"\(first: 'a2'\); 1 id\(s\) are not utterances of .* \(first: 'zz'\)",
    ):
        AudioDataset(data, targets={"units": labels})
    with pytest.raises(ValueError, match=r"target 'spk': .*have no entry \(first: 'a1', 'a2', 'a3'\)"):
        AudioDataset(data, targets={"spk": {}})
    with pytest.raises(ValueError, match=r"target_transforms for unknown target\(s\) \['units'\]"):
        AudioDataset(data, target_transforms={"units": parse_units})


def test_bad_target_value_names_utterance(tmp_path):
    data = make_dir(tmp_path, {"a1": 0.1})
    ds = AudioDataset(data, targets={"units": {"a1": "1 x 3"}}, target_transforms={"units": parse_units})
    with pytest.raises(ValueError, match="utterance 'a1': target 'units': expected integer units, found 'x'"):
        ds[0]


def test_segments_read_their_span(tmp_path):
    rec = tmp_path / "rec.wav"
    x = (np.arange(SR * 2) % 20000 - 10000).astype(np.int16)
    sf.write(rec, x, SR, subtype="PCM_16")
    data = tmp_path / "data"
    write_data_dir(data, {"r1": str(rec)}, segments={"r1-s1": ("r1", 0.5, 0.75), "r1-s2": ("r1", 1.0, 2.0)})
    ds = AudioDataset(data)
    assert ds.durations == pytest.approx([0.25, 1.0])
    assert torch.equal(ds[0]["wav"], torch.from_numpy(x[8000:12000] / 32768).float())
    assert len(ds[1]["wav"]) == SR


def test_durations_from_headers_without_utt2dur(tmp_path, monkeypatch):
    data = make_dir(tmp_path, {"a1": 0.3, "a2": 0.6}, utt2dur=True)
    assert AudioDataset(data).durations == pytest.approx([0.3, 0.6])
    (data / "utt2dur").unlink()
    assert AudioDataset(data).durations == pytest.approx([0.3, 0.6])


def make_bad_dir(tmp_path: Path) -> Path:
    data = make_dir(tmp_path, {"good1": 0.2, "good2": 0.3, "corrupt": 0.2, "empty": 0.2, "missing": 0.2})
    (tmp_path / "audio" / "corrupt.flac").write_bytes(b"fLaC but not really" * 20)
    # an empty FLAC is unreadable to libsndfile; an empty WAV has a valid header and 0 samples
    sf.write(tmp_path / "audio" / "empty.flac", np.zeros(0), SR, format="WAV", subtype="PCM_16")
    (tmp_path / "audio" / "missing.flac").unlink()
    return data


def test_bad_utterances_raise_without_skip_bad(tmp_path):
    data = make_bad_dir(tmp_path)
    with pytest.raises(AudioError, match=r"utterance 'corrupt' \(.*corrupt.flac\): cannot read audio header"):
        AudioDataset(data)


def test_skip_bad_counts_and_lists(tmp_path, caplog):
    data = make_bad_dir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="speechssl.data.dataset"):
        ds = AudioDataset(data, skip_bad=True)
    assert ds.utt_ids() == ["good1", "good2"]
    assert ds.num_skipped == 3
    reasons = dict(ds.skipped)
    assert set(reasons) == {"corrupt", "empty", "missing"}
    assert "cannot read audio header" in reasons["corrupt"]
    assert "file holds no samples" in reasons["empty"]
    assert "file not found" in reasons["missing"]
    assert "skipped 3 bad utterance(s)" in caplog.text and "missing" in caplog.text


def test_skip_bad_at_read_time_returns_none_and_collate_drops_it(tmp_path):
    data = make_dir(tmp_path, {"a1": 0.2, "a2": 0.3}, utt2dur=True)
    ds = AudioDataset(data, skip_bad=True)  # utt2dur present: headers are still checked
    (tmp_path / "audio" / "a2.flac").unlink()  # the file disappears after construction
    assert ds[1] is None and ds.num_skipped == 1 and ds.skipped[0][0] == "a2"
    batch = collate_audio([ds[0], ds[1]])
    assert batch.utt_ids == ["a1"] and batch.wavs.shape == (1, 3200)
    empty = collate_audio([None])
    assert len(empty) == 0 and empty.wavs.shape == (0, 0)


def test_segment_outside_file_is_skipped(tmp_path):
    rec = tmp_path / "rec.wav"
    sf.write(rec, tone(1.0), SR, subtype="PCM_16")
    data = tmp_path / "data"
    write_data_dir(data, {"r1": str(rec)}, segments={"r1-a": ("r1", 0.0, 0.5), "r1-b": ("r1", 2.0, 3.0)})
    ds = AudioDataset(data)  # segments give durations: headers are read lazily
    with pytest.raises(AudioError, match=rf"utterance 'r1-b' \({rec}\): segment starts at 2.000 s"):
        ds[1]
    ds = AudioDataset(data, skip_bad=True)
    assert ds.utt_ids() == ["r1-a"] and ds.skipped[0][0] == "r1-b"


def test_zero_duration_is_bad(tmp_path):
    data = make_dir(tmp_path, {"a1": 0.2, "a2": 0.3})
    (data / "utt2dur").write_text("a1 0.2\na2 0\n")
    with pytest.raises(AudioError, match=r"utterance 'a2' .*duration is 0.0 s"):
        AudioDataset(data)


def test_max_seconds_crops_start_and_random(tmp_path):
    data = make_dir(tmp_path, {"long": 1.0, "short": 0.25})
    ds = AudioDataset(data, max_seconds=0.5)
    assert ds.durations == pytest.approx([0.5, 0.25]) and ds.full_durations == pytest.approx([1.0, 0.25])
    full = AudioDataset(data)[0]["wav"]
    assert torch.equal(ds[0]["wav"], full[:8000])
    assert len(ds[1]["wav"]) == 4000
    rnd = AudioDataset(data, max_seconds=0.5, crop="random", seed=1)
    windows = []
    for epoch in range(3):
        rnd.set_epoch(epoch)
        w = rnd[0]["wav"]
        assert w.shape == (8000,)
        offset = int(torch.argmin((full.unfold(0, 8000, 1) - w).abs().sum(1)))
        windows.append(offset)
        assert torch.allclose(full[offset : offset + 8000], w, atol=1e-6)
    assert len(set(windows)) > 1
    rnd.set_epoch(0)
    assert torch.equal(rnd[0]["wav"], AudioDataset(data, max_seconds=0.5, crop="random", seed=1)[0]["wav"])


def test_class_index():
    classes = ClassIndex.from_values({"u1": "spkB", "u2": "spkA", "u3": "spkB"})
    assert classes.names == ["spkA", "spkB"] and len(classes) == 2
    assert classes("spkB").item() == 1 and classes("spkB").dim() == 0
    with pytest.raises(ValueError, match="unknown class 'spkC'"):
        classes("spkC")


def test_collate_pads_audio_and_targets():
    items = [
        {
            "utt_id": "a",
            "wav": torch.ones(5),
            "units": torch.tensor([1, 2]),
            "spk": torch.tensor(0),
            "text": "A",
        },
        {
            "utt_id": "b",
            "wav": torch.ones(3),
            "units": torch.tensor([3, 4, 5]),
            "spk": torch.tensor(1),
            "text": "B",
        },
    ]
    batch = collate_audio(items)
    assert isinstance(batch, Batch) and batch.utt_ids == ["a", "b"] and len(batch) == 2
    assert batch.wavs.shape == (2, 5) and batch.wavs.dtype == torch.float32
    assert batch.wav_lens.tolist() == [5, 3] and batch.wav_lens.dtype == torch.long
    assert batch.wavs[1, 3:].abs().sum() == 0 and batch.wavs[1, :3].sum() == 3
    assert batch.targets["units"].tolist() == [[1, 2, -100], [3, 4, 5]]
    assert batch.target_lens["units"].tolist() == [2, 3]
    assert batch.targets["spk"].tolist() == [0, 1] and "spk" not in batch.target_lens
    assert batch.targets["text"] == ["A", "B"]
    moved = batch.to("cpu")
    assert torch.equal(moved.wavs, batch.wavs)
    assert collate_audio(items, target_pad_value=0).targets["units"][0, 2] == 0


def test_dataloader_with_sampler_end_to_end(tmp_path):
    lengths = {f"u{k:02d}": 0.1 + 0.05 * (k % 7) for k in range(20)}
    data = make_dir(tmp_path, lengths)
    units = {u: " ".join(["1"] * int(s * 50)) for u, s in lengths.items()}
    ds = AudioDataset(data, targets={"units": units}, target_transforms={"units": parse_units})
    sampler = DurationBucketSampler(ds.durations, max_batch_seconds=1.0, seed=0)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=partial(collate_audio), num_workers=0)
    seen = []
    for batch in loader:
        assert batch.wavs.shape[0] * batch.wavs.shape[1] <= 1.0 * SR + 1
        assert torch.equal(batch.wav_lens, torch.tensor([round(lengths[u] * SR) for u in batch.utt_ids]))
        seen += batch.utt_ids
    assert sorted(seen) == sorted(lengths)


def test_random_crop_keeps_frame_labels_aligned(tmp_path):
    data = make_dir(tmp_path, {"long": 1.0, "short": 0.2})
    units = {"long": " ".join(str(k) for k in range(50)), "short": "0 1 2 3 4 5 6 7 8 9"}
    full = AudioDataset(data)[0]["wav"]
    ds = AudioDataset(
        data,
        targets={"units": units, "spk": {"long": "A", "short": "B"}},
        target_transforms={"units": parse_units},
        max_seconds=0.5,
        crop="random",
        label_rates={"units": 50},
        seed=3,
    )
    firsts = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        item = ds[0]
        labels = item["units"]
        first = int(labels[0])
        assert labels.tolist() == list(range(first, first + 25))  # 0.5 s at 50 Hz
        assert torch.equal(item["wav"], full[first * 320 : first * 320 + 8000])  # same window
        assert item["spk"] == "A"  # utterance-level target untouched
        firsts.add(first)
    assert len(firsts) > 1
    assert ds[1]["units"].tolist() == list(range(10))  # not cropped
    with pytest.raises(ValueError, match=r"label_rates for unknown target\(s\) \['km'\]"):
        AudioDataset(data, targets={"units": units}, label_rates={"km": 50})
