"""Where an OOM happened: the module running and the program's line, on the CPU.

A real nested torch model runs on the CPU; only the CUDA allocator is a fake (FakeCudaTorch).
An OOM cannot be made without CUDA, so the model calls what torch's allocator would call at
one (the observer the agent attached) from inside a module's forward, or from inside a backward.
"""

from __future__ import annotations

import json
import os
import pickle
import stat
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tests.fakes.fake_cuda import FakeCudaTorch  # noqa: E402
from tests.waiting import wait_for  # noqa: E402
from vramtop.agent._place import CodeKinds, nearest_parameters, pick_frames  # noqa: E402
from vramtop.agent._runtime import Agent  # noqa: E402
from vramtop.analysis.oom_place import where  # noqa: E402
from vramtop.analysis.postmortem import postmortem_of  # noqa: E402
from vramtop.codec import from_dict, to_dict  # noqa: E402
from vramtop.model import CodeFrame, OomReport  # noqa: E402

MiB = 1 << 20
HERE = os.path.basename(__file__)




class OomInBackward(torch.autograd.Function):
    """Identity whose backward makes an allocation that fails (``fail``)."""

    fail = None

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        if OomInBackward.fail is not None:
            OomInBackward.fail(0, 2 << 30, 80 << 30, 1 << 20)  # FAILS IN BACKWARD
        return grad


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(16, 64)
        self.down = torch.nn.Linear(64, 16)
        self.fail = None  # the allocation of this MLP's forward that fails, when set

    def forward(self, x):
        h = self.up(x).relu()
        if self.fail is not None:
            self.fail(0, 2 << 30, 80 << 30, 1 << 20)  # FAILS IN FORWARD
        return self.down(OomInBackward.apply(h))


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = MLP()

    def forward(self, x):
        return x + self.mlp(x)


class Decoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([Block(), Block(), Block()])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class CausalLM(torch.nn.Module):
    """Named as Transformers names a Llama: ``model.layers.1.mlp``."""

    def __init__(self) -> None:
        super().__init__()
        self.model = Decoder()

    def forward(self, x):
        return self.model(x)


def line_of(text: str) -> int:
    """The line of this file that holds ``text``."""
    with open(__file__) as f:
        return next(i for i, line in enumerate(f, 1) if text in line)


@pytest.fixture
def running(tmp_path, monkeypatch):
    fake = FakeCudaTorch(torch)
    fake.allocator.set(100 * MiB, 128 * MiB)
    fake.initialized = True
    agent = Agent(interval=0.02, directory=tmp_path / "run", torch=fake, device_type="cpu")
    agent.start()
    wait_for(lambda: agent.active)
    yield agent, fake
    OomInBackward.fail = None
    agent.stop()


def train_step(model, opt):
    loss = model(torch.randn(4, 16)).pow(2).mean()
    loss.backward()  # THE PROGRAM WAITS HERE IN BACKWARD
    if opt is not None:
        opt.step()
        opt.zero_grad()


def the_post_mortem(agent):
    (path,) = sorted(agent.directory.glob("oom-*.json"))
    doc = json.loads(path.read_text())
    return from_dict(OomReport, doc["report"]), doc["summary"]


def test_an_oom_in_a_forward_names_the_module_and_the_programs_line(running):
    agent, fake = running
    model = CausalLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_step(model, opt)  # the agent finds the model and the training thread
    model.model.layers[1].mlp.fail = fake.oom_observers[0]
    model(torch.randn(4, 16))  # the fake allocator's observer returns: the forward goes on
    report, summary = the_post_mortem(agent)
    assert (report.module, report.module_class, report.module_near) == ("model.layers.1.mlp", "MLP", False)
    assert report.phase == "forward" and report.autograd_node is None
    innermost = report.frames[0]
    assert (os.path.basename(innermost.file), innermost.line, innermost.function) == (
        HERE, line_of("FAILS IN FORWARD"), "forward")
    assert not innermost.library
    # Outwards: Block.forward, Decoder.forward, CausalLM.forward, this test; none of torch's.
    assert [f.function for f in report.frames[1:4]] == ["forward", "forward", "forward"]
    assert not any("/torch/" in f.file or "/vramtop/" in f.file for f in report.frames)
    assert summary[0].startswith(f"OOM at step 1 in model.layers.1.mlp (MLP, forward) at {HERE}:"
                                 f"{line_of('FAILS IN FORWARD')} in forward(), on cuda:0: asked for 2.0 GiB")
    assert any(line.startswith(f"Stack, innermost first: {HERE}:") for line in summary)
    # The sticky report in the samples says the same.
    sticky = wait_for(lambda: (s := agent._answers.latest) and s.last_oom)
    assert sticky.module == "model.layers.1.mlp" and sticky.frames == report.frames


