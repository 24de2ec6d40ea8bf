"""DDP over NCCL in one process (world size 1, file:// store): a step equals the plain module's."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from tests.gpu._gpu import GPU

pytestmark = GPU


@pytest.fixture
def nccl_group(tmp_path):
    if not dist.is_nccl_available():
        pytest.fail("this CUDA build of torch has no NCCL")
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1,
                            device_id=torch.device("cuda", 0))  # fmt: skip
    yield
    dist.destroy_process_group()


def test_ddp_step_over_nccl_matches_the_plain_module(nccl_group):
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(37, 64), torch.nn.GELU(), torch.nn.Linear(64, 5)).cuda()
    wrapped = DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Linear(37, 64), torch.nn.GELU(), torch.nn.Linear(64, 5)).cuda(),
        device_ids=[0],
    )
    wrapped.module.load_state_dict(plain.state_dict())
    x = torch.randn(11, 37, device="cuda")
    plain(x).square().mean().backward()
    wrapped(x).square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), wrapped.module.parameters()):
        assert a.grad is not None and a.grad.abs().sum() > 0
        torch.testing.assert_close(b.grad, a.grad, msg=name)
    assert dist.get_backend() == "nccl"
    t = torch.tensor([3.0, -1.0], device="cuda")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)  # a collective really runs on the NCCL communicator
    assert t.tolist() == [3.0, -1.0]
