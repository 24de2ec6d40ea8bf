"""The runner's guards (hostile-test findings): a run that another one finished between its
checks and its lock, foreign files in a fresh EXP, CTC options that train nothing, recorded
upstream and data paths, settings fine-tuning does not use, names and one-line errors."""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn

import speechssl.downstream.runner as runner
from speechssl.config import to_dict
from speechssl.downstream import DownstreamConfig, HeadConfig, build_task
from speechssl.downstream.config import finetune_defaults
from speechssl.downstream.finetune import load_finetune_config
from speechssl.downstream.metrics import char_error_rate
from speechssl.downstream.report import write_report
from speechssl.downstream.runner import (
    EXP_FILE,
    default_name,
    evaluate_downstream,
    train_downstream,
)
from speechssl.errors import OutputExistsError
from speechssl.interop.upstream import upstream_name
from speechssl.outputs import write_marker
from speechssl.testing.cli import run_cli
from speechssl.training.experiment import config_differences
from speechssl.training.pretrain import PretrainConfig
from speechssl.tuning import TuningConfig

SMALL = HeadConfig(hidden_dim=16, lstm_dim=16, lstm_layers=2, xvector_channels=16, xvector_agg_dim=24,
                   embed_dim=8, asv_min_seconds=0.0)  # fmt: skip


def small_config(**kw) -> DownstreamConfig:
    return DownstreamConfig(head=SMALL, max_batch_seconds=12.0, eval_every=2, log_every=2, lr=1e-2, **kw)


@pytest.fixture(scope="module")
def trained(task_data, tiny_upstream, tmp_path_factory, request):
    """A finished 4-step KS run on the tiny upstream, trained from its parent dir with a relative
    --upstream (checkpoints at steps 2 and 4)."""
    out = tmp_path_factory.mktemp("safety") / "exp"
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.chdir(tiny_upstream.parent)
    try:
        train_downstream("ks", tiny_upstream.name, task_data["ks"], out, small_config(), max_steps=4)
    finally:
        monkeypatch.undo()
    return out


# 1. race: a run finished between the checks and the lock -------------------------------------
def test_a_run_finished_while_checking_is_not_rewritten(task_data, tmp_path, monkeypatch):
    out = tmp_path / "exp"
    check = runner.check_task_data
    record = "task: ks\nupstream: fbank\nname: theirs\n"

    def finish_another_run(*args, **kwargs):  # run A finishes EXP while B checks its data
        check(*args, **kwargs)
        out.mkdir()
        write_marker(out, runner.TRAIN_COMMAND, experiment=True)
        (out / EXP_FILE).write_text(record)

    monkeypatch.setattr(runner, "check_task_data", finish_another_run)
    with pytest.raises(OutputExistsError, match="holds an earlier downstream run"):
        train_downstream("ks", "fbank", task_data["ks"], out, small_config(), max_steps=2)
    assert (out / EXP_FILE).read_text() == record
    assert not (out / "task").exists()


# 2. a fresh run never adopts files it did not write -------------------------------------------
@pytest.mark.parametrize(
    "foreign", ["task/classes.txt", "dev_scores.json", "upstream/config.yaml", "tuned.safetensors"]
)
def test_a_fresh_run_refuses_foreign_files_before_any_compute(foreign, task_data, tmp_path, monkeypatch):
    out = tmp_path / "exp"
    path = out / foreign
    path.parent.mkdir(parents=True)
    path.write_text("not this run's\n")
    monkeypatch.setattr(runner, "build_model", lambda *a: pytest.fail("compute before the check"))
    named = out / "upstream" if foreign.startswith("upstream/") else path
    with pytest.raises(OutputExistsError, match=f"{named} exists but was not written by this run"):
        train_downstream("ks", "fbank", task_data["ks"], out, small_config(), max_steps=2, overwrite=True)
    assert path.read_text() == "not this run's\n"


