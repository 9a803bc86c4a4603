"""Target processes for the attach tests: Python children started with a clean environment (no
VRAMTOP_*, no PYTHONPATH) that have never heard of vramtop and fake only CUDA (FakeCudaTorch,
loaded by file location so that vramtop is not imported)."""

from __future__ import annotations

import os
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FAKE_CUDA = REPO / "tests" / "fakes" / "fake_cuda.py"

# A training loop that has never heard of vramtop. argv: steps, seconds to pause per step.
TRAIN = textwrap.dedent("""
    import importlib.util, sys, time
    print("vramtop imported:", "vramtop" in sys.modules, flush=True)
    spec = importlib.util.spec_from_file_location("fake_cuda", {fake!r})
    fake_cuda = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake_cuda)
    import torch
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.arange(32.0).reshape(4, 8) / 32

    def step():
        model(x).pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()

    step()  # torch's lazy imports happen with the real torch; then only CUDA is faked
    fake = fake_cuda.FakeCudaTorch(torch)
    fake.allocator.set(123 << 20, 256 << 20)
    sys.modules["torch"] = fake
    fake.initialized = True  # as if the program had moved its model to the GPU
    print("ready", flush=True)
    for _ in range(int(sys.argv[1])):
        step()
        time.sleep(float(sys.argv[2]))
    print("result", repr(model.weight.detach().sum().item()), flush=True)
    agent = sys.modules.get("vramtop.agent")
    print("agent", agent is not None and agent.current() is not None, flush=True)
    print("from", getattr(sys.modules.get("vramtop"), "__file__", None), flush=True)
""").format(fake=str(FAKE_CUDA))


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TZ")}


def start(argv: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(argv, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tempfile.gettempdir())
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("ready"):
            return proc
    raise AssertionError(f"the child never got ready: {proc.stderr.read() if proc.stderr else ''}")


def finish(proc: subprocess.Popen[str]) -> dict[str, str]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


@pytest.fixture(name="runtime")
def runtime_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private XDG_RUNTIME_DIR: where the agent's socket goes (the vramtop/ directory in it)."""
    d = tmp_path / "xdg"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(d))
    return d / "vramtop"


@pytest.fixture(name="procs")
def procs_fixture() -> Iterator[list[subprocess.Popen[str]]]:
    """Targets to kill after the test."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def exec_done(proc: subprocess.Popen, program: str) -> None:
    """Wait until the child runs ``program`` (right after fork it is still this Python)."""
    deadline = time.monotonic() + 10
    while Path(f"/proc/{proc.pid}/comm").read_text().strip() != program:
        assert time.monotonic() < deadline, f"{program} did not start"
        time.sleep(0.01)
