"""The superb row group's pieces (the suite itself takes minutes: `python -m benchmarks --only superb`)."""

from __future__ import annotations

from benchmarks import superb
from benchmarks.__main__ import GROUPS
from speechssl.interop.upstream import load_upstream


def test_superb_group_is_registered_and_its_configs_differ_only_by_the_cache(tmp_path):
    assert GROUPS["superb"] is superb.run
    for task in superb.TASKS:
        cached, plain = superb.task_config(task, 8, tmp_path / "c"), superb.task_config(task, 8, None)
        assert cached.feature_cache == str(tmp_path / "c") and plain.feature_cache is None
        assert cached.lr_sweep == plain.lr_sweep == [1e-2, 1e-3, 1e-4] and cached.patience is None
        assert (cached.max_seconds is not None) == (task == "sid")


def test_the_suite_upstream_is_the_demos_mini_hubert(tmp_path):
    up = load_upstream(superb.mini_hubert(tmp_path / "mini"))
    assert (up.num_layers, up.hidden_dim, up.downsample_rate) == (4, 128, 320)