# 3. CTC tasks: no max_seconds, and batches that train nothing are said -----------------------
def test_ctc_tasks_refuse_max_seconds(task_data, tmp_path):
    for task in ("pr", "asr"):
        with pytest.raises(ValueError, match=f"max_seconds .* task {task} cannot train with it"):
            train_downstream(task, "fbank", task_data[task], tmp_path / task, small_config(max_seconds=1.0))
        assert not (tmp_path / task).exists()


def test_an_all_infinite_ctc_batch_is_logged(task_data, tmp_path, caplog):
    task = build_task("pr", task_data["pr"], tmp_path, small_config())

    class Identity(nn.Module):
        def forward(self, x, lengths):
            return x, lengths

    head = Identity().train()
    x = torch.randn(2, 3, len(task.tokens))
    batch = SimpleNamespace(
        targets={"tokens": torch.ones(2, 5, dtype=torch.long)}, target_lens={"tokens": torch.tensor([5, 4])}
    )
    with caplog.at_level(logging.WARNING):
        loss, _ = task.loss(head, x, torch.tensor([3, 3]), batch)
    assert loss.item() == 0.0  # zero_infinity: nothing would be learnt
    assert "every utterance has fewer frames than targets" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        two = SimpleNamespace(
            targets={"tokens": torch.ones(2, 2, dtype=torch.long)},
            target_lens={"tokens": torch.tensor([2, 2])},
        )
        task.loss(head, x, torch.tensor([3, 2]), two)
    assert "fewer frames" not in caplog.text


# 4./5./8. recorded paths, resume, selection, evaluation -------------------------------------
def test_the_upstream_is_recorded_absolute_and_resumes_by_any_spelling(
    trained, task_data, tiny_upstream, monkeypatch
):
    exp = yaml.safe_load((trained / EXP_FILE).read_text())
    assert exp["upstream"] == str(tiny_upstream.resolve())
    monkeypatch.chdir(tiny_upstream.parent)
    for spelling in (f"./{tiny_upstream.name}", str(tiny_upstream)):
        again = train_downstream(
            "ks", spelling, task_data["ks"], trained, small_config(), max_steps=4, resume=True
        )
        assert again["step"] in (2, 4)
    monkeypatch.chdir(trained.parent)  # evaluate from elsewhere
    assert evaluate_downstream(trained, split="dev")["split"] == "dev"


