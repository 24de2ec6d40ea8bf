"""`speechssl analyze rankme|cka|layers` end to end: tiny models, a tiny phone corpus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from speechssl.analysis.collect import CollectConfig, _Reservoir, collect
from speechssl.analysis.rankme import rankme
from speechssl.cli.main import main
from speechssl.models.checkpoint import save_checkpoint
from speechssl.models.model import build_model
from speechssl.testing.models import perturb_, tiny_config
from speechssl.units.report import score_label_files
from tests.units.conftest import make_phone_corpus

PNG = b"\x89PNG\r\n\x1a\n"


def save_tiny(path: Path, *, seed: int, num_layers: int = 2, mode: str = "layer_norm") -> Path:
    torch.manual_seed(seed)
    cfg = tiny_config(mode=mode, layer_norm_first=True, embed_dim=24, num_heads=3, num_layers=num_layers)
    return save_checkpoint(perturb_(build_model(cfg).eval(), seed=seed), cfg, path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    data, ctm = make_phone_corpus(root / "corpus", num_utts=8)
    (data / "phone_ctm").write_text(ctm.read_text())  # where `analyze layers` looks first
    return {
        "data": data,
        "a": save_tiny(root / "a", seed=1),
        "b": save_tiny(root / "b", seed=2, num_layers=3),
        "gn": save_tiny(root / "gn", seed=3, mode="group_norm"),
    }


def analyze(kind: str, setup, out: Path, *upstreams: str, extra: tuple = ()) -> int:
    argv = ["analyze", kind, "--data", str(setup["data"]), "--out", str(out), "--device", "cpu"]
    for up in upstreams:
        argv += ["--upstream", str(setup.get(up, up))]
    return main([*argv, *map(str, extra)])


def test_rankme_per_layer_on_frames_and_utterance_means(setup, tmp_path):
    out = tmp_path / "rankme"
    assert analyze("rankme", setup, out, "a", extra=("--max-frames", 120)) == 0
    doc = json.loads((out / "rankme.json").read_text())
    assert doc["num_frames"] == 120 and doc["num_utts"] == 8 and doc["num_frames_seen"] > 120
    result = doc["results"]["a"]
    assert result["layers"] == [0, 1, 2]
    assert all(1.0 < v <= 24 for v in result["rankme_frames"])
    assert all(1.0 < v <= 8 for v in result["rankme_utterance_means"])  # 8 utterances: rank <= 8
    assert (out / "rankme.png").read_bytes().startswith(PNG)
    # a re-run replaces its own output; a dir of other files is refused before any model runs
    assert analyze("rankme", setup, out, "a", extra=("--max-frames", 120, "--layers", 2)) == 0
    doc2 = json.loads((out / "rankme.json").read_text())
    assert doc2["results"]["a"]["rankme_frames"] == [result["rankme_frames"][2]]  # same seeded frames
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert analyze("rankme", setup, tmp_path / "other", "a") == 1


def test_cka_of_a_model_with_itself_and_across_two_models(setup, tmp_path, capsys):
    assert analyze("cka", setup, tmp_path / "one", "a", extra=("--max-frames", 100)) == 0
    one = np.array(json.loads((tmp_path / "one" / "cka.json").read_text())["results"]["cka"])
    assert one.shape == (3, 3) and np.allclose(np.diag(one), 1.0) and np.allclose(one, one.T)
    assert (tmp_path / "one" / "cka.png").read_bytes().startswith(PNG)
    # the same model twice: the same frame positions on both sides, so the diagonal is exactly 1
    assert analyze("cka", setup, tmp_path / "twice", "a", "a", extra=("--max-frames", 100)) == 0
    twice = json.loads((tmp_path / "twice" / "cka.json").read_text())["results"]
    assert twice["rows"]["upstream"] == "a_1" and twice["columns"]["upstream"] == "a_2"
    assert np.allclose(np.array(twice["cka"]), one, atol=1e-9)
    assert analyze("cka", setup, tmp_path / "ab", "a", "b", extra=("--max-frames", 100)) == 0
    cross = np.array(json.loads((tmp_path / "ab" / "cka.json").read_text())["results"]["cka"])
    assert cross.shape == (3, 4) and np.all((cross > 0) & (cross < 1))
    # another frame rate (fbank: 100 Hz) cannot be compared frame by frame
    assert analyze("cka", setup, tmp_path / "fb", "a", "fbank") == 1
    assert "different frame rates (samples per frame: 'a' 320, 'fbank' 160)" in capsys.readouterr().err


def test_layers_scores_every_layer_with_the_units_scoring_code(setup, tmp_path):
    out = tmp_path / "layers"
    assert analyze("layers", setup, out, "a", extra=("--num-clusters", 4, "--layers", 0, 2)) == 0
    doc = json.loads((out / "layers.json").read_text())
    scores = doc["results"]["a"]["scores"]
    assert doc["results"]["a"]["layers"] == [0, 2] and all(0 <= s["pnmi"] <= 1 for s in scores)
    assert doc["num_utts"] == 8 and scores[0]["num_utts"] == 8
    # the labels left in layer<L>/ score the same through `speechssl units score`'s code
    again = score_label_files([out / "layer2" / "labels"], setup["data"] / "phone_ctm")
    assert next(iter(again.values())).pnmi == pytest.approx(scores[1]["pnmi"], abs=1e-12)
    assert (out / "layer0" / "centroids.npy").is_file() and (out / "layers.png").read_bytes().startswith(PNG)
    assert not [p for p in out.iterdir() if p.name.startswith(".feats")]  # the scratch dump is gone


def test_layers_keeps_whole_utterances_up_to_max_frames(setup):
    import speechssl

    up = speechssl.load_upstream(setup["a"])
    (kept,) = collect(
        [("a", up)],
        setup["data"],
        CollectConfig(max_frames=30, device="cpu"),
        keep_utterances=True,
        progress=False,
    )
    lengths = [len(f[0]) for f in kept.utterances.values()]
    assert sum(lengths[:-1]) < 30 <= sum(lengths) and len(kept.frames[0]) == sum(lengths)


def test_user_errors_are_one_line(setup, tmp_path, capsys):
    assert analyze("rankme", setup, tmp_path / "x", "a", extra=("--layers", 5)) == 1
    assert "--layers 5: upstream 'a' has layers 0..2" in capsys.readouterr().err
    empty = tmp_path / "noctm"
    empty.mkdir()
    (empty / "wav.scp").write_text((setup["data"] / "wav.scp").read_text())
    (empty / "utt2spk").write_text((setup["data"] / "utt2spk").read_text())
    assert (
        main(
            [
                "analyze",
                "layers",
                "--upstream",
                str(setup["a"]),
                "--data",
                str(empty),
                "--out",
                str(tmp_path / "y"),
            ]
        )
        == 1
    )
    assert (
        "noctm/phone_ctm does not exist: analyze layers scores units against phone alignments"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "y").exists()
    assert analyze("rankme", setup, tmp_path / "z", "fbank_global_cmvn") == 1
    assert "train-split statistics" in capsys.readouterr().err
    assert analyze("rankme", setup, tmp_path / "w", "a", extra=("--max-frames", 1)) == 1
    assert "max_frames must be >= 2" in capsys.readouterr().err


def test_batched_and_one_at_a_time_passes_keep_the_same_frames(setup):
    """Batching (a pads-safely model) or not (group norm) changes nothing that is kept."""
    import speechssl

    for name in ("a", "gn"):
        up = speechssl.load_upstream(setup[name])
        runs = [
            collect(
                [(name, up)],
                setup["data"],
                CollectConfig(max_frames=50, batch_seconds=s, device="cpu"),
                progress=False,
            )[0]
            for s in (0.01, 60.0)
        ]
        for x, y in zip(runs[0].frames + runs[0].utterance_means, runs[1].frames + runs[1].utterance_means):
            np.testing.assert_allclose(x, y, atol=2e-5)
        assert rankme(runs[0].frames[-1]) == pytest.approx(rankme(runs[1].frames[-1]), rel=1e-4)


def test_reservoir_is_a_uniform_sample_of_the_stream():
    positions = []
    for seed in range(400):
        reservoir, kept = _Reservoir(10, seed), np.full(10, -1)
        for start in range(0, 200, 37):  # uneven blocks
            count = min(37, 200 - start)
            rows, slots = reservoir.slots(count)
            kept[slots] = start + rows
        assert len(set(kept.tolist())) == 10 and kept.min() >= 0
        positions.append(kept)
    histogram = np.bincount(np.concatenate(positions) // 50, minlength=4) / 4000  # 4 quarters of the stream
    assert np.allclose(histogram, 0.25, atol=0.03)
    small = _Reservoir(10, 0)
    rows, slots = small.slots(4)
    assert rows.tolist() == slots.tolist() == [0, 1, 2, 3]  # below the size: everything is kept


def test_layers_needs_more_frames_than_clusters(setup, tmp_path, capsys):
    assert (
        analyze("layers", setup, tmp_path / "k", "a", extra=("--max-frames", 20, "--num-clusters", 500)) == 1
    )
    assert "fewer than --num-clusters 500: raise --max-frames" in capsys.readouterr().err