def test_an_oom_in_backward_names_the_node_the_nearest_module_and_the_backward_call(running):
    agent, fake = running
    model = CausalLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_step(model, opt)
    OomInBackward.fail = fake.oom_observers[0]
    train_step(model, opt)  # every layer's backward fails: the first to run is the last layer's
    reports = [from_dict(OomReport, json.loads(p.read_text())["report"])
               for p in sorted(agent.directory.glob("oom-*.json"))]
    first = min(reports, key=lambda r: r.time)
    assert first.phase == "backward" and first.autograd_node == "OomInBackwardBackward"
    # Backward runs no module code: the module is the one owning the nearest parameter.
    assert first.module_near and first.module == "model.layers.2.mlp.up" and first.module_class == "Linear"
    lines = [(os.path.basename(f.file), f.line) for f in first.frames]
    assert (HERE, line_of("FAILS IN BACKWARD")) in lines
    assert (HERE, line_of("THE PROGRAM WAITS HERE IN BACKWARD")) in lines
    assert where(first).startswith("backward near model.layers.2.mlp.up (Linear; running OomInBackwardBackward)")


def first_report(agent):
    reports = [from_dict(OomReport, json.loads(p.read_text())["report"])
               for p in sorted(agent.directory.glob("oom-*.json"))]
    return min(reports, key=lambda r: r.time)


def test_an_oom_in_a_backward_on_another_thread_still_names_the_nearest_module(running):
    # On a GPU the autograd engine runs the backward on a thread of its own, not the one that
    # called the forward (and found the model).
    agent, fake = running
    model = CausalLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_step(model, opt)
    OomInBackward.fail = fake.oom_observers[0]
    loss = model(torch.randn(4, 16)).pow(2).mean()
    engine = threading.Thread(target=loss.backward)
    engine.start(); engine.join()  # noqa: E702
    first = first_report(agent)
    assert (first.autograd_node, first.module, first.module_near, first.place_note) == (
        "OomInBackwardBackward", "model.layers.2.mlp.up", True, None)


def test_a_backward_whose_module_is_not_found_says_why(running):
    # The GPU run said only "module not known": the post-mortem now says what the lookup met.
    agent, fake = running
    model = CausalLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_step(model, opt)  # the agent finds the model
    loose = torch.nn.Parameter(torch.randn(4, 16))  # a parameter of no model
    OomInBackward.fail = fake.oom_observers[0]
    OomInBackward.apply(loose * 2).sum().backward()
    report, summary = the_post_mortem(agent)
    assert (report.autograd_node, report.module) == ("OomInBackwardBackward", None)
    why = "none of the 1 nearest parameters is in the models found (CausalLM)"
    assert report.place_note == why
    assert f"backward (running OomInBackwardBackward; module not known: {why})" in summary[0]


def test_an_oom_on_a_thread_without_python_takes_the_programs_line_from_the_training_thread(running):
    # On a GPU the autograd engine's threads run no Python: the observer is all their stack.
    agent, fake = running
    model = CausalLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_step(model, opt)
    engine = threading.Thread(target=fake.oom_observers[0], args=(0, 2 << 30, 80 << 30, 1 << 20))
    engine.start(); engine.join()  # THE TRAINING THREAD WAITS (one line: the OOM may come during start())  # noqa: E702
    report, _ = the_post_mortem(agent)
    assert report.module is None
    innermost = report.frames[0]
    assert (os.path.basename(innermost.file), innermost.line, innermost.function) == (
        HERE, line_of("THE TRAINING THREAD WAITS"), sys._getframe().f_code.co_name)