def test_resume_refuses_other_data(trained, task_data, tiny_upstream, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for split in ("train", "dev", "test"):
        (other / split).symlink_to(task_data["ks"] / split)
    with pytest.raises(ValueError, match=f"cannot resume on --data {other.resolve()}: .*trained on "):
        train_downstream("ks", tiny_upstream, other, trained, small_config(), max_steps=4, resume=True)


def test_a_shorter_resume_selects_among_its_steps(trained, task_data, tiny_upstream):
    best = train_downstream(
        "ks", tiny_upstream, task_data["ks"], trained, small_config(), max_steps=2, resume=True
    )
    assert best["step"] == 2 and best["dev_curve"] == [[2, best["dev"]["accuracy"]]]
    best = train_downstream(
        "ks", tiny_upstream, task_data["ks"], trained, small_config(), max_steps=4, resume=True
    )
    assert [step for step, _ in best["dev_curve"]] == [2, 4]


def test_evaluate_errors_are_one_line(trained, tmp_path):
    with pytest.raises(ValueError, match=r"--split '\.\./x' must be a plain name"):
        evaluate_downstream(trained, split="../x")
    for bad in (".", "..", "a/b"):
        with pytest.raises(ValueError, match="plain name"):
            evaluate_downstream(trained, split=bad)
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in (EXP_FILE, "best.json"):
        (copy / name).write_text((trained / name).read_text())
    (copy / "checkpoints").symlink_to(trained / "checkpoints")
    (copy / "task").symlink_to(trained / "task")
    exp = yaml.safe_load((copy / EXP_FILE).read_text())
    exp["config"]["featurizer"]["name"] = "hconv"  # not the checkpoint's model
    (copy / EXP_FILE).write_text(yaml.safe_dump(exp))
    with pytest.raises(ValueError, match="does not fit the model that .*downstream.yaml describes") as err:
        evaluate_downstream(copy, split="dev")
    assert "\n" not in str(err.value)


def test_full_tuning_rebuilds_on_exp_upstream_when_the_original_is_gone(tmp_path):
    (tmp_path / "upstream").mkdir()
    full = small_config(tuning=TuningConfig(method="full"))
    gone = {"upstream": str(tmp_path / "gone")}
    assert runner._recorded_upstream(tmp_path, gone, full) == str(tmp_path / "upstream")
    assert runner._recorded_upstream(tmp_path, gone, small_config()) == str(tmp_path / "gone")
    assert runner._recorded_upstream(tmp_path, {"upstream": "fbank"}, full) == "fbank"


# 6. fine-tuning: featurizer/head refused, left out of the resume comparison ------------------
def test_finetuning_refuses_featurizer_and_head_settings():
    for item in ("featurizer.name=hconv", "head.hidden_dim=8"):
        with pytest.raises(ValueError, match=f"{item.split('=')[0]} is not used by CTC fine-tuning"):
            load_finetune_config(None, [item])


def test_finetuning_resume_ignores_unused_sections(tmp_path):
    config = finetune_defaults()
    saved = to_dict(config)
    saved["head"] = {**saved["head"], "hidden_dim": 999, "removed_key": 1}
    saved["featurizer"] = {**saved["featurizer"], "name": "hconv"}
    saved["lr"] = 1.0
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    diffs = config_differences(saved, config, allowed=runner._resumable(tmp_path, config, "asr"))
    assert [d.split(" ")[0] for d in diffs] == ["lr"]
    frozen = small_config()  # a downstream run still compares its head
    other_head = {**to_dict(frozen), "head": {**to_dict(frozen)["head"], "hidden_dim": 1}}
    assert config_differences(other_head, frozen, allowed=runner._resumable(tmp_path, frozen, "ks"))


def test_a_sweeps_resume_ignores_the_top_level_lr_but_not_its_rates(tmp_path):
    """No run of a sweep reads the top-level lr: a resume with another one (a changed conf default)
    goes on; other rates, or no sweep, are still refused."""
    sweep = dataclasses.replace(small_config(), lr_sweep=[1e-2, 1e-3])
    saved = {**to_dict(sweep), "lr": 5e-4}

    def keys(config):
        allowed = runner._resumable(tmp_path, config, "ks")
        return [d.split(" ")[0] for d in config_differences(saved, config, allowed=allowed)]

    assert keys(sweep) == []
    assert keys(dataclasses.replace(sweep, lr_sweep=[1e-2, 1e-4])) == ["lr_sweep"]


@pytest.mark.parametrize(("first", "then"), [([1e-2, 1e-3], []), ([], [1e-2, 1e-3])])
def test_a_resume_that_adds_or_drops_the_sweep_is_refused(task_data, tmp_path, first, then):
    """No run dir of the new shape has a checkpoint to compare: without the check, a sweep resumed
    without it trained a fresh run beside its lr_* runs (and the reverse), two setups in one EXP."""
    out = tmp_path / "exp"
    train_downstream("ks", "fbank", task_data["ks"], out, small_config(lr_sweep=first), max_steps=2)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(ValueError, match=re.escape(f"cannot resume with lr_sweep {then}: the experiment")):
        train_downstream(
            "ks", "fbank", task_data["ks"], out, small_config(lr_sweep=then), max_steps=4, resume=True
        )
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_resume_of_a_run_from_before_an_option_existed(tmp_path):
    """Options added since a checkpoint was written count as differences unless the run cannot
    be affected: the SD head's sizes for any other task, `ADDED_OPTIONS` at their old value.
    A new option whose default changed what runs did (`optimizer: adam`) is still refused."""
    config = small_config()
    saved = to_dict(config)
    del saved["head"]["sd_hidden_dim"], saved["head"]["sd_rnn_layers"]  # a KS run of an older speechssl

    def keys(saved, config, task):
        return [
            d.split(" ")[0]
            for d in config_differences(saved, config, allowed=runner._resumable(tmp_path, config, task))
        ]

    assert keys(saved, config, "ks") == []
    assert keys(saved, config, "sd") == ["head.sd_hidden_dim", "head.sd_rnn_layers"]  # the SD head reads them
    del saved["optimizer"]  # before `optimizer` existed the heads trained with AdamW (0.9, 0.98)
    assert keys(saved, config, "ks") == ["optimizer"]

    model = PretrainConfig().model
    pretrain = PretrainConfig(
        model=dataclasses.replace(model, encoder=dataclasses.replace(model.encoder, layerdrop=0.0))
    )
    saved = to_dict(pretrain)
    del saved["trainer"]["strategy"]  # a run from before FSDP: DDP
    del saved["model"]["encoder"]["layer_head_index"]  # null now: an option not in use
    assert config_differences(saved, pretrain) == []
    fsdp = dataclasses.replace(pretrain, trainer=dataclasses.replace(pretrain.trainer, strategy="fsdp"))
    assert [d.split(" ")[0] for d in config_differences(saved, fsdp)] == ["trainer.strategy"]
    saved["trainer"] = None  # a section the checkpoint holds as a value: every key of it differs
    assert "trainer.strategy" in [d.split(" ")[0] for d in config_differences(saved, pretrain)]


# 7. names and messages ---------------------------------------------------------------------
def test_tuned_runs_are_named_apart_from_the_frozen_one():
    spec, base = "exp/hubert.pt", upstream_name("exp/hubert.pt")
    assert default_name(spec, small_config()) == base
    lora = small_config(tuning=TuningConfig(method="lora"))
    assert default_name(spec, lora) == f"{base} (lora)"
    assert default_name(spec, finetune_defaults()) == f"{base} (finetune full)"


def test_messages_name_the_right_key_and_command(task_data, tmp_path, capsys):
    assert run_cli("downstream", "train", "--task", "ks", "--upstream", "fbank", "--data", task_data["ks"],
                   "--out", tmp_path / "e", "--set", "tuning=lora") != 0  # fmt: skip
    assert "use tuning.method=lora" in capsys.readouterr().err
    with pytest.raises(ValueError, match="use tuning.method=lora"):
        load_finetune_config(None, ["tuning=lora"])
    with pytest.raises(
        ValueError, match="CTC fine-tuning needs an upstream with a transformer encoder; .fbank. has none"
    ) as err:
        train_downstream("asr", "fbank", task_data["asr"], tmp_path / "f", finetune_defaults(), max_steps=2)
    assert "frozen" not in str(err.value)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    write_marker(unfinished, "finetune train", experiment=True)
    (unfinished / EXP_FILE).write_text("task: asr\n")
    with pytest.raises(FileNotFoundError, match=r"did not finish .*speechssl finetune train \.\.\. --resume"):
        write_report([unfinished], tmp_path / "rep")


# 8. CER ------------------------------------------------------------------------------------
def test_cer_counts_unk_as_one_character():
    assert char_error_rate(["ab"], ["a<unk>"]) == pytest.approx(0.5)
    assert char_error_rate(["a <unk>"], ["a <unk>"]) == 0.0


def test_a_copy_made_without_symlinks_is_refused_before_training(trained, task_data, tiny_upstream, tmp_path):
    """`cp -rL` turns checkpoints/last into a real directory: saving the next checkpoint could not
    swap it for a link. One line naming the step it copies, before any compute; nothing changes."""
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy, symlinks=False)
    before = sorted(str(p.relative_to(copy)) for p in copy.rglob("*"))
    last = copy / "checkpoints" / "last"
    with pytest.raises(ValueError, match="is not a symlink to a checkpoint") as err:
        train_downstream("ks", tiny_upstream, task_data["ks"], copy, small_config(), max_steps=6, resume=True)
    assert f"same files as step_4: rm -r {last} && ln -s step_4 {last}" in str(err.value)
    assert "\n" not in str(err.value)
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*")) == before
    shutil.rmtree(last)
    last.symlink_to("step_4")  # the fix the message gives
    best = train_downstream(
        "ks", tiny_upstream, task_data["ks"], copy, small_config(), max_steps=6, resume=True
    )
    assert [step for step, _ in best["dev_curve"]] == [2, 4, 6]
