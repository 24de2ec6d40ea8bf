import math

import pytest

from speechssl.config import ConfigError, from_dict
from speechssl.training.config import TrainerConfig
from speechssl.training.schedules import PolynomialDecay, TriStage, build_schedule


def test_linear_warmup_then_decay_to_end():
    s = build_schedule(TrainerConfig(max_steps=100, warmup_steps=10, schedule="linear"))
    assert s(0) == 0.0
    assert s(5) == pytest.approx(0.5)
    assert s(10) == 1.0  # warmup end = peak
    assert s(55) == pytest.approx(0.5)
    assert s(100) == 0.0


def test_polynomial_power_and_end_scale():
    s = build_schedule(
        TrainerConfig(max_steps=20, warmup_steps=10, schedule="polynomial", power=2.0, end_lr_scale=0.1)
    )
    assert isinstance(s, PolynomialDecay)
    assert s(10) == 1.0
    assert s(15) == pytest.approx(0.1 + 0.9 * 0.25)
    assert s(20) == pytest.approx(0.1)


def test_tri_stage_boundaries_match_fairseq():
    cfg = TrainerConfig(
        max_steps=1000,
        schedule="tri_stage",
        tri_stage_ratios=(0.1, 0.4, 0.5),
        init_lr_scale=0.01,
        final_lr_scale=0.05,
    )
    s = build_schedule(cfg)
    assert isinstance(s, TriStage)
    assert s.boundaries() == (100, 500, 1000)
    assert s(0) == pytest.approx(0.01)
    assert s(50) == pytest.approx(0.01 + 0.99 * 0.5)
    assert s(100) == 1.0 and s(499) == 1.0  # hold
    assert s(750) == pytest.approx(math.exp(math.log(0.05) * 0.5))  # half-way through exp decay
    assert s(1000) == pytest.approx(0.05)
    assert s(5000) == pytest.approx(0.05)


def test_config_rejects_bad_values_with_names():
    with pytest.raises(ConfigError, match="tri_stage_ratios"):
        from_dict(TrainerConfig, {"tri_stage_ratios": [0.1, 0.1, 0.1]}, source="x.yaml")
    with pytest.raises(ConfigError, match="unknown key 'acum_steps' in x.yaml; did you mean 'accum_steps'"):
        from_dict(TrainerConfig, {"acum_steps": 2}, source="x.yaml")
    with pytest.raises(ConfigError, match="precision"):
        from_dict(TrainerConfig, {"precision": "fp8"})
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainerConfig(max_steps=10, warmup_steps=20)


def test_constant_schedule_honours_warmup():
    from speechssl.training.config import TrainerConfig
    from speechssl.training.schedules import build_schedule

    schedule = build_schedule(TrainerConfig(schedule="constant", warmup_steps=10, max_steps=100))
    assert schedule(0) == 0.0 and schedule(5) == 0.5 and schedule(10) == 1.0 and schedule(99) == 1.0