def test_the_programs_line_is_kept_under_deep_library_frames():
    kinds = CodeKinds(torch)
    site = "/venv/lib/python3.11/site-packages/transformers/models/llama/modeling_llama.py"
    entries = [(site, 100 + i, "forward") for i in range(12)]
    entries += [(torch.nn.modules.module.__file__, 1, "_call_impl"), ("/home/me/train.py", 42, "step"),
                ("/home/me/train.py", 90, "main")]
    frames = pick_frames(iter(entries), kinds, 5)
    assert len(frames) == 5 and all(f.library for f in frames[:4])
    assert frames[-1] == CodeFrame("/home/me/train.py", 42, "step", False)
    assert where(OomReport(time=0.0, device=0, requested=1, device_limit=2, device_free=0, allocated=0, reserved=0,
                           step=0, phase="forward", frames=frames)) == "forward at train.py:42 in step()"


def test_trace_keeps_the_allocation_history_and_names_the_largest_allocations(tmp_path, monkeypatch):
    monkeypatch.setenv("VRAMTOP_AGENT_TRACE", "5000")
    fake = FakeCudaTorch(torch)
    fake.allocator.set(100 * MiB, 128 * MiB)
    fake.history.stacks = {
        64 * MiB: [{"filename": torch.__file__, "line": 1, "name": "empty"},
                   {"filename": "/home/me/train.py", "line": 17, "name": "load_batch"}],
        512 * MiB: [{"filename": "/home/me/model.py", "line": 8, "name": "forward"},
                    {"filename": "/home/me/train.py", "line": 42, "name": "step"}],
    }
    fake.initialized = True
    agent = Agent(interval=0.02, directory=tmp_path / "run", torch=fake, device_type="cpu")
    agent.start()
    try:
        wait_for(lambda: agent.active)
        assert fake.history.calls == []  # not from the agent's thread: from the training thread's first call
        train_step(CausalLM(), None)
        assert fake.history.calls == [{"enabled": "all", "context": "all", "stacks": "python", "max_entries": 5000}]
        fake._inductor  # noqa: B018  the program imports it (its first optimizer imports torch._dynamo, which does)
        # With the history on, the sampler's snapshots leave its entries out.
        wait_for(lambda: fake.allocator.snapshot_args)
        assert set(fake.allocator.snapshot_args) == {((0, 0, False),)}
        fake.oom_observers[0](0, 2 << 30, 80 << 30, 1 << 20)
        report, summary = the_post_mortem(agent)
    finally:
        agent.stop()
    assert fake.history.calls[-1] == {"enabled": None}  # stopping the agent turns it off
    assert [a.size for a in report.largest_allocations] == [512 * MiB, 64 * MiB]
    assert report.largest_allocations[0].frames == (CodeFrame("/home/me/model.py", 8, "forward"),
                                                    CodeFrame("/home/me/train.py", 42, "step"))
    assert report.largest_allocations[1].frames == (CodeFrame("/home/me/train.py", 17, "load_batch"),)
    pickled = report.trace_path
    assert pickled and pickled == report.path.replace(".json", ".pickle")
    assert stat.S_IMODE(os.stat(pickled).st_mode) == 0o600
    with open(pickled, "rb") as f:
        assert pickle.load(f) == fake.history._snapshot()  # what torch.cuda.memory._dump_snapshot writes
    assert "  512 MiB from model.py:8 in forward() ← train.py:42 in step()" in summary
    assert any(line.startswith(f"Allocation history saved: {pickled}. Open it at https://pytorch.org/memory_viz")
               and f"python -m torch.cuda._memory_viz trace_plot {pickled} -o" in line for line in summary)


