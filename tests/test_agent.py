"""The in-process agent on the CPU: real torch models and optimizers, real sockets, real fork;
only the CUDA allocator is a fake (FakeCudaTorch)."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tests.fakes.fake_cuda import FakeCudaTorch  # noqa: E402
from tests.waiting import wait_for  # noqa: E402
from vramtop import protocol  # noqa: E402
from vramtop.agent._runtime import Agent  # noqa: E402
from vramtop.protocol import (  # noqa: E402
    FrameDecoder,
    ProtocolError,
    encode_frame,
    hello,
    socket_path,
)
from vramtop.sources.agent import AgentSource  # noqa: E402

MiB = 1 << 20


def rounded(nbytes: int) -> int:
    return -(-nbytes // 512) * 512


@pytest.fixture
def agent_dir(tmp_path):
    d = tmp_path / "run"
    return d


@pytest.fixture
def agent(agent_dir, fake_torch):
    a = Agent(interval=0.02, directory=agent_dir, torch=fake_torch, device_type="cpu")
    a.start()
    yield a
    a.stop()


def make_model(frozen: bool = False) -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64))
    if frozen:
        for p in model[0].parameters():
            p.requires_grad_(False)
    return model


def train(model, opt, steps, between=None):
    x = torch.randn(512, 64)
    for _ in range(steps):
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
        if between:
            between()


def test_agent_waits_for_the_program_to_initialise_cuda(agent, agent_dir, fake_torch):
    time.sleep(0.3)
    assert not socket_path(os.getpid(), agent_dir).exists()
    fake_torch.initialized = True  # the program initialised CUDA itself
    wait_for(lambda: agent.active)  # listening, with a first sample to send
    path = socket_path(os.getpid(), agent_dir)
    assert stat.S_IMODE(os.stat(agent_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0
    beacon = (agent_dir / f"{os.getpid()}.json").read_text()
    assert json.loads(beacon)["protocol"] == [protocol.AGENT_PROTOCOL_MIN, protocol.AGENT_PROTOCOL_MAX]
    assert "GPU-c597915a" in beacon
    assert fake_torch.forbidden_calls == []


def test_monitor_receives_allocator_figures_equal_to_the_allocator(agent, agent_dir, fake_torch):
    fake_torch.initialized = True
    fake_torch.allocator.free_blocks = [10 * MiB, 4 * MiB]
    source = AgentSource(agent_dir)
    try:
        (sample,) = wait_for(lambda: source.poll())
        dev = sample.devices[0]
        assert sample.pid == os.getpid()
        assert (dev.stats.allocated, dev.stats.reserved) == (100 * MiB, 128 * MiB)
        assert dev.uuid == "GPU-c597915a-9fc3-3bb6-c3bc-f3d5a34ccdee" and dev.name == "Fake GPU"
        wait_for(lambda: source.poll()[0].devices[0].stats.largest_free_block == 10 * MiB)
    finally:
        source.close()


def test_census_counts_parameters_and_adam_state_exactly(agent, fake_torch):
    fake_torch.initialized = True
    wait_for(lambda: agent.active)
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
    param_bytes = sum(rounded(p.numel() * 4) for p in model.parameters())
    n_params = len(list(model.parameters()))

    def census():
        sample = agent._answers.latest
        return sample and sample.devices and sample.devices[0].census

    train(model, opt, 3)
    c = wait_for(lambda: (c := census()) and c.optimizer_state and c)
    assert c.parameters_trainable == param_bytes
    assert c.gradients == param_bytes  # zero_grad(set_to_none=False) keeps them
    # AdamW: exp_avg and exp_avg_sq per parameter, plus a 4-byte 'step' tensor each.
    assert c.optimizer_state == 2 * param_bytes + n_params * 512
    assert "AdamW" in c.seen
    assert fake_torch.forbidden_calls == []


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "autocast"])
def test_the_agent_says_whether_forward_passes_run_under_autocast(agent, fake_torch, autocast):
    fake_torch.initialized = True
    wait_for(lambda: agent.active)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 64)
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(x).float().pow(2).mean()
        loss.backward()
        opt.step()
    sample = wait_for(lambda: (s := agent._answers.latest) and s.devices and s.devices[0].census and s)
    assert sample.autocast is autocast
    assert sample.devices[0].census.parameters_16bit == 0  # fp32 weights either way
    assert sample.world_size is None  # no process group


class CheckpointedModel(torch.nn.Sequential):
    """Says, as Transformers models do, whether gradient checkpointing is on."""

    is_gradient_checkpointing = True


def test_the_agent_passes_on_what_a_model_says_of_gradient_checkpointing(agent, fake_torch):
    fake_torch.initialized = True
    wait_for(lambda: agent.active)
    plain = make_model()
    train(plain, torch.optim.SGD(plain.parameters(), lr=0.1), 2)
    first = wait_for(lambda: (s := agent._answers.latest) and s.devices and s.devices[0].census and s)
    assert first.checkpointing is None
    model = CheckpointedModel(torch.nn.Linear(64, 64))
    train(model, torch.optim.SGD(model.parameters(), lr=0.1), 2)  # a new optimizer: counted at once
    assert wait_for(lambda: (s := agent._answers.latest) and s.checkpointing) is True


def test_16bit_parameters_are_counted_apart(agent, fake_torch):
    fake_torch.initialized = True
    wait_for(lambda: agent.active)
    model = make_model().to(torch.bfloat16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_bf16 = [torch.randn(8, 64, dtype=torch.bfloat16)]
    for _ in range(3):
        model(train_bf16[0]).float().pow(2).mean().backward()
        opt.step()
    c = wait_for(lambda: (s := agent._answers.latest) and s.devices and s.devices[0].census)
    assert c.parameters_16bit == c.parameters_trainable > 0


def test_the_world_size_comes_from_the_process_group(agent, fake_torch, tmp_path):
    import torch.distributed as dist

    fake_torch.initialized = True
    wait_for(lambda: agent.active)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = make_model()
        train(model, torch.optim.SGD(model.parameters(), lr=0.1), 2)
        assert wait_for(lambda: (s := agent._answers.latest) and s.world_size) == 1
        assert agent._answers.latest.rank == 0  # no RANK in the environment: the process group's
    finally:
        dist.destroy_process_group()


def test_the_monitor_gets_the_launchers_environment_read_when_the_agent_starts(agent_dir, fake_torch,
                                                                             monkeypatch):
    # What torchrun sets in each worker: the monitor puts the ranks of one job together with it.
    env = {"RANK": "3", "LOCAL_RANK": "3", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "8",
           "TORCHELASTIC_RUN_ID": "none", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    a = Agent(interval=0.02, directory=agent_dir, torch=fake_torch, device_type="cpu")
    a.start()
    source = AgentSource(agent_dir)
    try:
        fake_torch.initialized = True
        (sample,) = wait_for(lambda: source.poll())
        monkeypatch.setenv("RANK", "5")  # read once: a later change is not the launcher's
        launch = sample.launch
        assert launch is not None and sample.rank == 3
        assert (launch.rank, launch.local_rank, launch.world_size, launch.local_world_size) == (3, 3, 8, 8)
        assert (launch.run_id, launch.master, launch.parent_pid) == ("none", "127.0.0.1:29500", os.getppid())
        time.sleep(0.1)
        assert source.poll()[0].rank == 3
        assert json.loads((agent_dir / f"{os.getpid()}.json").read_text())["rank"] == 3
    finally:
        source.close()
        a.stop()


def test_frozen_parameters_are_found_through_the_model_and_tied_weights_count_once(agent, fake_torch):
    fake_torch.initialized = True
    wait_for(lambda: agent.active)
    model = make_model(frozen=True)
    tied = torch.nn.Linear(64, 64, bias=False)
    tied.weight = model[2].weight if model[2].weight.shape == tied.weight.shape else tied.weight
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    frozen_bytes = sum(rounded(p.numel() * 4) for p in model[0].parameters())
    trainable_bytes = sum(rounded(p.numel() * 4) for p in model[2].parameters())
    x = torch.randn(2048, 64)

    def census():
        sample = agent._answers.latest
        return sample and sample.devices and sample.devices[0].census

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # forward runs long enough to be seen on the stack
        for _ in range(5):
            model(x).sum().backward()
            opt.step()
        c = census()
        if c and c.parameters_frozen:
            break
    c = census()
    assert c and c.parameters_frozen == frozen_bytes
    assert c.parameters_trainable == trainable_bytes
    assert "Sequential" in c.seen


def test_tied_weights_are_counted_once(agent, fake_torch):
    fake_torch.initialized = True
    wait_for(lambda: agent.active)

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(1000, 64)
            self.head = torch.nn.Linear(64, 1000, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, x):
            return self.head(self.embed(x))

    model = Tied()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randint(0, 1000, (64,))
    model(x).sum().backward()
    opt.step()
    c = wait_for(lambda: agent._answers.latest and agent._answers.latest.devices[0].census)
    assert c.parameters_trainable == rounded(1000 * 64 * 4)


def test_step_peak_is_exact_when_the_allocator_peak_rises_and_a_lower_bound_otherwise(agent, fake_torch):
    fake_torch.initialized = True
    wait_for(lambda: agent.active)
    alloc = fake_torch.allocator
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 64)

    def step(peak):
        alloc.set(peak)  # activations at their peak
        model(x).sum().backward()
        alloc.set(100 * MiB)  # back to the persistent level at the boundary
        opt.step()
        time.sleep(0.06)  # real steps take time; faster ones are grouped by the agent

    step(300 * MiB)
    step(400 * MiB)  # peak rises: exact
    last = wait_for(lambda: (s := agent._answers.latest.devices[0].last_step) and s.step == 2 and s)
    assert last.exact and last.peak_allocated == 400 * MiB and last.persistent == 100 * MiB
    step(350 * MiB)  # below the old peak: not visible exactly
    last = wait_for(lambda: (s := agent._answers.latest.devices[0].last_step) and s.step == 3 and s)
    assert not last.exact and last.peak_allocated <= 350 * MiB


def test_step_boundary_reads_are_spaced_by_their_cost(agent, fake_torch):
    # A read that takes 2 ms may take 0.1% of the training thread's time: one per two seconds at most,
    # however fast the steps (without the bound: one per 50 ms, some 10 in this loop).
    fake_torch.initialized = True
    wait_for(lambda: agent.active)
    fake_torch.allocator.read_delay = 0.002
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # The first read comes with the new optimizer and measures the cost; the first steps are
    # measured phase by phase (the bill at the peak), then spaced by their own cost.
    train(model, opt, 6)
    fake_torch.allocator.reads_by_thread.clear()
    started = time.monotonic()
    train(model, opt, 40, between=lambda: time.sleep(0.01))
    elapsed = time.monotonic() - started  # ~0.5 s; longer on a loaded machine, which allows more reads
    reads = fake_torch.allocator.reads_by_thread.get(threading.get_ident(), 0)
    assert agent.step == 46 and reads <= 2 + int(elapsed), (reads, elapsed)


def test_in_the_steady_state_the_step_hook_only_counts_steps_whatever_the_depth(agent, fake_torch, monkeypatch):
    # A launch-bound loop pays for every line the hook runs: between two boundaries with work
    # (an allocator read, a measurement of the phases) the hook counts the step and returns.
    from torch.nn.modules import module as nn_module

    fake_torch.initialized = True
    wait_for(lambda: agent.active)
    fake_torch.allocator.read_delay = 0.002  # reads spaced ~1 s apart (GIL_BUDGET)
    model = torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(50)])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(4, 16)

    def train_steps(count):
        for _ in range(count):
            model(x).sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    train_steps(10)  # discovery settles, the first steps are measured
    boundaries = []
    work = agent._step_boundary
    monkeypatch.setattr(agent, "_step_boundary", lambda optimizer: (boundaries.append(agent.step), work(optimizer)))
    started = time.monotonic()
    train_steps(100)
    elapsed = time.monotonic() - started
    assert agent.step == 110  # every step counted
    assert len(boundaries) <= 2 + 2 * int(elapsed), (boundaries, elapsed)  # reads and measurements only
    assert not model._forward_pre_hooks and not model._forward_hooks
    assert not nn_module._global_forward_pre_hooks and not nn_module._global_forward_hooks


def test_an_agent_that_gives_up_in_the_steady_state_takes_its_hooks_off_at_the_next_step(tmp_path, fake_torch):
    fake_torch.initialized = True
    a = Agent(interval=0.02, directory=tmp_path / "run", torch=fake_torch, device_type="cpu")
    a.start()
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    try:
        wait_for(lambda: a.active)
        fake_torch.allocator.read_delay = 0.01  # slow reads: nothing is due for seconds
        train(model, opt, 10)

        def broken(*args):
            raise RuntimeError("the sampler cannot read")

        a._sampler.read = broken  # its ticks fail until the agent's thread gives up
        wait_for(lambda: not a._thread.is_alive(), timeout=10)
        train(model, opt, 1)
        assert a._phases.removed and not a._discovery.watching and a.step == 10
    finally:
        a.stop()


def test_a_loss_module_made_every_step_does_not_keep_the_module_hooks_on(agent, fake_torch):
    from torch.nn.modules import module as nn_module

    fake_torch.initialized = True
    wait_for(lambda: agent.active)
    model = make_model()
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randn(8, 64)
    for _ in range(60):  # each step calls a new module outside the model: a new "model" each time
        loss = torch.nn.MSELoss()(model(x), torch.zeros(8, 64))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert not nn_module._global_forward_pre_hooks and not nn_module._global_forward_hooks
    census = wait_for(lambda: (s := agent._answers.latest) and s.devices and s.devices[0].census)
    assert census.parameters_trainable == sum(rounded(p.numel() * 4) for p in model.parameters())


def test_no_sample_message_is_built_while_nobody_is_connected(agent, agent_dir, fake_torch, monkeypatch):
    from vramtop.agent import _answers

    built = []
    to_dict = _answers.to_dict
    monkeypatch.setattr(_answers, "to_dict", lambda sample: built.append(sample) or to_dict(sample))
    fake_torch.initialized = True
    wait_for(lambda: agent.active)
    ticks = agent._answers.latest
    wait_for(lambda: agent._answers.latest is not ticks)  # the sampler ticked again
    assert built == []
    source = AgentSource(agent_dir)
    try:
        wait_for(lambda: source.poll() and len(built) >= 3)  # a client: samples are built
        assert len({id(sample) for sample in built}) == len(built)  # each once, asked for and sent alike
    finally:
        source.close()


def test_the_census_backs_off_while_nothing_changes(agent, fake_torch):
    fake_torch.initialized = True
    wait_for(lambda: agent.active)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train(model, opt, 1)  # a new optimizer: counted at once
    gaps = []
    for _ in range(5):  # the same tensors every time: 2, 4, 8, 8, 8 seconds apart
        agent._census.take(fake_torch, agent._devices.states)
        gaps.append(agent._census.gap)
    assert gaps == [2.0, 4.0, 8.0, 8.0, 8.0]
    extra = torch.nn.Linear(64, 64)  # a new model joins the loop: counted every second again
    agent._discovery.models.add(extra)
    agent._census.take(fake_torch, agent._devices.states)
    assert agent._census.gap == 1.0


def test_agent_failures_never_reach_the_training_loop(agent, fake_torch):
    fake_torch.initialized = True
    wait_for(lambda: agent.active)
    fake_torch.allocator.fail_stats = True  # every allocator read now raises
    model = make_model()
    opt = torch.optim.AdamW(model.parameters())
    train(model, opt, 5)  # must not raise
    assert fake_torch.forbidden_calls == []


def test_many_monitors_a_garbage_client_and_a_stuck_client(agent, agent_dir, fake_torch):
    fake_torch.initialized = True
    wait_for(lambda: agent.active)  # listening, with a first sample to send
    path = socket_path(os.getpid(), agent_dir)
    stuck = socket.socket(socket.AF_UNIX)
    stuck.connect(str(path))
    stuck.sendall(encode_frame(hello("monitor")))  # then never reads
    garbage = socket.socket(socket.AF_UNIX)
    garbage.connect(str(path))
    garbage.sendall(b"\x00\x00\x00\x05hello" + b"\xff" * 100)
    sources = [AgentSource(agent_dir) for _ in range(5)]
    try:
        for s in sources:
            wait_for(lambda s=s: s.poll())
        # The garbage client was told why and disconnected.
        garbage.settimeout(5)
        data = b""
        while chunk := garbage.recv(65536):
            data += chunk
        assert b"error" in data
        # The stuck client only costs dropped frames; the others keep receiving.
        wait_for(lambda: agent._server.dropped > 0, timeout=30)
        before = sources[0].poll()[0].time
        wait_for(lambda: sources[0].poll()[0].time > before)
    finally:
        for s in sources:
            s.close()
        stuck.close()
        garbage.close()


def test_protocol_version_mismatch_is_refused_with_a_message(agent, agent_dir, fake_torch):
    fake_torch.initialized = True
    wait_for(lambda: agent.active)  # listening, with a first sample to send
    path = socket_path(os.getpid(), agent_dir)
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(path))
    sock.sendall(encode_frame({"type": "hello", "protocol": [7, 9]}))
    sock.settimeout(5)
    decoder = FrameDecoder()
    messages = []
    while chunk := sock.recv(65536):
        messages += decoder.feed(chunk)
    assert messages[0]["type"] == "hello"
    assert messages[-1]["type"] == "error" and "upgrade" in messages[-1]["message"]


def test_the_beacon_and_the_hello_carry_the_protocol_range_of_protocol_py(agent_dir, fake_torch, monkeypatch):
    # A range no release has spoken: a beacon or hello that hard-codes its own would not show it.
    monkeypatch.setattr(protocol, "AGENT_PROTOCOL_MAX", protocol.AGENT_PROTOCOL_MAX + 2)
    expected = [protocol.AGENT_PROTOCOL_MIN, protocol.AGENT_PROTOCOL_MAX]
    fake_torch.initialized = True
    a = Agent(interval=0.02, directory=agent_dir, torch=fake_torch, device_type="cpu")
    a.start()
    try:
        wait_for(lambda: a.active)
        beacon = json.loads((agent_dir / f"{os.getpid()}.json").read_text())
        assert beacon["protocol"] == expected
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(socket_path(os.getpid(), agent_dir)))
            sock.settimeout(5)
            decoder = FrameDecoder()
            messages = []
            while not messages and (chunk := sock.recv(65536)):
                messages += decoder.feed(chunk)
        assert messages[0]["type"] == "hello" and messages[0]["protocol"] == expected
    finally:
        a.stop()


def test_forked_child_does_not_serve_and_parent_keeps_serving(agent, agent_dir, fake_torch):
    fake_torch.initialized = True
    wait_for(lambda: agent.active)
    pid = os.fork()
    if pid == 0:  # the child: the agent must be inert and must not remove the parent's files
        code = 1
        try:
            param = torch.nn.Parameter(torch.ones(4))
            param.grad = torch.ones(4)
            opt = torch.optim.SGD([param], lr=0.1)
            opt.step()  # the global hook runs in the child and must stay silent
            code = 0 if not agent.active and agent.step == 0 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert socket_path(os.getpid(), agent_dir).exists()
    source = AgentSource(agent_dir)
    try:
        wait_for(lambda: source.poll())
    finally:
        source.close()


def test_dataloader_workers_with_fork_run_normally(agent, fake_torch):
    fake_torch.initialized = True
    wait_for(lambda: agent.active)
    data = torch.utils.data.TensorDataset(torch.arange(64.0))
    loader = torch.utils.data.DataLoader(data, batch_size=8, num_workers=2,
                                         multiprocessing_context="fork")
    assert sum(batch[0].sum().item() for batch in loader) == sum(range(64))


def test_insecure_directory_is_refused_and_both_sides_say_so(tmp_path, fake_torch, capfd):
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    fake_torch.initialized = True
    a = Agent(interval=0.02, directory=loose, torch=fake_torch, device_type="cpu")
    a.start()
    try:
        wait_for(lambda: a.error)
        assert "accessible to other users" in a.error
        assert not list(loose.iterdir())
        # The program hears it once, on its own stderr: no bill will come from this agent.
        err = wait_for(lambda: capfd.readouterr().err)
        assert err.count("vramtop agent: not serving PID") == 1 and "accessible to other users" in err
    finally:
        a.stop()
    link = tmp_path / "link"
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    link.symlink_to(target)
    source = AgentSource(link)
    assert source.poll() == ()
    assert "symlink" in (source.directory_problem or "")
    # The monitor's sample carries it, with the fix, for the TUI's banner, --once and record.
    (problem,) = source.visible_problems()
    assert "symlink" in problem and "XDG_RUNTIME_DIR" in problem


def test_an_agent_that_gave_up_takes_its_module_hooks_off_at_the_next_step(tmp_path, fake_torch):
    from torch.nn.modules import module as nn_module

    def module_hooks() -> int:
        return len(nn_module._global_forward_pre_hooks) + len(nn_module._global_forward_hooks)

    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)  # refused: the agent gives up right after registering its hooks
    before = module_hooks()
    fake_torch.initialized = True
    a = Agent(interval=0.02, directory=loose, torch=fake_torch, device_type="cpu")
    a.start()
    try:
        wait_for(lambda: a.error)
        model = make_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        assert module_hooks() == before + 2  # inert, yet every module call pays for them
        train(model, opt, 1)
        assert module_hooks() == before
        train(model, opt, 2)  # and the program goes on as before
        assert a.step == 0
    finally:
        a.stop()


def test_stale_socket_of_a_dead_process_is_reported_and_removed(tmp_path):
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = d / f"{dead.pid}.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # a socket file nobody listens on
    (d / f"{dead.pid}.json").write_text("{}")
    source = AgentSource(d)
    assert source.poll() == ()
    assert "stale" in source.problems[dead.pid]
    assert not path.exists() and not (d / f"{dead.pid}.json").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_other_users_are_refused_by_peer_credentials(fake_torch):
    import shutil
    import tempfile

    # The agent's directory is 0700, which already keeps other users out. To exercise the
    # second wall, SO_PEERCRED, open the path for a moment so another user can reach the socket.
    top = Path(tempfile.mkdtemp(prefix="vramtop-peercred-"))
    agent_dir = top / "run"
    fake_torch.initialized = True
    a = Agent(interval=0.02, directory=agent_dir, torch=fake_torch, device_type="cpu")
    a.start()
    try:
        wait_for(lambda: a.active)
        path = socket_path(os.getpid(), agent_dir)
        os.chmod(top, 0o711)
        os.chmod(agent_dir, 0o711)
        os.chmod(path, 0o777)
        code = (
            "import os, socket\n"
            "os.setuid(65534)\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            f"s.connect({str(path)!r})\n"
            "s.settimeout(5)\n"
            "print('GOT', len(s.recv(100)))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == "GOT 0", out.stderr  # accepted by the kernel, closed without a byte
        assert a._server.rejected == 1
    finally:
        a.stop()
        shutil.rmtree(top, ignore_errors=True)


def test_importing_the_agent_imports_no_torch_textual_or_pynvml():
    code = ("import sys, vramtop.agent\n"
            "print([m for m in ('torch', 'textual', 'rich', 'pynvml', 'psutil') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_public_start_never_raises_and_is_idempotent(tmp_path, monkeypatch):
    import vramtop.agent as agent_api

    monkeypatch.setattr(agent_api, "_agent", None)
    assert agent_api.start(directory=tmp_path / "a") is True
    first = agent_api.current()
    assert agent_api.start(directory=tmp_path / "a") is True and agent_api.current() is first
    agent_api.stop()
    assert agent_api.current() is None


def test_an_agent_that_vanishes_is_reported_by_the_source(agent, agent_dir, fake_torch):
    fake_torch.initialized = True
    source = AgentSource(agent_dir)
    try:
        wait_for(lambda: source.poll())
        agent.stop()
        wait_for(lambda: source.poll() == () and os.getpid() in source.problems)
    finally:
        source.close()
    assert not Path(socket_path(os.getpid(), agent_dir)).exists()


def test_tensors_are_only_touched_on_the_training_thread(agent_dir, fake_torch, monkeypatch):
    """The autograd engine writes .grad from its own threads without the GIL: the sampler
    thread reading a tensor races with it (it crashed a process on an H100). Every tensor read
    must happen on the thread that trains."""
    readers = set()
    original = torch.Tensor.untyped_storage

    def recording(self):
        readers.add(threading.get_ident())
        return original(self)

    monkeypatch.setattr(torch.Tensor, "untyped_storage", recording)
    fake_torch.initialized = True
    agent = Agent(interval=0.1, directory=agent_dir, torch=fake_torch, device_type="cpu")
    agent.start()
    wait_for(lambda: agent.active)
    model = make_model()
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randn(64, 64)
    deadline = time.monotonic() + 3  # many ticks and several censuses
    while time.monotonic() < deadline:
        model(x).sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        time.sleep(0.005)
    agent.stop()
    assert agent._answers.latest.devices[0].census is not None and agent.error is None
    assert readers == {threading.get_ident()}


def test_a_device_that_gets_memory_after_cuda_init_is_picked_up_at_the_first_step(agent_dir):
    fake = FakeCudaTorch(torch)  # CUDA initialised, nothing allocated yet
    fake.initialized = True
    a = Agent(interval=0.02, directory=agent_dir, torch=fake, device_type="cpu")
    a.start()
    try:
        wait_for(lambda: a.active and a._answers.latest is not None)
        assert a._answers.latest.devices == ()
        fake.allocator.set(64 * MiB)  # the first allocation
        model = make_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model(torch.randn(8, 64)).sum().backward()
        opt.step()
        # Known at once (not at the next periodic rescan), with a census from this very step.
        assert list(a._devices.states) == [0] and a._devices.states[0].census is not None
    finally:
        a.stop()


def test_an_oom_leaves_a_post_mortem_file_and_a_sticky_report(agent, agent_dir, fake_torch, tmp_path,
                                                               monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)  # the program's working directory: nothing may be written there
    fake_torch.initialized = True
    fake_torch.allocator.free_blocks = [3 * MiB]
    wait_for(lambda: agent.active)
    model = make_model()
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(8, 64)).sum().backward()
    opt.step()
    observer = fake_torch.oom_observers[0]  # what torch's allocator calls when it cannot allocate
    observer(0, 2 << 30, 80 << 30, 1 << 20)
    observer(0, 2 << 30, 80 << 30, 1 << 20)  # OOMs come in bursts: one message for them all
    assert not list(tmp_path.glob("*oom*"))
    files = sorted(agent_dir.glob(f"oom-{os.getpid()}-*.json"))
    assert len(files) == 2 and stat.S_IMODE(os.stat(files[-1]).st_mode) == 0o600
    doc = json.loads(files[-1].read_text())
    assert doc["schema"] == "vramtop.oom" and doc["report"]["requested"] == 2 << 30
    assert doc["report"]["allocated"] == 100 * MiB and doc["report"]["step"] == 1
    assert doc["report"]["census"]["optimizer_state"] > 0 and doc["summary"]
    assert doc["report"]["pid"] == os.getpid() and doc["report"]["path"] == str(files[-1])
    assert capfd.readouterr().err.count("post-mortem:") == 1
    # The sticky report in the samples is the latest OOM's.
    report = wait_for(lambda: (r := (s := agent._answers.latest) and s.last_oom) and r.path == str(files[-1]) and r)
    assert report.largest_free_block == 3 * MiB
    assert json.loads(files[-1].read_text())["summary"][0].startswith("OOM at step 1")
    assert report.largest_live_blocks == (100 * MiB,)


def test_an_oom_reaches_a_connected_monitor_before_the_observer_returns(agent, agent_dir, fake_torch):
    # An uncaught OOM ends the process within milliseconds of the observer: the post-mortem must
    # already be on its way to the monitor when the observer returns, not wait for the next tick.
    fake_torch.initialized = True
    wait_for(lambda: agent.active)
    source = AgentSource(agent_dir)
    try:
        wait_for(lambda: source.poll())
        agent.interval = 3600.0  # no more ticks: only the OOM path can deliver it
        time.sleep(0.1)
        fake_torch.oom_observers[0](0, 3 << 30, 80 << 30, 1 << 20)
        agent._server.stop()  # the process dies: its socket closes right after the observer
        events = wait_for(lambda: source.poll() is not None and source.drain_events(), timeout=5)
        (oom,) = [e for e in events if e["kind"] == "oom"]
        assert oom["pid"] == os.getpid() and oom["data"]["requested"] == 3 << 30
        assert source.drain_events() == []  # once, though its file is there too
    finally:
        source.close()


def test_the_post_mortem_never_follows_a_planted_symlink(tmp_path):
    from vramtop.agent import _postmortem
    from vramtop.model import OomReport
    from vramtop.protocol import postmortem_name

    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    report = OomReport(time=1_800_000_000.0, device=0, requested=1, device_limit=2, device_free=0, allocated=1,
                       reserved=1, step=0, phase="forward")
    (run / postmortem_name(os.getpid(), report.time)).symlink_to(victim)
    assert _postmortem.write(report, run) is None
    assert victim.read_text() == "keep me"
    # A directory someone else could write to is refused as the socket's is.
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o777)
    os.chmod(open_dir, 0o777)
    assert _postmortem.write(report, open_dir) is None and not list(open_dir.iterdir())


def test_a_deeply_nested_frame_costs_only_its_own_connection(agent, agent_dir, fake_torch):
    # 1,500 nested "[" made json.loads raise RecursionError (not a ValueError): the server thread
    # died with it and every later monitor was refused. Now that client alone is dropped. (A
    # frame that opens with "[" is refused at its first byte now: this one is an object.)
    fake_torch.initialized = True
    wait_for(lambda: agent.active)
    deep = b'{"type":' + b"[" * 1500 + b"]" * 1500 + b"}"
    rogue = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    rogue.connect(str(socket_path(os.getpid(), agent_dir)))
    rogue.sendall(encode_frame(hello("monitor")) + len(deep).to_bytes(4, "big") + deep)
    rogue.settimeout(5)
    received = b""
    while True:
        chunk = rogue.recv(65536)
        if not chunk:
            break
        received += chunk
    rogue.close()
    assert b"nests too deep" in received  # told why, then hung up on
    source = AgentSource(agent_dir)
    try:
        (sample,) = wait_for(lambda: source.poll())
        assert sample.pid == os.getpid()
    finally:
        source.close()


def test_the_monitor_refuses_a_deeply_nested_frame_from_a_rogue_agent():
    decoder = FrameDecoder()
    deep = b"{\"type\":" + b"[" * 1500 + b"]" * 1500 + b"}"
    with pytest.raises(ProtocolError, match="nests too deep"):
        decoder.feed(len(deep).to_bytes(4, "big") + deep)


def test_a_request_flood_is_bounded_and_the_hello_still_comes_first(agent, agent_dir, fake_torch):
    # 211k requests once queued 211k answers in the training process (253 MB, step p99 x170).
    fake_torch.initialized = True
    wait_for(lambda: agent.active)
    request = encode_frame({"type": "request", "what": "sample"})

    def client(requests: int) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(socket_path(os.getpid(), agent_dir)))
        s.sendall(encode_frame(hello("monitor")) + request * requests)
        return s

    # More than a monitor asks, less than abuse: answered at 20 a second, its queue capped.
    greedy = client(150)
    time.sleep(1.0)  # it never reads meanwhile
    (held,) = agent._server._clients.values()
    assert len(held.queue) <= 32
    greedy.settimeout(5)
    messages = FrameDecoder(max_bytes=1 << 22).feed(greedy.recv(1 << 20))
    assert messages[0]["type"] == "hello"  # the queue cap never took the hello
    greedy.close()
    wait_for(lambda: agent._server.client_count == 0)
    # A flood: once dropped, so the flooder reconnected and its next 64 KiB were decoded whole.
    # Now no more of it is decoded than its budget: the rest waits in its socket, and the
    # flooder waits in send once that is full.
    server = agent._server
    decoded_before = server.decoded
    started = time.monotonic()
    flood = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    flood.connect(str(socket_path(os.getpid(), agent_dir)))
    flood.setblocking(False)
    payload = encode_frame(hello("monitor")) + request * 100_000  # 4 MB, never read
    sent = 0
    blocked_at = None
    while sent < len(payload) and time.monotonic() - started < 10:
        try:
            sent += flood.send(payload[sent : sent + 65536])
        except BlockingIOError:
            blocked_at = blocked_at or sent
            if time.monotonic() - started > 1.5:
                break
            time.sleep(0.01)
    assert blocked_at is not None and sent < len(payload)  # it waits: the agent stopped reading it
    elapsed = time.monotonic() - started
    decoded = server.decoded - decoded_before
    assert 0 < decoded <= 20 * (int(elapsed) + 2)  # 20 a second at most, from 100,000 sent
    assert server.client_count == 1  # held, muted, not dropped: a reconnection would cost more
    source = AgentSource(agent_dir)
    try:
        assert wait_for(lambda: source.poll(), timeout=5)  # a real monitor is served meanwhile
    finally:
        source.close()
    flood.close()
    wait_for(lambda: server.client_count == 0, timeout=10)  # and the flooder goes once it hangs up


def test_idle_connections_never_lock_a_monitor_out(agent, agent_dir, fake_torch, monkeypatch):
    # Sixteen connections that never say hello once took every place, and the monitor was told
    # "Broken pipe". Now a silent one makes room (and all of them go after the hello deadline).
    from vramtop.agent import _server

    monkeypatch.setattr(_server, "MAX_CLIENTS", 16)
    fake_torch.initialized = True
    wait_for(lambda: agent.active)
    idle = []
    for _ in range(16):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(socket_path(os.getpid(), agent_dir)))
        idle.append(s)
    wait_for(lambda: agent._server.client_count == 16)
    source = AgentSource(agent_dir)
    try:
        (sample,) = wait_for(lambda: source.poll(), timeout=5)
        assert sample.pid == os.getpid()
    finally:
        source.close()
        for s in idle:
            s.close()
    monkeypatch.setattr(_server, "HELLO_DEADLINE", 0.2)
    late = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    late.connect(str(socket_path(os.getpid(), agent_dir)))
    late.settimeout(5)
    received = b""
    while chunk := late.recv(65536):  # the agent hangs up once the deadline has passed
        received += chunk
    late.close()
    (first, *_) = FrameDecoder().feed(received)  # it was greeted, then let go when it stayed silent
    assert first["type"] == "hello"


def test_a_stale_socket_whose_pid_was_reused_is_removed(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        # An agent that died long ago left its files; the PID now belongs to another process.
        (run / f"{other.pid}.sock").write_text("")
        (run / f"{other.pid}.json").write_text(json.dumps({"pid": other.pid, "started": 1000.0}))
        source = AgentSource(run)
        assert source.poll() == ()
        assert "stale" in source.problems[other.pid] or "cannot connect" in source.problems[other.pid]
        assert not (run / f"{other.pid}.sock").exists() and not (run / f"{other.pid}.json").exists()
        # One whose agent started after the process did is not touched: it may be coming up.
        (run / f"{other.pid}.sock").write_text("")
        (run / f"{other.pid}.json").write_text(json.dumps({"pid": other.pid, "started": time.time() + 60}))
        AgentSource(run).poll()
        assert (run / f"{other.pid}.sock").exists()
    finally:
        other.kill()
        other.wait()


def test_a_relative_xdg_runtime_dir_is_not_used(tmp_path, monkeypatch):
    from vramtop.protocol import runtime_dir

    (tmp_path / "run").mkdir(mode=0o700)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "run")  # the agent's and a monitor's cwd would differ
    assert runtime_dir().is_absolute()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    assert runtime_dir() == tmp_path / "run" / "vramtop"


def test_a_socket_named_for_no_possible_process_is_skipped_not_raised(tmp_path):
    directory = tmp_path / "vramtop"
    directory.mkdir(mode=0o700)
    for name in ("99999999999999999999", "0", "-5"):  # the first raised OverflowError in os.kill
        (directory / f"{name}.sock").touch()
    source = AgentSource(directory)
    assert source.poll() == ()
