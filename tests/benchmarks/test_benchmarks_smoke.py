"""Smoke test of the benchmark harness at tiny sizes: well-formed rows and files, never timings."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.__main__ import main, parse_args
from benchmarks.harness import Case, Settings, Spec, make_row, peak_memory_mib, run_cases, time_interleaved
from benchmarks.mfu import forward_flops
from speechssl.models import get_preset

ROW_KEYS = {"group", "name", "ours", "reference", "unit", "ratio", "higher_is_better", "note"}


def test_ratio_is_oriented_so_that_above_one_is_better():
    assert make_row("g", "fast", 4.0, 2.0, "audio-s/s").ratio == 2.0  # throughput: ours / ref
    assert (
        make_row("g", "small", 100.0, 300.0, "MiB", higher_is_better=False).ratio == 3.0
    )  # cost: ref / ours
    assert make_row("g", "none", 1.0, None, "x").ratio is None


def test_interleaved_timing_calls_contenders_round_robin():
    calls: list[str] = []
    medians = time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeats=2
    )
    assert calls == ["a", "b"] * 3 and set(medians) == {"a", "b"}


def test_fast_calls_are_repeated_up_to_the_cap():
    calls: list[str] = []
    time_interleaved({"a": lambda: calls.append("a")}, warmup=0, repeats=2, min_seconds=10.0, max_repeats=7)
    assert len(calls) == 7  # a near-zero call would need millions of rounds for 10 s: capped


def test_cli_writes_json_and_markdown(tmp_path):
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    args = [
        "--tiny",
        "--no-memory",
        "--only",
        "head",
        "units",
        "compression",
        "--json",
        str(out_json),
        "--md",
        str(out_md),
    ]
    assert main(args) == 0
    data = json.loads(out_json.read_text())
    assert {"date", "cpu", "torch", "threads", "mode"} <= set(data["meta"]) and data["meta"]["mode"] == "tiny"
    rows = data["rows"]
    assert {r["group"] for r in rows} == {"hubert head", "units + data", "compression"}
    for row in rows:
        assert set(row) == ROW_KEYS
        if row["ratio"] is not None:
            assert row["ours"] > 0 and row["reference"] > 0 and math.isfinite(row["ratio"])
    table = out_md.read_text()
    assert "| group | benchmark |" in table and table.count("\n| ") == len(rows) + 1


def test_memory_probe_rows(tmp_path):
    spec = Spec(
        module="benchmarks.head",
        factory="head_step",
        kwargs={"contender": "linear", "num_frames": 32, "embed_dim": 16, "num_classes": 8, "final_dim": 8},
    )
    (mib,) = peak_memory_mib([spec], threads=1)
    assert mib is not None and mib >= 0
    rows = run_cases("g",
                     [Case(name="c", work=32, unit="frames/s", contenders={"ours": spec, "other": spec})],
                     Settings(tiny=True, repeats=1, threads=1, memory=False))  # fmt: skip
    assert [r.name for r in rows] == ["c: throughput vs other"]


def test_unknown_group_is_an_error(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--only", "upstrem"])
    assert "unknown row group(s) ['upstrem']" in capsys.readouterr().err


def test_forward_flops_of_hubert_base():
    # transformer ~ 12 x (8 D^2 + 4 D F) x 49 frames = 8.3 GFLOP; conv frontend ~ 4.9 GFLOP per second
    gflop = forward_flops(get_preset("hubert_base"), 1.0) / 1e9
    assert 12 < gflop < 16


def test_gpu_conv_rows_run_and_their_alternatives_compute_the_same_features():
    """benchmarks.gpu_convs at a tiny size on the CPU: the rows a GPU session measures are formed,
    and the frontends they time against ours (norms in the activation dtype, im2col, channels-last,
    time-major) compute our features and their gradients, to the input and to every weight (so the
    GPU time is spent on a fair comparison)."""
    import torch

    from benchmarks import gpu_convs
    from benchmarks.gpu_convs import (
        activation_dtype_norm_frontend,
        channels_last_frontend,
        im2col_frontend,
        measure,
        relative_error,
        time_major_frontend,
    )
    from speechssl.models.config import ConvFrontendConfig
    from speechssl.models.frontends import build_conv_frontend

    rows = measure(1, 0.1, warmup=0, steps=1, device="cpu")
    assert [r.unit for r in rows] == ["ms"] * 6 and all(r.ours > 0 and r.reference > 0 for r in rows)
    with pytest.MonkeyPatch.context() as patch:  # one that fails on the device costs only its own row
        patch.setattr(gpu_convs, "im2col_frontend", lambda encoder, wavs: 1 / 0)
        assert [r.name for r in measure(1, 0.1, warmup=0, steps=1, device="cpu")] == [
            r.name for r in rows if not r.name.endswith("vs im2col")
        ]
    for mode in ("group_norm", "layer_norm"):
        encoder = build_conv_frontend(ConvFrontendConfig(mode=mode, conv_bias=mode == "layer_norm"))
        with torch.no_grad():  # perturbed norms: an identity affine would hide a swapped weight and bias
            for p in encoder.parameters():
                p.add_(0.1 * torch.randn_like(p))
        params = [wavs := torch.randn(2, 5003, requires_grad=True), *encoder.parameters()]
        ours = encoder(wavs, torch.tensor([5003, 5003]))[0]
        grads = torch.autograd.grad(ours.square().sum(), params)
        for formulation in (activation_dtype_norm_frontend, im2col_frontend, channels_last_frontend,
                            time_major_frontend):  # fmt: skip
            theirs = formulation(encoder, wavs)
            their_grads = torch.autograd.grad(theirs.square().sum(), params)
            errors = [relative_error(a, b) for a, b in zip((theirs, *their_grads), (ours, *grads))]
            assert max(errors) < 1e-5, (formulation.__name__, errors)


@pytest.mark.parametrize("preset", ["hubert_tiny", "data2vec_tiny"])
def test_time_major_frontend_step_is_the_step_it_times(preset):
    """benchmarks.gpu's time-major training row swaps the formulation of every ConvFeatureEncoder
    for the step it times: the same loss and gradients as the package's step (feature_grad_mult and
    the frame lengths included), and the package's own forward back afterwards."""
    import torch

    from benchmarks.gpu_convs import relative_error, time_major_frontends
    from speechssl.models.frontends import ConvFeatureEncoder
    from speechssl.objectives import build_pretrain_model, get_pretrain_preset
    from speechssl.testing.models import random_waves

    torch.manual_seed(0)
    model = build_pretrain_model(get_pretrain_preset(preset)).eval()  # eval: no dropout between the runs
    wavs, lengths = random_waves([9617, 7203, 5111], seed=3)
    targets = torch.randint(0, 50, (3, int(model.backbone.num_frames(lengths).max())))

    def loss_and_grads():
        torch.manual_seed(1)  # the same masks
        loss = model(wavs, lengths, targets)[0] if preset.startswith("hubert") else model(wavs, lengths)[0]
        return [loss, *torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])]

    original = ConvFeatureEncoder.forward
    ours = loss_and_grads()
    with time_major_frontends():
        assert ConvFeatureEncoder.forward is not original
        theirs = loss_and_grads()
    assert ConvFeatureEncoder.forward is original
    # (the keys' bias gets no gradient but rounding noise: softmax ignores a constant added to every key)
    errors = [relative_error(a, b) for a, b in zip(theirs, ours) if b.norm() > 1e-6]
    assert len(errors) > 10 and max(errors) < 1e-5, errors