def test_with_the_history_on_the_agents_thread_never_makes_torch_import(tmp_path, monkeypatch):
    # On a GPU, --trace broke the program: the sampler's snapshots, read from the agent's thread,
    # held the history's Python stacks, and PyTorch looks up torch._inductor (importing it) to read
    # them; that import raced the program's own import of torch._dynamo (its first AdamW) and
    # handed the program a half-initialised torch._inductor.utils.
    monkeypatch.setenv("VRAMTOP_AGENT_TRACE", "5000")
    fake = FakeCudaTorch(torch)
    fake.allocator.set(100 * MiB, 128 * MiB)
    fake.history.stacks = {64 * MiB: [{"filename": "/home/me/train.py", "line": 17, "name": "load_batch"}]}
    fake.initialized = True
    agent = Agent(interval=0.02, directory=tmp_path / "run", torch=fake, device_type="cpu")
    agent.start()
    try:
        wait_for(lambda: agent.active)
        model = CausalLM()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            train_step(model, opt)
        time.sleep(1.2)  # a snapshot is due every second
        assert fake.lazy_imports == []  # nobody imported torch._inductor: the agent waited
        assert fake.history.on and set(fake.history.threads) == {threading.get_ident()}
        fake._inductor  # noqa: B018  now the program imports it, on its own thread
        wait_for(lambda: ((0, 0, False),) in fake.allocator.snapshot_args)  # the snapshots resume
        train_step(model, opt)
    finally:
        agent.stop()
    assert fake.lazy_imports == [("_inductor", threading.get_ident())]
    assert set(fake.history.threads) == {threading.get_ident()}  # turned off from the program's thread too


def test_a_history_the_program_turned_on_itself_is_not_read_from_the_agents_thread_either(running):
    _agent, fake = running  # no --trace
    fake.history.stacks = {64 * MiB: [{"filename": "/home/me/train.py", "line": 17, "name": "load_batch"}]}
    fake.cuda.memory._record_memory_history(enabled="all", stacks="python")  # the program's own
    taken = len(fake.allocator.snapshot_args)
    time.sleep(1.2)  # a snapshot is due every second
    assert fake.lazy_imports == [] and len(fake.allocator.snapshot_args) == taken
    fake._inductor  # noqa: B018  the program imports it
    wait_for(lambda: len(fake.allocator.snapshot_args) > taken)
    assert fake.lazy_imports == [("_inductor", threading.get_ident())]


def test_an_oom_before_the_history_is_on_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("VRAMTOP_AGENT_TRACE", "5000")
    fake = FakeCudaTorch(torch)
    fake.allocator.set(100 * MiB, 128 * MiB)
    fake.initialized = True
    agent = Agent(interval=0.02, directory=tmp_path / "run", torch=fake, device_type="cpu")
    agent.start()
    try:
        wait_for(lambda: agent.active)
        fake.oom_observers[0](0, 2 << 30, 80 << 30, 1 << 20)  # the program's model never ran
        report, summary = the_post_mortem(agent)
    finally:
        agent.stop()
    assert fake.history.calls == [] and report.trace_path is None
    note = "No allocation history (--trace): it was not on yet: it starts at the training thread's first model call"
    assert any(line.startswith(note) for line in summary), summary


