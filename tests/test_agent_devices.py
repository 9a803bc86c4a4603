"""The agent's table of devices, rescanned from several threads at once (the sampler, the
training thread's first step, the autograd thread's first reading). CPU only: the device table
reads nothing but the fake's CUDA bookkeeping, so no torch is needed."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from tests.fakes.fake_cuda import FakeCudaTorch
from vramtop.agent._devices import DeviceTable

MiB = 1 << 20


def fake_gpus(count: int, identity_delay: float = 0.0) -> tuple[FakeCudaTorch, dict[str, int]]:
    """A fake whose device count can grow; every device counted has memory. Reading a device's
    identity takes ``identity_delay`` seconds (a slow driver call widens any race)."""
    fake = FakeCudaTorch(None)  # the device table touches only the fake's CUDA parts
    fake.allocator.set(64 * MiB)
    gpus = {"count": count}
    fake.cuda.device_count = lambda: gpus["count"]

    def properties(index: int) -> SimpleNamespace:
        time.sleep(identity_delay)
        return SimpleNamespace(name=f"Fake GPU {index}", uuid=f"uuid-{index}", total_memory=80 << 30)

    fake.cuda.get_device_properties = properties
    return fake, gpus


def test_concurrent_rescans_find_each_device_once():
    fake, _ = fake_gpus(4, identity_delay=0.005)
    table = DeviceTable()
    threads, start = 8, threading.Barrier(8)
    added: list[bool] = []
    seen: list[dict[int, object]] = []
    errors: list[BaseException] = []

    def rescan() -> None:
        try:
            start.wait()
            added.append(table.rescan(fake, force=True))
            seen.append(dict(table.states))
        except BaseException as err:  # pragma: no cover - the failure being tested for
            errors.append(err)

    workers = [threading.Thread(target=rescan) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    # One rescan found the devices (so one beacon is written); every thread sees the same states,
    # never a second DeviceState for the same device (which would lose the first one's census).
    assert added.count(True) == 1
    assert sorted(table.states) == [0, 1, 2, 3]
    assert all(s == table.states and all(s[i] is table.states[i] for i in s) for s in seen)
    assert [table.states[i].uuid for i in range(4)] == [f"GPU-uuid-{i}" for i in range(4)]


def test_a_rescan_that_finds_a_device_never_changes_a_table_another_thread_is_walking():
    fake, gpus = fake_gpus(1)
    table = DeviceTable()
    assert table.rescan(fake, force=True)
    first = table.states[0]
    gpus["count"] = 2  # the program starts using a second device
    walked = []
    for index, state in table.states.items():  # as the sampler and the census walk it
        other = threading.Thread(target=table.rescan, args=(fake, True))
        other.start()
        other.join()  # the rescan completes while this walk is in the middle of the table
        walked.append((index, state))
    assert walked == [(0, first)]
    assert sorted(table.states) == [0, 1] and table.states[0] is first


def test_rescans_are_spaced_unless_forced_or_no_device_is_known_yet():
    fake, gpus = fake_gpus(0)
    table = DeviceTable()
    assert not table.rescan(fake)  # nothing used yet
    gpus["count"] = 1
    assert table.rescan(fake)  # no device known: it looks every time
    gpus["count"] = 2
    assert not table.rescan(fake) and sorted(table.states) == [0]  # within DEVICE_RESCAN
    assert table.rescan(fake, force=True) and sorted(table.states) == [0, 1]
