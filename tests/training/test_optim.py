import torch
from torch import nn

from speechssl.testing.training import ToyModel
from speechssl.training.config import TrainerConfig
from speechssl.training.optim import build_optimizer, split_decay


def test_no_weight_decay_on_norms_biases_and_1d_params():
    model = nn.Sequential(ToyModel(), nn.GroupNorm(2, 4), nn.Conv1d(4, 4, 3))
    decay, no_decay = split_decay(model)
    assert decay == ["0.proj.weight", "0.out.weight", "2.weight"]
    assert set(no_decay) == {
        "0.mask_emb",
        "0.proj.bias",
        "0.norm.weight",
        "0.norm.bias",
        "0.out.bias",
        "1.weight",
        "1.bias",
        "2.bias",
    }


def test_optimizer_groups_apply_decay_only_to_matrices():
    model = ToyModel()
    opt = build_optimizer(model, TrainerConfig(weight_decay=0.1, lr=1.0))
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["decay"]["weight_decay"] == 0.1 and by_name["no_decay"]["weight_decay"] == 0.0
    # With zero gradients AdamW only applies decay: 1-d params must not move.
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    assert torch.equal(model.mask_emb, before["mask_emb"])
    assert torch.equal(model.norm.weight, before["norm.weight"])
    assert not torch.equal(model.proj.weight, before["proj.weight"])