def test_reading_the_historys_stacks_waits_for_the_programs_import_of_inductor():
    # The premise of the rule above, on the real torch: the attribute appears only once the
    # program's import has finished, and asking never imports.
    code = ("import sys, torch; from vramtop.agent._torchstats import stacks_readable; "
            "before = stacks_readable(torch), 'torch._inductor' in sys.modules; "
            "import torch._inductor; print(before, stacks_readable(torch))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert result.stdout.split("\n")[0] == "(False, False) True", result.stderr[-2000:]


def test_trace_that_cannot_start_says_why_in_the_post_mortem(tmp_path, monkeypatch):
    monkeypatch.setenv("VRAMTOP_AGENT_TRACE", "5000")
    fake = FakeCudaTorch(torch)
    fake.allocator.set(100 * MiB, 128 * MiB)
    del fake.cuda.memory  # a torch without the allocation history
    fake.initialized = True
    agent = Agent(interval=0.02, directory=tmp_path / "run", torch=fake, device_type="cpu")
    agent.start()
    try:
        wait_for(lambda: agent.active)
        train_step(CausalLM(), None)
        fake.oom_observers[0](0, 2 << 30, 80 << 30, 1 << 20)
        report, summary = the_post_mortem(agent)
    finally:
        agent.stop()
    assert report.trace_path is None and "no allocation history" in (report.trace_note or "")
    assert any(line.startswith("No allocation history (--trace): this torch has no") for line in summary)
    assert not list((tmp_path / "run").glob("*.pickle"))


def test_a_report_without_a_place_reads_and_words_as_before():
    # As an agent before this change wrote it: no module, frames or history fields.
    old = {"time": 1.8e9, "device": 0, "requested": 2 << 30, "device_limit": 80 << 30, "device_free": 1 << 30,
           "allocated": 70 << 30, "reserved": 72 << 30, "step": 3, "phase": "forward"}
    report = from_dict(OomReport, old)
    assert report.module is None and report.frames == () and report.trace_path is None
    assert where(report) is None
    lines = postmortem_of(report).lines
    assert lines[0].startswith("OOM at step 3 in forward on cuda:0: asked for 2.0 GiB")
    assert not any(line.startswith(("Stack", "Largest live", "Allocation history", "No allocation")) for line in lines)
    placed = replace(report, module="model.layers.1.mlp", module_class="MLP",
                     frames=(CodeFrame("/home/me/train.py", 42, "step"),))
    assert from_dict(OomReport, json.loads(json.dumps(to_dict(placed)))) == placed


def test_the_trace_cost_benchmark_says_there_is_nothing_to_measure_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine measures it for real")
    bench = Path(__file__).resolve().parent.parent / "bench" / "trace_cost.py"
    result = subprocess.run([sys.executable, str(bench)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("no CUDA: nothing to measure"), result.stderr


def test_the_largest_allocations_named_are_those_the_history_saw_allocated():
    # The history starts at the first model call: the weights moved to the GPU before it have no stack.
    from vramtop.agent._trace import largest_allocations

    line = {"filename": "/home/me/train.py", "line": 9, "name": "step"}
    blocks = [{"size": 512 * MiB, "state": "active_allocated", "frames": []},
              {"size": 64 * MiB, "state": "active_allocated", "frames": [line]},
              {"size": 1024 * MiB, "state": "inactive", "frames": []}]
    named = largest_allocations({"segments": [{"device": 0, "blocks": blocks}]}, 0, CodeKinds(torch))
    assert [(a.size, a.frames) for a in named] == [(64 * MiB, (CodeFrame("/home/me/train.py", 9, "step"),)),
                                                   (512 * MiB, ())]


class _NodeWrapper:
    """A node of a made-up autograd graph, wrapped the way torch wraps its C++ nodes: each read
    of ``next_functions`` makes new Python objects, and a freed one's id() goes to the next."""

    __slots__ = ("edges", "leaves", "name", "variable")

    def __init__(self, edges: dict[str, list[str]], leaves: dict[str, str], name: str) -> None:
        self.edges, self.leaves, self.name = edges, leaves, name
        self.variable = leaves.get(name)

    @property
    def next_functions(self) -> tuple[tuple[_NodeWrapper, int], ...]:
        return tuple((_NodeWrapper(self.edges, self.leaves, n), 0) for n in self.edges.get(self.name, ()))


def test_the_walk_to_the_nearest_parameter_survives_wrappers_that_reuse_a_freed_id():
    # Found on an H200: in a CUDA backward the walk stopped after 7 nodes with no parameter, as a
    # new wrapper took the id() of one already walked and freed, and so was skipped as "seen".
    edges = {"TooMuchBackward": ["ReluBackward0"], "ReluBackward0": ["AddmmBackward0"],
             "AddmmBackward0": ["AccumulateGrad"]}
    parameters, walked = nearest_parameters(_NodeWrapper(edges, {"AccumulateGrad": "up.weight"}, "TooMuchBackward"))
    assert parameters == ["up.weight"] and walked == 4
