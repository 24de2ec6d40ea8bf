"""Issue 12: k-means never reads a damaged or non-finite shard silently, labels and dict.txt are one
unit, and features / kmeans / units score never write over what they did not write."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from speechssl.errors import WriteFailedError
from speechssl.features.dump import FeatureReader, NonFiniteFeaturesError, write_shard
from speechssl.testing.cli import dump_features, kmeans_fit, kmeans_label, run_cli
from speechssl.units.kmeans import KMeansModel, fit_kmeans, label

KM = ["--n-init", "1", "--batch-size", "256", "--max-iter", "5"]


def two_blobs(root: Path) -> Path:
    rng = np.random.default_rng(0)
    feats = {
        f"utt{i}": (rng.standard_normal((20, 3)) + (5 if i % 2 else -5)).astype(np.float32) for i in range(6)
    }
    write_shard(root / "feats", feats, feature="toy", frame_rate=50.0)
    return root / "feats"


def poison(feats: Path, utt: str, value: float = np.nan) -> None:
    """A NaN written into one utterance of a finished shard (an old dump of a broken model)."""
    reader = FeatureReader(feats)
    i = reader.ids[0].index(utt)
    start = int(reader.lengths[0][:i].sum())
    arr = np.load(feats / "0_1.npy", mmap_mode="r+")
    arr[start + 2, 1] = value
    arr.flush()


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_features_fail_fit_and_label_naming_shard_and_utterance(tmp_path, capsys, value):
    feats = two_blobs(tmp_path)
    km = fit_kmeans(FeatureReader(feats), 2, n_init=1, out_dir=tmp_path / "km")
    label(FeatureReader(feats), km, tmp_path / "units", progress=False)
    before = {n: (tmp_path / "units" / n).read_text() for n in ("labels", "dict.txt")}
    poison(feats, "utt3", value)
    where = (
        rf"{feats / '0_1.npy'}: utterance 'utt3' holds NaN or infinite features "
        r"\(1 of its 20 frames, first at frame 2\)"
    )
    with pytest.raises(NonFiniteFeaturesError, match=where):
        fit_kmeans(FeatureReader(feats), 2, n_init=1)
    with pytest.raises(NonFiniteFeaturesError, match=where):
        label(FeatureReader(feats), km, tmp_path / "units", progress=False)
    # never unit 0 for a NaN frame: the earlier labels are still there, unchanged
    assert {n: (tmp_path / "units" / n).read_text() for n in ("labels", "dict.txt")} == before
    capsys.readouterr()
    assert kmeans_label(feats, tmp_path / "km", tmp_path / "units") == 1
    err = capsys.readouterr().err
    last = err.splitlines()[-1]  # above it: the progress bar
    assert (
        last.startswith("speechssl kmeans: error: ")
        and "0_1.npy: utterance 'utt3' holds NaN or infinite" in last
    )
    assert kmeans_fit(feats, "2", tmp_path / "km2", *KM) == 1
    assert "utterance 'utt3'" in capsys.readouterr().err


def test_kmeans_on_a_damaged_shard_names_the_file(tmp_path, capsys):
    feats = two_blobs(tmp_path)
    with open(feats / "0_1.npy", "r+b") as f:
        f.truncate(200)
    assert kmeans_fit(feats, "2", tmp_path / "km", *KM) == 1
    err = capsys.readouterr().err
    assert f"{feats / '0_1.npy'} is truncated (200 of" in err and "re-run `speechssl features" in err
    assert not (tmp_path / "km").exists()


def test_labels_and_dict_are_written_as_one_unit(tmp_path, monkeypatch):
    feats = two_blobs(tmp_path)
    km2 = fit_kmeans(FeatureReader(feats), 2, n_init=1)
    km3 = fit_kmeans(FeatureReader(feats), 3, n_init=1)
    out = tmp_path / "units"
    label(FeatureReader(feats), km2, out, progress=False)
    first = {n: (out / n).read_text() for n in ("labels", "dict.txt")}
    assert len(first["dict.txt"].splitlines()) == 2

    # the disk fills up while the second run writes dict.txt: both old files stay, no temp is left
    real_write_text = Path.write_text

    def full_disk(self, *args, **kwargs):
        if ".dict." in self.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(WriteFailedError, match=r"cannot write .*dict\.txt: No space left on device"):
        label(FeatureReader(feats), km3, out, progress=False)
    monkeypatch.undo()
    assert {n: (out / n).read_text() for n in ("labels", "dict.txt")} == first
    assert sorted(p.name for p in out.iterdir()) == ["dict.txt", "labels"]

    # killed between the two renames: new labels without a dict.txt, never the old dict.txt beside them
    import speechssl.io as sio

    real_replace = sio.os.replace
    calls = []

    def killed_after_first(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the kill
        return real_replace(src, dst)

    monkeypatch.setattr(sio.os, "replace", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        label(FeatureReader(feats), km3, out, progress=False)
    monkeypatch.undo()
    assert Path(calls[0]).name == "labels" and not (out / "dict.txt").exists()
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()
    stale = out / f".dict.{killed.pid}.tmp.txt"  # what a kill -9 during the write leaves
    stale.write_text("0 1\n")
    label(FeatureReader(feats), km3, out, progress=False)  # the re-run completes the pair
    assert not stale.exists() and sorted(p.name for p in out.iterdir()) == ["dict.txt", "labels"]
    counts = [int(line.split()[1]) for line in (out / "dict.txt").read_text().splitlines()]
    units = [int(u) for line in (out / "labels").read_text().splitlines() for u in line.split()[1:]]
    assert counts == np.bincount(units, minlength=3).tolist()


def test_centroids_and_params_are_one_pair(tmp_path):
    feats = two_blobs(tmp_path)
    fit_kmeans(FeatureReader(feats), 2, n_init=1, out_dir=tmp_path / "km")
    assert KMeansModel.load(tmp_path / "km").params["num_clusters"] == 2
    np.save(tmp_path / "km" / "centroids.npy", np.full((2, 3), np.nan, np.float32))
    with pytest.raises(NonFiniteFeaturesError, match=r"centroids\.npy: centroids hold NaN"):
        KMeansModel.load(tmp_path / "km")


def test_outputs_never_overwrite_what_the_command_did_not_write(tmp_path, capsys):
    feats = two_blobs(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for argv in (
        ["kmeans", "fit", "--feats", str(feats), "--num-clusters", "2", "--out", str(mine), *KM],
        ["kmeans", "label", "--feats", str(feats), "--model", str(tmp_path / "km"), "--out", str(mine)],
    ):
        if argv[1] == "label":
            assert kmeans_fit(feats, "2", tmp_path / "km", *KM) == 0
        capsys.readouterr()
        assert run_cli(*argv) == 1
        err = capsys.readouterr().err
        assert f"--out {mine} already holds files" in err and "notes.txt" in err and "--overwrite" in err
    assert (
        sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
        and (mine / "notes.txt").read_text() == "keep me"
    )

    # an input is refused even with --overwrite
    assert kmeans_label(feats, tmp_path / "km", feats, "--overwrite") == 1
    assert "is an input of this command" in capsys.readouterr().err
    assert sorted(p.name for p in feats.iterdir()) == ["0_1.ids", "0_1.json", "0_1.len", "0_1.npy"]

    # its own output is re-written; --overwrite writes beside a user's file and keeps it
    for _ in range(2):
        assert kmeans_label(feats, tmp_path / "km", tmp_path / "units") == 0
    assert kmeans_fit(feats, "2", tmp_path / "km", *KM) == 0
    assert kmeans_fit(feats, "2", mine, *KM, "--overwrite") == 0
    assert (mine / "notes.txt").read_text() == "keep me" and (mine / "centroids.npy").is_file()


def test_features_out_rule(phone_corpus, tmp_path, capsys):
    data, _ = phone_corpus
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "0_1.npy.bak").write_text("precious")
    assert dump_features(data, theirs) == 1
    assert "already holds files" in capsys.readouterr().err
    assert [p.name for p in theirs.iterdir()] == ["0_1.npy.bak"]
    assert dump_features(data, data) == 1
    assert "is an input of this command" in capsys.readouterr().err

    # a dump written before output markers (only shard files): reused and marked, not refused
    old = tmp_path / "old"
    assert dump_features(data, old) == 0
    (old / ".speechssl_output").unlink()
    assert dump_features(data, old) == 0
    assert json.loads((old / ".speechssl_output").read_text())["command"] == "features"


def test_parallel_shard_jobs_share_one_out(phone_corpus, tmp_path):
    """The recipe starts all shards of a dump at once into one new dir."""
    data, _ = phone_corpus
    out = tmp_path / "feats"
    jobs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "speechssl",
                "features",
                "--data",
                str(data),
                "--feature",
                "mfcc",
                "--out",
                str(out),
                "--nshard",
                "2",
                "--rank",
                str(r),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    results = [job.communicate(timeout=120) for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], results
    assert FeatureReader(out).num_utts == 6


def test_units_score_out_and_plot_rule(phone_corpus, tmp_path, capsys):
    data, ctm = phone_corpus
    feats, km, units = tmp_path / "feats", tmp_path / "km", tmp_path / "units"
    assert dump_features(data, feats) == 0
    assert kmeans_fit(feats, "3", km, *KM) == 0
    assert kmeans_label(feats, km, units) == 0
    report = tmp_path / "report.json"
    report.write_text("my own report")
    score = ["units", "score", "--labels", str(units / "labels"), "--alignments", str(ctm)]
    capsys.readouterr()
    assert run_cli(*score, "--out", report) == 1
    assert (
        f"--out {report} already exists" in capsys.readouterr().err and report.read_text() == "my own report"
    )
    same = tmp_path / "same.json"
    assert run_cli(*score, "--out", same, "--plot", same) == 1
    assert "--out and --plot are the same file" in capsys.readouterr().err and not same.exists()
    plot = tmp_path / "mine.png"
    plot.write_bytes(b"not ours")
    assert run_cli(*score, "--out", tmp_path / "s.json", "--plot", plot) == 1
    assert plot.read_bytes() == b"not ours" and not (tmp_path / "s.json").exists()
    assert run_cli(*score, "--out", ctm) == 1
    assert "is an input of this command" in capsys.readouterr().err

    # its own earlier files are replaced on a re-run (the recipe re-runs this stage)
    for _ in range(2):
        assert run_cli(*score, "--out", tmp_path / "s.json", "--plot", tmp_path / "s.png") == 0
    assert run_cli(*score, "--out", report, "--overwrite") == 0
    assert json.loads(report.read_text())["results"][0]["name"] == "units"


def test_a_damaged_model_is_one_line_naming_its_file(tmp_path, capsys):
    feats = two_blobs(tmp_path)
    fit_kmeans(FeatureReader(feats), 2, n_init=1, out_dir=tmp_path / "km")
    good = (tmp_path / "km" / "centroids.npy").read_bytes()
    damages = {
        "empty": lambda km: (km / "centroids.npy").write_bytes(b""),
        "truncated": lambda km: (km / "centroids.npy").write_bytes(good[:100]),
        "strings": lambda km: np.save(km / "centroids.npy", np.array([["a"] * 3] * 2)),
        "no clusters": lambda km: np.save(km / "centroids.npy", np.zeros((0, 3), np.float32)),
        "bad json": lambda km: (km / "kmeans.json").write_text("{bad"),
        # write_pair renames centroids.npy first: a fit killed between the renames
        "no kmeans.json": lambda km: (km / "kmeans.json").unlink(),
    }
    for name, damage in damages.items():
        km = tmp_path / name
        km.mkdir()
        for f in ("centroids.npy", "kmeans.json"):
            (km / f).write_bytes((tmp_path / "km" / f).read_bytes())
        damage(km)
        assert (
            run_cli("kmeans", "label", "--feats", feats, "--model", km, "--out", tmp_path / f"lab-{name}")
            == 1
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(km) in err[0], (name, err)
        assert not (tmp_path / f"lab-{name}").exists(), name


def test_overwrite_removes_only_its_own_leftovers(tmp_path):
    from speechssl.io import pid_alive

    dead = next(pid for pid in range(4_000_000, 4_100_000) if not pid_alive(pid))
    feats = two_blobs(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / f".data.{dead}.tmp").write_text("a user's file, named like a temp file")
    (mine / f".centroids.{dead}.tmp.npy").write_text("a killed fit's temp file")
    assert run_cli("kmeans", "fit", "--feats", feats, "--num-clusters", 2, "--out", mine, "--overwrite") == 0
    assert (mine / f".data.{dead}.tmp").exists() and not (mine / f".centroids.{dead}.tmp.npy").exists()
