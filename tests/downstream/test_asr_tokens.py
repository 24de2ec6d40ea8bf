"""ASR on discrete tokens: `downstream train --task asr --upstream tokens:DIR` trains the token embedding
(the head's first Linear on one-hot tokens), the BiLSTM encoder and CTC to characters, end to end
through the CLI, and lands in the same report as the continuous features of the same layer."""

from __future__ import annotations

import json

import pytest
import yaml

from speechssl.interop.upstream import load_upstream
from speechssl.testing.cli import downstream_train, dump_features, kmeans_fit, run_cli

K = 8
HEAD = (
    "eval_every: 2\nlog_every: 2\nlr: 1.0e-2\nmax_batch_seconds: 12.0\n"
    "head:\n  lstm_dim: 16\n  lstm_layers: 1\n"
)


@pytest.mark.slow  # two ASR trainings and their evaluations
def test_asr_on_tokens_trains_end_to_end_and_reports_next_to_features(
    task_data, tiny_upstream, tmp_path, capsys
):
    data = task_data["asr"]
    feats, km, tok = tmp_path / "feats", tmp_path / "km", tmp_path / "tokens"
    assert (
        dump_features(data / "train", feats, "--upstream", tiny_upstream, "--layer", 1, feature="upstream")
        == 0
    )
    assert kmeans_fit(feats, K, km, "--n-init", 1) == 0
    args = ("--upstream", tiny_upstream, "--layer", 1, "--kmeans", km, "--data", data / "train", "--out", tok)
    assert run_cli("tokens", "extract", *args) == 0
    conf = tmp_path / "asr.yaml"
    conf.write_text(HEAD)
    continuous = HEAD + "featurizer:\n  name: layer\n  layer: 1\n"
    (tmp_path / "asr_layer.yaml").write_text(continuous)

    exp_tok, exp_cont = tmp_path / "asr_tokens", tmp_path / "asr_layer1"
    assert (
        downstream_train(
            data, exp_tok, "--config", conf, "--max-steps", 2, task="asr", upstream=f"tokens:{tok}"
        )
        == 0
    )
    layer_conf = tmp_path / "asr_layer.yaml"
    assert downstream_train(
        data, exp_cont, "--config", layer_conf, "--max-steps", 2, task="asr", upstream=str(tiny_upstream)
    ) == 0  # fmt: skip
    capsys.readouterr()
    for exp in (exp_tok, exp_cont):
        assert run_cli("downstream", "evaluate", "--out", exp) == 0
    tok_results = json.loads((exp_tok / "results.json").read_text())
    assert tok_results["task"] == "asr" and tok_results["metric"] == "wer"
    assert tok_results["upstream"] == f"hubert_tiny_l1_k{K}"
    assert 0.0 <= tok_results["value"] <= 10.0
    # the token upstream is frozen: what trains is the head, whose first Linear(V, D) is the embedding
    assert tok_results["trainable_params"] < tok_results["total_params"]
    state = json.loads((exp_tok / "best.json").read_text())
    assert state["step"] == 2
    assert yaml.safe_load((exp_tok / "downstream.yaml").read_text())["upstream"] == f"tokens:{tok}"
    up = load_upstream(f"tokens:{tok}")
    assert up.hidden_dim == K and not any(p.requires_grad for p in up.parameters())

    assert run_cli("downstream", "report", "--exps", exp_tok, exp_cont, "--out", tmp_path / "report") == 0
    table = (tmp_path / "report" / "results.md").read_text()
    assert f"hubert_tiny_l1_k{K}" in table and "hubert_tiny" in table.replace(f"hubert_tiny_l1_k{K}", "")
