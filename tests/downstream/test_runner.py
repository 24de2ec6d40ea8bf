"""The runner: frozen upstream, a plugged-in tuning method, every task end to end, lr sweep,
the CLI and the report."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

from speechssl.data.dataset import collate_audio
from speechssl.downstream import DownstreamConfig, FeaturizerConfig, HeadConfig, build_task
from speechssl.downstream.report import write_report
from speechssl.downstream.runner import (
    build_model,
    evaluate_downstream,
    prepare_upstream,
    train_downstream,
)
from speechssl.interop.upstream import load_upstream
from speechssl.testing.cli import downstream_train, run_cli
from speechssl.tuning import METHODS, TuningConfig, load_tuned

SMALL = HeadConfig(  # the tiny corpus: ASV clips are under SUPERB's 2 s minimum
    hidden_dim=16,
    lstm_dim=16,
    lstm_layers=2,
    xvector_channels=16,
    xvector_agg_dim=24,
    embed_dim=8,
    asv_min_seconds=0.0,
)


def small_config(**kw) -> DownstreamConfig:
    return DownstreamConfig(head=SMALL, max_batch_seconds=12.0, eval_every=2, log_every=2, lr=1e-2, **kw)


def test_frozen_upstream_gets_no_gradient_and_does_not_change(task_data, tiny_upstream, tmp_path):
    config = small_config()
    task = build_task("ks", task_data["ks"], tmp_path / "exp", config)
    model = build_model(task, prepare_upstream(tiny_upstream, config), config)
    before = {k: v.clone() for k, v in model.upstream.state_dict().items()}
    dataset = task.dataset("train", train=True)
    batch = collate_audio([dataset[i] for i in range(3)])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=0.1)
    model.train()
    assert not model.upstream.training  # frozen: eval mode even while training the head
    for _ in range(2):
        loss, _ = model(batch)
        loss.backward()
        assert all(p.grad is None for p in model.upstream.parameters())
        assert model.featurizer.weights.grad is not None and model.featurizer.weights.grad.abs().sum() > 0
        opt.step()
        opt.zero_grad()
    after = model.upstream.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(k.startswith("upstream.") for k in model.state_dict())  # saved apart from the upstream
    trainable, total = model.num_parameters()
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if not n.startswith("upstream."))
    assert total > trainable


def _bias_tuning(model, config):
    """A BitFit-like stand-in for a user's method in speechssl.tuning.METHODS: the encoder's biases."""
    return [name for name, _ in model.named_parameters() if name.endswith(".bias") and "encoder" in name]


def test_tuning_method_plugs_in_by_name(task_data, tiny_upstream, tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "bias_test", _bias_tuning)  # the one registry, undone after the test
    config = small_config(tuning=TuningConfig(method="bias_test"))
    out = tmp_path / "exp"
    train_downstream("ks", tiny_upstream, task_data["ks"], out, config, max_steps=2)
    state = load_file(str(out / "checkpoints" / "step_2" / "model.safetensors"))
    upstream_keys = [k for k in state if k.startswith("upstream.")]
    assert upstream_keys and all(k.endswith(".bias") and "encoder" in k for k in upstream_keys)
    results = evaluate_downstream(out)
    assert results["trainable_params"] < results["total_params"]
    with pytest.raises(ValueError, match="unknown tuning method 'nope'; valid: .*bias_test"):
        small_config(tuning=TuningConfig(method="nope"))


@pytest.mark.parametrize("task", ["pr", "asr", "ks", "ic", "sid", "asv"])
def test_every_task_trains_and_writes_results(task, task_data, tiny_upstream, tmp_path):
    out = tmp_path / task
    best = train_downstream(task, tiny_upstream, task_data[task], out, small_config(), max_steps=3)
    assert best["step"] in (2, 3) and (out / "best.json").is_file()
    results = evaluate_downstream(out)
    assert json.loads((out / "results.json").read_text()) == results
    assert {"task", "metric", "value", "split", "upstream", "trainable_params", "total_params"} <= set(
        results
    )
    assert results["task"] == task and results["split"] == "test" and results["upstream"] == "hubert_tiny"
    assert 0.0 <= results["value"] <= (10.0 if task in ("pr", "asr") else 1.0)
    assert len(results["layer_weights"]) == 3  # hubert_tiny: 2 layers + their input
    if task == "asv":
        assert results["metric"] == "eer" and 0.0 <= results["metrics"]["min_dcf"]


def test_lr_sweep_trains_one_run_per_lr_and_keeps_the_best(task_data, tmp_path):
    config = small_config(lr_sweep=[1e-3, 1e-2], featurizer=FeaturizerConfig(name="hconv", hconv_dim=8))
    best = train_downstream("ks", "fbank", task_data["ks"], tmp_path / "exp", config, max_steps=2)
    assert [r["lr"] for r in best["runs"]] == [1e-3, 1e-2]
    assert (tmp_path / "exp" / "lr_0.001" / "checkpoints").is_dir()
    values = [r["dev"]["accuracy"] for r in best["runs"]]
    assert best["dev"]["accuracy"] == max(values)
    assert evaluate_downstream(tmp_path / "exp")["lr"] == best["lr"]


def test_resume_skips_finished_runs(task_data, tmp_path):
    out = tmp_path / "exp"
    first = train_downstream("ks", "fbank", task_data["ks"], out, small_config(), max_steps=2)
    mtime = (out / "checkpoints" / "step_2" / "model.safetensors").stat().st_mtime_ns
    again = train_downstream("ks", "fbank", task_data["ks"], out, small_config(), max_steps=2, resume=True)
    assert again["step"] == first["step"]
    assert (out / "checkpoints" / "step_2" / "model.safetensors").stat().st_mtime_ns == mtime
    with pytest.raises(
        ValueError, match="cannot resume task sid / upstream fbank in an experiment of task ks"
    ):
        train_downstream("sid", "fbank", task_data["sid"], out, small_config(), max_steps=2, resume=True)


def test_unknown_task_and_missing_data(tmp_path, task_data):
    with pytest.raises(ValueError, match="unknown task 'xx'; valid tasks: pr, asr, ks, ic, sid, asv"):
        train_downstream("xx", "fbank", task_data["ks"], tmp_path / "e", small_config())
    with pytest.raises(FileNotFoundError, match="data dir .*missing does not exist"):
        train_downstream("ks", "fbank", tmp_path / "missing", tmp_path / "e", small_config())


def test_cli_train_evaluate_report(task_data, tmp_path, capsys):
    conf = tmp_path / "ks.yaml"
    conf.write_text(
        "lr: 0.01\nmax_batch_seconds: 12.0\neval_every: 2\nlog_every: 2\n"
        "featurizer:\n  name: weighted_sum\nhead:\n  hidden_dim: 16\n"
    )
    exp = tmp_path / "exp_fbank"
    assert downstream_train(task_data["ks"], exp, "--config", conf, "--max-steps", "2") == 0
    assert run_cli("downstream", "evaluate", "--out", exp) == 0
    test_results = (exp / "results.json").read_text()
    assert run_cli("downstream", "evaluate", "--out", exp, "--split", "dev") == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["task"] == "ks" and line["split"] == "dev" and line["upstream"] == "fbank"
    # a dev score goes to its own file: the test score that `report` reads by default stays
    assert (exp / "results.json").read_text() == test_results == (exp / "results_test.json").read_text()
    assert json.loads((exp / "results_dev.json").read_text())["split"] == "dev"
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr_swep: [0.1]\n")
    assert downstream_train(task_data["ks"], tmp_path / "x", "--config", bad) == 1
    assert "unknown key 'lr_swep'" in capsys.readouterr().err
    assert run_cli("downstream", "report", "--exps", exp, "--out", tmp_path / "report") == 0
    assert "| ks | accuracy (%) (test) |" in (tmp_path / "report" / "results.md").read_text()
    assert run_cli("downstream", "report", "--exps", exp, "--out", tmp_path / "report", "--split", "dev") == 0
    assert "| ks | accuracy (%) (dev) |" in (tmp_path / "report" / "results.md").read_text()


def test_report_table_and_layer_weight_png(tmp_path):
    exps = []
    for up, task, metric, value, weights in [
        ("fbank", "ks", "accuracy", 0.5, [1.0]),
        ("hubert", "ks", "accuracy", 0.75, [0.2, 0.3, 0.5]),
        ("hubert", "pr", "per", 0.4, [0.6, 0.3, 0.1]),
    ]:
        d = tmp_path / f"{up}_{task}"
        d.mkdir()
        (d / "results.json").write_text(
            json.dumps(
                {
                    "task": task,
                    "metric": metric,
                    "value": value,
                    "split": "test",
                    "upstream": up,
                    "trainable_params": 10,
                    "total_params": 100,
                    "metrics": {metric: value},
                    "layer_weights": weights,
                }
            )
        )
        exps.append(d)
    written = write_report(exps, tmp_path / "report")
    md = written["markdown"].read_text()
    assert "| task | metric | fbank | hubert |" in md
    assert (
        "| pr | per (%) (test) | - | 40.00 |" in md and "| ks | accuracy (%) (test) | 50.00 | 75.00 |" in md
    )
    table = json.loads(written["json"].read_text())
    assert table["tasks"]["ks"]["values"] == {"fbank": 0.5, "hubert": 0.75}
    assert written["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(
        FileNotFoundError, match="nothing is not a trained experiment .*speechssl downstream train"
    ):
        write_report([tmp_path / "nothing"], tmp_path / "r2")
    trained = tmp_path / "trained"  # trained, not evaluated
    trained.mkdir()
    (trained / "downstream.yaml").write_text("task: ks\n")
    (trained / "best.json").write_text("{}\n")
    with pytest.raises(
        FileNotFoundError, match="results_test.json does not exist: run `speechssl downstream evaluate"
    ):
        write_report([trained], tmp_path / "r2")


def test_asr_with_sentencepiece_units(task_data, tmp_path):
    from speechssl.downstream.tasks import train_sentencepiece

    text = tmp_path / "lines.txt"
    text.write_text("the cat sat on the mat\nthe dog sat on the log\n" * 5)
    model = train_sentencepiece(text, tmp_path / "spm" / "m", 20)
    assert model.is_file()
    out = tmp_path / "asr_spm"
    train_downstream(
        "asr",
        "fbank",
        task_data["asr"],
        out,
        small_config(asr_units="sentencepiece", sentencepiece_vocab_size=30),
        max_steps=2,
    )
    assert (out / "task" / "spm.model").is_file()
    assert evaluate_downstream(out)["metric"] == "wer"
    (out / "task" / "spm.model").rename(tmp_path / "moved.model")
    with pytest.raises(
        FileNotFoundError, match=f"^{out / 'task' / 'spm.model'} does not exist: the experiment's"
    ):
        evaluate_downstream(out)
    # a resume never trains it again (the train text may have changed: other pieces, same head size)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    config = small_config(asr_units="sentencepiece", sentencepiece_vocab_size=30)
    with pytest.raises(FileNotFoundError, match=f"^{out / 'task' / 'spm.model'} does not exist"):
        train_downstream("asr", "fbank", task_data["asr"], out, config, max_steps=4, resume=True)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def test_asr_sentencepiece_too_small_for_the_characters_is_refused_before_exp(task_data, tmp_path):
    """The model trains at start-up: a size too small for the training text's characters is one
    line naming the option, before the upstream loads or EXP holds a file, so the same --out
    takes the corrected run."""
    from speechssl.downstream.tasks import DataCheckError

    out = tmp_path / "asr_spm"

    def config(size):
        return small_config(asr_units="sentencepiece", sentencepiece_vocab_size=size)

    with pytest.raises(DataCheckError, match=r"^sentencepiece_vocab_size: sentencepiece cannot train 3"):
        train_downstream("asr", "fbank", task_data["asr"], out, config(3))
    assert not out.exists()
    train_downstream("asr", "fbank", task_data["asr"], out, config(30), max_steps=1)
    assert {p.name for p in (out / "task").glob("spm*")} == {"spm.model", "spm.vocab", "spm_train.txt"}
    # a run stopped before its first checkpoint keeps EXP/task/'s model: --resume with another size
    # would train on the old model under the new record
    for path in list(out.rglob("step_*")):
        shutil.rmtree(path)
    model = (out / "task" / "spm.model").read_bytes()
    with pytest.raises(ValueError, match=r"cannot resume with sentencepiece_vocab_size 40: .* trained with "):
        train_downstream("asr", "fbank", task_data["asr"], out, config(40), max_steps=1, resume=True)
    assert (out / "task" / "spm.model").read_bytes() == model


def test_lora_from_speechssl_tuning_trains_only_its_weights(task_data, tiny_upstream, tmp_path):
    out = tmp_path / "lora"
    config = small_config(tuning=TuningConfig(method="lora"))
    best = train_downstream("ks", tiny_upstream, task_data["ks"], out, config, max_steps=2)
    state = load_file(str(out / "checkpoints" / "step_2" / "model.safetensors"))
    upstream_keys = [k for k in state if k.startswith("upstream.")]
    assert upstream_keys and all("lora" in k for k in upstream_keys)
    results = evaluate_downstream(out)
    assert 0 < results["trainable_params"] < results["total_params"]
    # the chosen checkpoint's tuned weights, usable without the head
    assert best["tuned_upstream"] == "tuned.safetensors" and not (out / "upstream").exists()
    tuned = load_upstream(tiny_upstream)
    load_tuned(tuned, out / "tuned.safetensors")
    chosen = load_file(str(out / best["run_dir"] / best["checkpoint"] / "model.safetensors"))
    for name, value in tuned.named_parameters():
        if "lora" in name:
            assert torch.equal(value, chosen["upstream." + name]), name


def test_old_tuning_keys_name_the_tuning_section(tmp_path):
    from speechssl.config import ConfigError, load_config

    conf = tmp_path / "old.yaml"
    for text, hint in (
        ("tuning_options: {rank: 4}\n", "tuning_options is now the tuning section's method options"),
        ("upstream_trainable: true\n", "upstream_trainable is now tuning.method: full"),
    ):
        conf.write_text(text)
        with pytest.raises(ConfigError, match=f"unknown key .* in .*old.yaml: {hint}"):
            load_config(DownstreamConfig, conf)


def test_an_experiment_recorded_before_the_tuning_section_still_loads(tmp_path):
    from speechssl.downstream.runner import load_experiment

    for old, method, rank in (
        ({"tuning": None, "tuning_options": {}, "upstream_trainable": False}, "frozen", None),
        ({"tuning": "lora", "tuning_options": {"rank": 4}, "upstream_trainable": False}, "lora", 4),
        ({"tuning": None, "tuning_options": {}, "upstream_trainable": True}, "full", None),
    ):
        (tmp_path / "downstream.yaml").write_text(
            yaml.safe_dump({"task": "ks", "config": {"lr": 0.01, **old}})
        )
        _, config = load_experiment(tmp_path)
        assert config.tuning.method == method and config.lr == 0.01
        if rank is not None:
            assert config.tuning.lora.rank == rank
