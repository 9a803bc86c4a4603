"""The census where it cannot see everything: it counts what is the process's own and says what
it could not attribute, rather than give a wrong number (real torch, CPU tensors)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from vramtop.agent._census import take_census  # noqa: E402


def model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64))


def param_bytes(m: torch.nn.Module) -> int:
    return sum(-(-p.numel() * 4 // 512) * 512 for p in m.parameters())


def step(m: torch.nn.Module, opt) -> None:
    m(torch.randn(8, 64)).pow(2).mean().backward()
    opt.step()


def test_an_optimizer_it_never_saw_step_leaves_gradients_and_state_unattributed():
    # DeepSpeed's ZeRO optimizers do not derive from torch.optim.Optimizer: no step hook fires,
    # so the census knows the model (from its forward) but no optimizer.
    m = model()
    m(torch.randn(8, 64)).sum().backward()
    (census,) = take_census(torch, [], [m], "cpu").values()
    assert census.parameters_trainable == param_bytes(m)
    assert census.gradients == param_bytes(m)  # found through the model's parameters
    assert census.optimizer_state == 0
    assert not census.complete
    assert "no optimizer step seen yet: optimizer state not attributed" in census.seen


class HomeMadeMomentum(torch.optim.Optimizer):
    """Keeps its buffers in an attribute of its own instead of ``self.state``."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, {"lr": lr})
        self.buffers = [torch.zeros_like(p) for g in self.param_groups for p in g["params"]]

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"]]
        for p, buf in zip(params, self.buffers, strict=True):
            buf.mul_(0.9).add_(p.grad)
            p.add_(buf, alpha=-self.param_groups[0]["lr"])


HomeMadeMomentum.__module__ = "somebodys.optim"  # what a class from another package says


def test_an_optimizer_that_keeps_its_state_elsewhere_is_said_so():
    m = model()
    opt = HomeMadeMomentum(m.parameters())
    step(m, opt)
    (census,) = take_census(torch, [opt], [m], "cpu").values()
    assert census.optimizer_state == 0  # not found: not guessed
    assert not census.complete
    assert "HomeMadeMomentum keeps nothing in .state" in census.seen


def test_torch_sgd_without_momentum_keeps_no_state_and_that_is_complete():
    m = model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    step(m, opt)
    (census,) = take_census(torch, [opt], [m], "cpu").values()
    assert census.optimizer_state == 0 and census.complete


def test_a_sharded_parameter_counts_only_the_local_shard(tmp_path):
    dist = pytest.importorskip("torch.distributed")
    tensor_api = pytest.importorskip("torch.distributed.tensor")
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        # This rank holds rows 0-63 of a 128 x 64 weight (FSDP2 keeps parameters this way).
        local = torch.randn(64, 64)
        weight = torch.nn.Parameter(tensor_api.DTensor.from_local(
            local, mesh, [tensor_api.Shard(0)], run_check=False, shape=torch.Size((128, 64)), stride=(64, 1)))
        assert weight.untyped_storage().nbytes() == 128 * 64 * 4  # what a naive count would take
        holder = torch.nn.Module()
        holder.weight = weight
        (census,) = take_census(torch, [], [holder], "cpu").values()
        assert census.parameters_trainable == 64 * 64 * 4
    finally:
        dist.destroy_process_group()
