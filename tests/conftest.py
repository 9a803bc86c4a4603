from __future__ import annotations

import os
import time

import pytest

# Rendered times must not depend on where the tests run.
os.environ["TZ"] = "UTC"
time.tzset()


@pytest.fixture
def fake_pynvml(monkeypatch: pytest.MonkeyPatch):
    """Install a FakeNvml as the ``pynvml`` module for code that imports it by name."""
    import sys

    from tests.fakes.fake_nvml import two_gpu_box

    def install(fake=None):
        fake = fake or two_gpu_box()
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        return fake

    return install


@pytest.fixture
def fake_torch():
    """Real CPU torch with FakeCudaTorch in front as its CUDA allocator: 100 MiB allocated of 128
    MiB reserved. For agent tests; they skip where torch is not installed."""
    torch = pytest.importorskip("torch")
    from tests.fakes.fake_cuda import FakeCudaTorch

    fake = FakeCudaTorch(torch)
    fake.allocator.set(100 << 20, 128 << 20)
    return fake
