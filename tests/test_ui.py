"""The Textual monitor, driven the way a user drives it: keys in, screen text out.

Data comes in two ways: the real path (FakeNvml behind NvmlSource and the app's own poller
thread), and frozen samples posted as ``SampleArrived`` messages, for exact, repeatable screens.
Assertions read what is rendered (the screen's text, the table's rows), not private state.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace

import psutil
import pynvml
import pytest
from rich.console import Console
from textual.pilot import Pilot

import vramtop.processes
from tests.fakes.fake_nvml import FakeNvml, two_gpu_box
from vramtop.analysis.thresholds import Thresholds
from vramtop.model import (
    MISMATCH,
    NOT_VISIBLE,
    GpuSample,
    HostSample,
    MigDeviceSample,
    ProcessSample,
    Sample,
)
from vramtop.sources.hostinfo import HostInfo
from vramtop.sources.nvml import NvmlSource
from vramtop.ui.app import SampleArrived, SourceFailed, VramtopApp
from vramtop.ui.screens import ConfirmScreen, HelpScreen
from vramtop.ui.widgets.processes import NARROW, WIDE, ProcessTable

MiB = 1024 * 1024
GiB = 1024 * MiB
NARROW_SIZE = (80, 24)  # a tmux pane
WIDE_SIZE = (160, 48)

# -- frozen samples ---------------------------------------------------------------------------

T0 = 1_767_261_600.0  # 2026-01-01 10:00:00 UTC (tests run with TZ=UTC)
GPU0 = "GPU-5f1c0a7e-8d2b-4c3a-9e61-0a1b2c3d4e5f"
GPU1 = "GPU-9a8b7c6d-1e2f-4a4b-8c6d-7e8f9a0b1c2d"
GPU2 = "GPU-3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7"
HOST = HostSample(hostname="gpu-box-01", memory_total=503 * GiB, memory_used=87 * GiB,
                  swap_total=8 * GiB, swap_used=0)


def proc(pid: int, gpu: str, used_mib: int | None, **fields: object) -> ProcessSample:
    used = None if used_mib is None else used_mib * MiB
    return ProcessSample(pid=pid, gpu_uuid=gpu, used_memory=used, kind="C", **fields)  # type: ignore[arg-type]


TRAIN = proc(30512, GPU0, 61_800, user="alice", host_rss=12 * GiB + 300 * MiB, name="python",
             command="python train.py --config configs/llama-7b.yaml --batch-size 8")
EVAL = proc(9001, GPU0, 900, user="carol", host_rss=1 * GiB, name="python",
            command="python eval.py --ckpt runs/latest")
SERVE = proc(4242, GPU1, 22_500, user="bob", host_rss=20 * GiB, name="python",
             command="python -m vllm.entrypoints.openai.api_server --model llama-7b")
HIDDEN = proc(18001, GPU1, 1_200, visibility=NOT_VISIBLE)
STRANGER = proc(2077, GPU1, 600, visibility=MISMATCH, user="root", name="sshd",
                command="sshd: /usr/sbin/sshd -D", host_rss=8 * MiB)

NOT_VISIBLE_LABEL = "(PID not visible on this host: another container or namespace)"
MISMATCH_LABEL = "(PID belongs to another process here: GPU process is in another PID namespace)"


def gpu(index: int, uuid: str, used: int, processes: tuple[ProcessSample, ...] = (),
        **fields: object) -> GpuSample:
    total, reserved = 81_559 * MiB, 480 * MiB
    defaults: dict[str, object] = dict(
        name="NVIDIA H100 80GB HBM3", memory_total=total, memory_used=used,
        memory_free=total - used - reserved, memory_reserved=reserved, utilization_gpu=97,
        utilization_memory=61, pcie_tx=1_200_000_000, pcie_rx=350_000_000, temperature=63,
        power_usage=612_000, power_limit=700_000, pci_bus_id=f"00000000:{0x18 + index:02X}:00.0",
        mig_enabled=False,
    )
    defaults.update(fields)
    return GpuSample(index=index, uuid=uuid, processes=processes, **defaults)  # type: ignore[arg-type]


# nvidia-smi prints memory.used rounded up to whole MiB: 62731 MiB + 512 KiB shows as 62732.
GPU0_USED = 62_731 * MiB + 512 * 1024
GPU1_USED = 24_317 * MiB


def box(t: float = T0, used0: int = GPU0_USED, used1: int = GPU1_USED, **fields: object) -> Sample:
    """A two-GPU training box: a training run and an eval on GPU 0, a server and two processes
    from other PID namespaces on GPU 1."""
    return Sample(
        time=t,
        host=HOST,
        gpus=(
            gpu(0, GPU0, used0, (TRAIN, EVAL)),
            gpu(1, GPU1, used1, (SERVE, HIDDEN, STRANGER), utilization_gpu=35,
                utilization_memory=12, temperature=48, power_usage=221_000),
        ),
        driver_version="580.159.04",
        cuda_driver_version="13.0",
        **fields,  # type: ignore[arg-type]
    )


def mig_gpu(index: int) -> GpuSample:
    """An A100 split into two MIG devices, one process on each."""
    total = 81_920 * MiB
    migs = (
        MigDeviceSample(index=0, uuid="MIG-1d2e3f4a-5b6c-5d7e-8f9a-0b1c2d3e4f5a", gpu_instance_id=1,
                        compute_instance_id=0, memory_total=40_192 * MiB,
                        memory_used=18_113 * MiB, memory_free=22_079 * MiB),
        MigDeviceSample(index=1, uuid="MIG-6a7b8c9d-0e1f-5a2b-9c3d-4e5f6a7b8c9d", gpu_instance_id=2,
                        compute_instance_id=0, memory_total=19_968 * MiB,
                        memory_used=4_863 * MiB, memory_free=15_105 * MiB),
    )
    procs = (
        proc(7100, GPU2, 18_000, user="dave", gpu_instance_id=1, compute_instance_id=0,
             command="python finetune.py", host_rss=6 * GiB),
        proc(7200, GPU2, 4_750, user="erin", gpu_instance_id=2, compute_instance_id=0,
             command="python notebook_kernel.py", host_rss=2 * GiB),
    )
    return gpu(index, GPU2, 22_976 * MiB, procs, name="NVIDIA A100-SXM4-80GB", memory_total=total,
               memory_free=total - 22_976 * MiB - 512 * MiB, memory_reserved=512 * MiB,
               utilization_gpu=None, utilization_memory=None, mig_enabled=True, mig_devices=migs)


def trouble(t: float = T0 + 30) -> Sample:
    """Everything that can go wrong at once: stale data, a lost GPU, MIG, unmatched PIDs."""
    lost = GpuSample(index=1, uuid=GPU1, name="NVIDIA H100 80GB HBM3",
                     error="GPU is lost (fell off the bus or needs a reset)")
    on_gpu0 = tuple(replace(p, gpu_uuid=GPU0) for p in (TRAIN, HIDDEN, STRANGER))
    return Sample(
        time=t,
        host=replace(HOST, swap_used=3 * GiB),
        gpus=(gpu(0, GPU0, GPU0_USED, on_gpu0), lost, mig_gpu(2)),
        driver_version="580.159.04",
        cuda_driver_version="13.0",
        error="NVML has not answered for 6 s (driver hung?)",
        stale_since=T0,
    )


def history(n: int = 24) -> list[Sample]:
    """``n`` samples one second apart, GPU 0 filling up: a sparkline to look at."""
    return [box(t=T0 + i, used0=20_000 * MiB + i * (GPU0_USED - 20_000 * MiB) // (n - 1),
                used1=GPU1_USED - (i % 5) * 700 * MiB)
            for i in range(n)]


# -- helpers ----------------------------------------------------------------------------------


class NoSource:
    """The source of an app run with poll=False: the UI must never read it itself."""

    def open(self) -> None:
        raise AssertionError("the UI read its source")

    read = close = open  # type: ignore[assignment]


def monitor(**kwargs: object) -> VramtopApp:
    return VramtopApp(NoSource(), poll=False, **kwargs)  # type: ignore[arg-type]


async def feed(pilot: Pilot[None], *samples: Sample) -> None:
    # One at a time: SampleArrived replaces an unprocessed one, as it should for a live feed.
    for sample in samples:
        pilot.app.post_message(SampleArrived(sample))
        await pilot.pause()


def screen_text(app: VramtopApp) -> str:
    """The terminal's text right now: the screen, and any modal over it, as the user sees it.

    The same composition ``App.export_screenshot`` renders, exported as plain text."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), record=True,
                      force_terminal=True, color_system="truecolor", legacy_windows=False)
    console.print(app.screen._compositor.render_update(full=True,
                                                         screen_stack=app._background_screens))
    return console.export_text()


def toasts(app: VramtopApp) -> str:
    """The notifications on screen (a toast wraps long lines, so they are read as widgets)."""
    return " | ".join(str(toast.render()) for toast in app.screen.query("Toast"))


def line_with(app: VramtopApp, needle: str) -> str:
    lines = [line for line in screen_text(app).splitlines() if needle in line]
    assert lines, f"{needle!r} is not on screen:\n{screen_text(app)}"
    return lines[0]


def row_on_screen(app: VramtopApp, pid: int) -> str:
    """The process table's line for ``pid`` (GPU index, then PID)."""
    # The PID carries a mark when the process runs the agent.
    rows = [line for line in screen_text(app).splitlines() if re.match(rf" \d+ +●?{pid} ", line)]
    assert rows, f"no row for PID {pid} on screen:\n{screen_text(app)}"
    return rows[0]


def table_rows(app: VramtopApp) -> list[list[str]]:
    table = app.query_one(ProcessTable)
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


def table_pids(app: VramtopApp) -> list[int]:
    pid_column = 1
    return [int(row[pid_column]) for row in table_rows(app)]


def column_labels(app: VramtopApp) -> tuple[str, ...]:
    return tuple(str(c.label) for c in app.query_one(ProcessTable).columns.values())


def detail_text(app: VramtopApp) -> str:
    return str(app.query_one("#detail").render())


async def wait_until(pilot: Pilot[None], condition: Callable[[], bool],
                     timeout: float = 5.0) -> None:
    """For the real poller thread: poll the screen until ``condition`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; the screen shows:\n{screen_text(pilot.app)}")
        await pilot.pause(0.02)


# -- the real path: FakeNvml -> NvmlSource -> poller thread -> screen --------------------------


def nvml_source(fake: FakeNvml) -> NvmlSource:
    # No process can hold /dev/nvidia* on a CPU-only machine: trust the PIDs.
    return NvmlSource(nvml=fake, host=HostInfo(holds_gpu=lambda pid: True))


async def test_live_numbers_from_nvml_appear_as_nvidia_smi_prints_them():
    fake = two_gpu_box()
    app = VramtopApp(nvml_source(fake), interval=0.05)
    async with app.run_test(size=WIDE_SIZE) as pilot:
        # 40123 MiB + 200 KiB used: nvidia-smi rounds up and prints 40124 MiB.
        await wait_until(pilot, lambda: "40124/81559 MiB" in screen_text(app))
        gpu0 = line_with(app, "40124/81559 MiB")
        assert "free 40956" in gpu0 and "reserved 480" in gpu0
        assert "0/81559 MiB" in line_with(app, "free 81079")  # GPU 1, idle
        assert "util  97%" in line_with(app, "GPU-c597915a") and "104/700 W" in screen_text(app)
        # The table lays its columns out on the next refresh after its rows arrive.
        pid = os.getpid()
        await wait_until(pilot, lambda: any(re.match(rf" \d+ +●?{pid} ", line) and "39800 MiB" in line
                                            for line in screen_text(app).splitlines()))
        row = row_on_screen(app, pid)
        assert "39800 MiB" in row and "python" in row  # this test process, as NVML lists it

        fake.gpus[0].used = 50_000 * MiB  # the next poll must show the change
        await wait_until(pilot, lambda: "50000/81559 MiB" in screen_text(app))


async def test_hung_driver_marks_the_screen_stale_and_clears_when_it_answers():
    fake = two_gpu_box()
    app = VramtopApp(nvml_source(fake), interval=0.05, deadline=0.2)
    async with app.run_test(size=WIDE_SIZE) as pilot:
        await wait_until(pilot, lambda: "40124/81559 MiB" in screen_text(app))
        fake.hang.set()
        try:
            await wait_until(pilot, lambda: "driver hung?" in screen_text(app))
            banner = line_with(app, "driver hung?")
            assert "NVML has not answered" in banner and "showing data from" in banner
            assert "40124/81559 MiB" in screen_text(app)  # the last numbers stay on screen
        finally:
            fake.release.set()
        fake.hang.clear()
        await wait_until(pilot, lambda: "driver hung?" not in screen_text(app))


async def test_driver_not_loaded_before_any_sample_says_so():
    fake = FakeNvml([], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    app = VramtopApp(nvml_source(fake), interval=0.05)
    async with app.run_test(size=NARROW_SIZE) as pilot:
        await wait_until(pilot, lambda: "driver is not loaded" in screen_text(app))
        assert "waiting for the first sample" in screen_text(app)


# -- keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["q", "ctrl+c"])
async def test_q_and_ctrl_c_quit(key):
    # Ctrl-C quits, as in htop and nvitop (Textual's own would ask for Ctrl-Q in a toast).
    app = monitor()
    async with app.run_test(size=NARROW_SIZE) as pilot:
        await feed(pilot, box())
        assert app.is_running
        await pilot.press(key)
        await pilot.pause()
        assert not app.is_running


async def test_help_scrolls_in_an_80x24_terminal_to_what_the_abbreviations_mean():
    app = monitor()
    async with app.run_test(size=NARROW_SIZE) as pilot:
        await feed(pilot, box())
        await pilot.press("question_mark")
        assert "non-PT is memory" not in screen_text(app)  # below the fold at 24 rows
        for _ in range(4):
            await pilot.press("pagedown")
            await pilot.pause()
        assert isinstance(app.screen, HelpScreen) and "non-PT is memory" in screen_text(app)
        assert "frag: 1 − largest free block / cache" in screen_text(app)
        await pilot.press("x")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)


@pytest.mark.parametrize("key", ["x", "escape", "question_mark", "s", "q"])
async def test_help_opens_on_question_mark_and_any_key_closes_it_and_does_nothing_else(key):
    app = monitor()
    async with app.run_test(size=NARROW_SIZE) as pilot:
        await feed(pilot, box())
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert "this help (any key closes it)" in screen_text(app)
        await pilot.press(key)
        await pilot.pause()
        # The closing key is swallowed: "q" does not quit, "s" does not sort.
        assert app.is_running and not isinstance(app.screen, HelpScreen)
        assert "any key closes it" not in screen_text(app)
        assert "sort gpu memory" in screen_text(app)


@pytest.mark.parametrize("pause_key, resume_key", [("space", "p"), ("p", "space")])
async def test_pause_freezes_the_screen_and_resume_shows_the_newest_sample(pause_key, resume_key):
    app = monitor()
    async with app.run_test(size=NARROW_SIZE) as pilot:
        await feed(pilot, box())
        await pilot.press(pause_key)
        assert "PAUSED" in screen_text(app)
        await feed(pilot, box(t=T0 + 1, used0=70_000 * MiB), box(t=T0 + 2, used0=71_000 * MiB))
        frozen = screen_text(app)
        assert "62732/81559 MiB" in frozen and "10:00:00" in frozen
        assert "71000/81559" not in frozen and "70000/81559" not in frozen

        await pilot.press(resume_key)
        await pilot.pause()
        live = screen_text(app)
        assert "PAUSED" not in live
        assert "71000/81559 MiB" in live and "10:00:02" in live
        await feed(pilot, box(t=T0 + 3, used0=72_000 * MiB))
        assert "72000/81559 MiB" in screen_text(app)


# Expected PID order for each sort (see ``box``): the four orders all differ.
SORTED = {
    "gpu memory": [30512, 4242, 18001, 9001, 2077],  # largest GPU memory first
    "host rss": [4242, 30512, 9001, 2077, 18001],  # largest host RSS first; unknown last
    "pid": [2077, 4242, 9001, 18001, 30512],
    "user": [30512, 4242, 9001, 2077, 18001],  # alice, bob, carol, root, unknown
}


async def test_s_cycles_the_sort_order_and_the_table_follows():
    app = monitor()
    async with app.run_test(size=WIDE_SIZE) as pilot:
        await feed(pilot, box())
        for name in [*SORTED, "gpu memory"]:
            assert f"sort {name}" in line_with(app, "vramtop")
            assert table_pids(app) == SORTED[name]
            lines = screen_text(app).splitlines()
            assert [lines.index(row_on_screen(app, pid)) for pid in SORTED[name]] == sorted(
                lines.index(row_on_screen(app, pid)) for pid in SORTED[name])
            await pilot.press("s")


async def test_the_selected_process_stays_selected_across_sorts_and_samples():
    app = monitor()
    async with app.run_test(size=WIDE_SIZE) as pilot:
        await feed(pilot, box())
        await pilot.press("down")  # 4242, second by GPU memory
        assert "PID 4242" in detail_text(app)
        await pilot.press("s", "s")  # by PID: other rows move, the cursor stays on 4242
        await feed(pilot, box(t=T0 + 1))
        assert "PID 4242" in detail_text(app)


async def test_g_cycles_all_then_each_gpu_then_all_and_G_returns_to_all():
    app = monitor()
    async with app.run_test(size=WIDE_SIZE) as pilot:
        await feed(pilot, box())
        all_pids = sorted(SORTED["pid"])
        assert sorted(table_pids(app)) == all_pids and "only" not in line_with(app, "vramtop")

        await pilot.press("g")
        assert "GPU 0 only" in line_with(app, "vramtop")
        assert sorted(table_pids(app)) == [9001, 30512]
        assert "▶0 NVIDIA H100" in screen_text(app) and GPU1[:12] not in screen_text(app)

        await pilot.press("g")
        assert "GPU 1 only" in line_with(app, "vramtop")
        assert sorted(table_pids(app)) == [2077, 4242, 18001]
        assert "▶1 NVIDIA H100" in screen_text(app) and GPU0[:12] not in screen_text(app)

        await pilot.press("g")
        assert "only" not in line_with(app, "vramtop")
        assert sorted(table_pids(app)) == all_pids
        assert GPU0[:12] in screen_text(app) and GPU1[:12] in screen_text(app)

        await pilot.press("g", "g")
        assert "GPU 1 only" in line_with(app, "vramtop")
        await pilot.press("G")
        assert "only" not in line_with(app, "vramtop")
        assert sorted(table_pids(app)) == all_pids


async def test_arrow_keys_move_the_selection_and_the_detail_pane_follows():
    app = monitor()
    async with app.run_test(size=WIDE_SIZE) as pilot:
        await feed(pilot, box())
        detail = detail_text(app)
        assert "PID 30512" in detail and "user alice" in detail and "GPU 0: 61800 MiB" in detail
        assert "train.py --config configs/llama-7b.yaml" in detail

        await pilot.press("down")
        assert "PID 4242" in detail_text(app) and "user bob" in detail_text(app)
        await pilot.press("down")
        assert "PID 18001" in detail_text(app) and NOT_VISIBLE_LABEL in detail_text(app)
        assert "docker --pid=host" in detail_text(app)
        await pilot.press("down", "down")
        assert "PID 2077" in detail_text(app) and MISMATCH_LABEL in detail_text(app)
        await pilot.press("down")  # already the last row
        assert "PID 2077" in detail_text(app)
        await pilot.press("up", "up", "up", "up")
        assert "PID 30512" in detail_text(app)
        assert "PID 30512" in screen_text(app)  # the pane is on screen, not only in the widget


# -- signalling: real child processes ----------------------------------------------------------


@pytest.fixture
def child():
    """A real process the test owns, to be signalled through the UI."""
    process = subprocess.Popen(["sleep", "60"])
    yield process
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


def sample_with(child: subprocess.Popen[bytes], *, create_time: float | None = None) -> Sample:
    """``box`` with ``child`` as the biggest process on GPU 0 (so it is selected first)."""
    me = psutil.Process(child.pid)
    real_create_time = me.create_time()
    proc_sample = proc(child.pid, GPU0, 70_000, user=me.username(), name="sleep",
                       command="sleep 60", host_rss=1 * MiB,
                       create_time=real_create_time if create_time is None else create_time)
    sample = box()
    gpu0 = replace(sample.gpus[0], processes=(proc_sample, *sample.gpus[0].processes))
    return replace(sample, gpus=(gpu0, *sample.gpus[1:]))


def alive(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is None


@pytest.mark.parametrize("key, signum", [("t", signal.SIGTERM), ("k", signal.SIGKILL)])
async def test_signal_keys_ask_first_and_y_really_signals_the_process(child, key, signum):
    app = monitor()
    async with app.run_test(size=NARROW_SIZE, notifications=True) as pilot:
        await feed(pilot, sample_with(child))
        assert table_pids(app)[0] == child.pid
        await pilot.press(key)
        assert isinstance(app.screen, ConfirmScreen)
        assert f"Send {signum.name} to PID {child.pid}?" in screen_text(app)
        assert alive(child)  # nothing is sent before the answer

        await pilot.press("y")
        assert child.wait(timeout=10) == -signum
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert f"sent {signum.name} to PID {child.pid}" in toasts(app)


@pytest.mark.parametrize("answer", ["n", "escape"])
async def test_answering_no_sends_nothing(child, answer):
    app = monitor()
    async with app.run_test(size=NARROW_SIZE, notifications=True) as pilot:
        await feed(pilot, sample_with(child))
        await pilot.press("k")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press(answer)
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen) and "Send SIGKILL" not in screen_text(app)
        assert alive(child) and toasts(app) == ""


async def test_keys_of_the_monitor_do_nothing_while_the_confirmation_is_open(child):
    app = monitor()
    async with app.run_test(size=NARROW_SIZE) as pilot:
        await feed(pilot, sample_with(child))
        await pilot.press("t", "q", "s", "t")
        assert app.is_running and isinstance(app.screen, ConfirmScreen)
        assert len(app.screen_stack) == 2  # not a second question on top of the first
        assert "sort gpu memory" in screen_text(app)
        await pilot.press("n")
        assert alive(child)


async def test_a_reused_pid_is_refused_without_asking(child):
    app = monitor()
    async with app.run_test(size=NARROW_SIZE, notifications=True) as pilot:
        # NVML saw a process with this PID that started an hour earlier: it is gone, and the PID
        # now belongs to another process.
        started = psutil.Process(child.pid).create_time()
        await feed(pilot, sample_with(child, create_time=started - 3600))
        await pilot.press("k")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert f"PID {child.pid} is now a different process; not signalled" in toasts(app)
        assert alive(child)


class _AsAnotherUser:
    """The ``os`` module as an unprivileged user who owns no process here sees it."""

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)

    @staticmethod
    def geteuid() -> int:
        return 54321

    getuid = geteuid


async def test_another_users_process_is_refused_without_asking(child, monkeypatch):
    monkeypatch.setattr(vramtop.processes, "os", _AsAnotherUser())
    owner = psutil.Process(child.pid).username()
    app = monitor()
    async with app.run_test(size=WIDE_SIZE, notifications=True) as pilot:
        await feed(pilot, sample_with(child))
        await pilot.press("t")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert f"PID {child.pid} belongs to {owner}; only they or root may signal it" in toasts(app)
        assert alive(child)


# -- trouble on screen ------------------------------------------------------------------------


async def test_stale_sample_shows_a_banner_with_the_time_of_the_last_fresh_data():
    app = monitor()
    async with app.run_test(size=NARROW_SIZE) as pilot:
        await feed(pilot, box())
        assert "⚠" not in screen_text(app)
        await feed(pilot, box(t=T0 + 30, error="NVML has not answered for 6 s (driver hung?)",
                              stale_since=T0))
        banner = line_with(app, "⚠")
        assert "NVML has not answered for 6 s (driver hung?) — showing data from 10:00:00" in banner
        assert "62732/81559 MiB" in screen_text(app)
        await feed(pilot, box(t=T0 + 31))
        assert "⚠" not in screen_text(app) and "driver hung" not in screen_text(app)


async def test_source_failure_before_any_sample_shows_the_message_until_data_comes():
    app = monitor()
    async with app.run_test(size=NARROW_SIZE) as pilot:
        assert "waiting for the first sample" in screen_text(app)
        app.post_message(SourceFailed("the NVIDIA driver is not loaded"))
        await pilot.pause()
        assert "⚠ the NVIDIA driver is not loaded" in screen_text(app)
        assert "waiting for the first sample" in screen_text(app)
        await feed(pilot, box())
        assert "driver is not loaded" not in screen_text(app)
        assert "62732/81559 MiB" in screen_text(app)


async def test_a_failed_gpu_shows_its_error_and_the_others_their_numbers():
    app = monitor()
    async with app.run_test(size=NARROW_SIZE) as pilot:
        await feed(pilot, trouble())
        assert "! GPU is lost" in line_with(app, " 1 H100 80GB HBM3")
        assert "62732/81559 MiB" in screen_text(app)


async def test_mig_devices_are_listed_under_their_gpu():
    app = monitor()
    async with app.run_test(size=WIDE_SIZE) as pilot:
        await feed(pilot, trouble())
        assert "MIG×2" in line_with(app, "A100-SXM4-80GB")
        assert "18113/40192 MiB" in line_with(app, "MIG 0 GI 1 CI 0")
        assert "4863/19968 MiB" in line_with(app, "MIG 1 GI 2 CI 0")
        await pilot.press("g", "g", "g")  # all, GPU 0, GPU 1 (lost), GPU 2: the A100 only
        assert "GPU 2 only" in line_with(app, "vramtop") and table_pids(app) == [7100, 7200]
        assert "GPU 2: 18000 MiB (MIG GI 1 CI 0)" in detail_text(app)


@pytest.mark.parametrize("size", [NARROW_SIZE, WIDE_SIZE])
async def test_processes_from_other_pid_namespaces_are_labelled_never_dropped(size):
    app = monitor()
    async with app.run_test(size=size) as pilot:
        await feed(pilot, box())
        rows = {int(row[1]): row for row in table_rows(app)}
        assert NOT_VISIBLE_LABEL in rows[18001] and "1200 MiB" in rows[18001]
        assert MISMATCH_LABEL in rows[2077] and "600 MiB" in rows[2077]
        # Both are on screen (a narrow terminal cuts the label, not the row).
        assert "(PID not visible" in row_on_screen(app, 18001)
        assert "(PID belongs to" in row_on_screen(app, 2077)


async def test_layout_follows_the_terminal_width():
    app = monitor()
    async with app.run_test(size=NARROW_SIZE) as pilot:
        await feed(pilot, box())
        assert app.has_class("narrow") and column_labels(app) == NARROW
        status = line_with(app, "vramtop")
        assert "gpu-box-01" not in status and "driver" not in status
        assert "62732/81559 MiB" in screen_text(app) and "free 18348" not in screen_text(app)
        assert " 0 H100 80GB HBM3" in screen_text(app)  # "NVIDIA " dropped to save room

        await pilot.resize_terminal(*WIDE_SIZE)
        await pilot.pause()
        assert not app.has_class("narrow") and column_labels(app) == WIDE
        status = line_with(app, "vramtop")
        assert "gpu-box-01" in status and "driver 580.159.04" in status and "CUDA 13.0" in status
        assert "free 18348  reserved 480" in line_with(app, "62732/81559 MiB")
        assert "%MEM" in line_with(app, "HOST RSS") and "75.8%" in row_on_screen(app, 30512)

        await pilot.resize_terminal(*NARROW_SIZE)
        await pilot.pause()
        assert app.has_class("narrow") and column_labels(app) == NARROW
        assert "%MEM" not in screen_text(app)


async def test_a_sample_that_comes_before_the_first_layout_is_drawn_at_full_width():
    app = monitor()
    app.post_message(SampleArrived(box()))  # a fast source: queued before the screen is laid out
    async with app.run_test(size=WIDE_SIZE) as pilot:
        await pilot.pause()
        assert "free 18348  reserved 480" in line_with(app, "62732/81559 MiB")
        assert "util  97%  mem-bw  61%" in line_with(app, GPU0[:12])


async def test_every_gpu_and_the_processes_fit_a_tmux_pane():
    app = monitor()
    async with app.run_test(size=NARROW_SIZE) as pilot:
        await feed(pilot, box())
        text = screen_text(app)
        for needle in ("62732/81559 MiB", "24317/81559 MiB", " 30512 ", " 2077 ", "PID 30512",
                       "q Quit"):
            assert needle in text
        assert all(len(line) <= NARROW_SIZE[0] for line in text.splitlines())


# -- snapshots: the whole screen, pixel for pixel (update with --snapshot-update) -------------


def fed(*samples: Sample, press: tuple[str, ...] = ()) -> Callable[[Pilot[None]], object]:
    async def run_before(pilot: Pilot[None]) -> None:
        await feed(pilot, *samples)
        if press:
            await pilot.press(*press)

    return run_before


@pytest.mark.parametrize("size", [NARROW_SIZE, WIDE_SIZE], ids=["80x24", "160x48"])
def test_snapshot_training_box(snap_compare, size):
    assert snap_compare(monitor(), terminal_size=size, run_before=fed(*history()))


@pytest.mark.parametrize("size", [NARROW_SIZE, WIDE_SIZE], ids=["80x24", "160x48"])
def test_snapshot_trouble(snap_compare, size):
    """Stale data, a lost GPU, MIG devices and processes of other PID namespaces."""
    run_before = fed(*history(6), trouble(), press=("s", "down"))
    assert snap_compare(monitor(), terminal_size=size, run_before=run_before)


def test_snapshot_help_80x24(snap_compare):
    assert snap_compare(monitor(), terminal_size=NARROW_SIZE, run_before=fed(box(), press=("?",)))


def test_snapshot_confirm_kill_160x48(snap_compare, monkeypatch):
    # The PIDs in ``box`` are made up: let the UI ask about one without looking it up here.
    monkeypatch.setattr("vramtop.processes.signal_refusal", lambda pid, create_time: None)
    assert snap_compare(monitor(), terminal_size=WIDE_SIZE, run_before=fed(box(), press=("k",)))


# -- the agent's bill and the warnings ---------------------------------------------------------


def agent_box(t: float, reserved_peak: int, oom: object = None) -> Sample:
    """TRAIN runs the agent; its allocator peak is ``reserved_peak`` on an 81559 MiB GPU."""
    from vramtop.model import AgentDevice, AgentSample, AllocatorStats, StepPeak, TensorCensus

    stats = AllocatorStats(allocated=50 * GiB, reserved=58 * GiB, active=50 * GiB, requested=50 * GiB,
                           inactive_split=0, allocated_peak=reserved_peak - 2 * GiB,
                           reserved_peak=reserved_peak, num_alloc_retries=0, num_ooms=0)
    census = TensorCensus(parameters_trainable=7 * GiB, parameters_frozen=0, gradients=7 * GiB,
                          optimizer_state=14 * GiB, time=t, seen="1 optimizer (AdamW); 1 model (LlamaForCausalLM)",
                          gradients_peak=7 * GiB)
    device = AgentDevice(index=0, uuid=GPU0, name="NVIDIA H100 80GB HBM3", stats=stats, census=census,
                         last_step=StepPeak(step=100, duration=0.9, peak_allocated=reserved_peak - 2 * GiB,
                                            peak_reserved=reserved_peak, persistent=29 * GiB, exact=False),
                         peak_step=12)
    agent = AgentSample(pid=TRAIN.pid, time=t, torch_version="2.11.0", devices=(device,), step=100,
                        phase="backward", last_oom=oom)  # type: ignore[arg-type]
    return box(t, agents=(agent,))


async def test_the_bill_of_an_agent_process_and_a_headroom_warning_with_advice():
    app = monitor()
    async with app.run_test(size=WIDE_SIZE) as pilot:
        # 77 GiB reserved at the peak + the CUDA context + the eval's 900 MiB: past 90% of the card.
        await feed(pilot, *(agent_box(T0 + i, reserved_peak=77 * GiB) for i in range(4)))
        assert f"●{TRAIN.pid}" in row_on_screen(app, TRAIN.pid)
        detail = detail_text(app)
        for label in ("parameters (trainable)", "optimizer state", "activations & temporaries*",
                      "= NVML per process", "LlamaForCausalLM", "advice (in the order to try)"):
            assert label in detail, detail
        warning = line_with(app, "projected step peak")
        assert "CRITICAL" in warning or "WARNING" in warning
        # Back to a comfortable peak: the warning clears (after its hold), it does not flicker.
        await feed(pilot, *(agent_box(T0 + 10 + i, reserved_peak=40 * GiB) for i in range(8)))
        assert "projected step peak" not in screen_text(app)


async def test_the_first_sample_is_drawn_before_the_risk_rules_run_and_its_warning_follows(monkeypatch):
    # The rules, the job grouping and the details are imported and run right after the first
    # frame, not for it.
    at_first_frame = []
    after_first_frame = VramtopApp._after_first_frame

    def looking(self: VramtopApp) -> None:
        at_first_frame.append(screen_text(self))
        after_first_frame(self)

    monkeypatch.setattr(VramtopApp, "_after_first_frame", looking)
    app = monitor()
    assert Thresholds().raise_after == 3  # the samples a warning's condition must hold
    async with app.run_test(size=WIDE_SIZE) as pilot:
        await feed(pilot, agent_box(T0, reserved_peak=77 * GiB))
        [first] = at_first_frame
        assert "/81559 MiB" in first and f"●{TRAIN.pid}" in first and "parameters (trainable)" not in first
        assert "advice (in the order to try)" in detail_text(app)  # the bill and advice right after it
        await feed(pilot, agent_box(T0 + 1, reserved_peak=77 * GiB))
        assert "projected step peak" not in screen_text(app)
        # The third sample raises it: the first counted as one of the three.
        await feed(pilot, agent_box(T0 + 2, reserved_peak=77 * GiB))
        warning = line_with(app, "projected step peak")
        assert "CRITICAL" in warning or "WARNING" in warning


async def test_a_sample_that_comes_before_the_first_is_analysed_waits_its_turn(monkeypatch):
    from vramtop.analysis.risk import RiskTracker

    seen: list[float] = []
    update = RiskTracker.update

    def recording(self: RiskTracker, sample: Sample) -> object:
        seen.append(sample.time)
        return update(self, sample)

    monkeypatch.setattr(RiskTracker, "update", recording)
    app = monitor()
    async with app.run_test(size=WIDE_SIZE) as pilot:
        app._draw_first(box(T0))
        app.take(box(T0 + 1))  # before the refresh after which the first is analysed
        await pilot.pause()
        assert seen == [T0, T0 + 1]


async def test_the_details_are_drawn_again_only_when_what_they_show_changed(monkeypatch):
    import vramtop.ui.widgets.detail as detail_module

    drawn = []
    render = detail_module.render_detail

    def counting(*args, **kwargs):
        drawn.append(args[0].time)
        return render(*args, **kwargs)

    monkeypatch.setattr(detail_module, "render_detail", counting)
    app = monitor()
    async with app.run_test(size=WIDE_SIZE) as pilot:
        first = agent_box(T0 + 1, reserved_peak=60 * GiB)
        await feed(pilot, first)
        assert drawn == [T0 + 1]
        # A new NVML sample, the same process and the same agent sample: nothing to draw.
        await feed(pilot, replace(first, time=T0 + 1.2), replace(first, time=T0 + 1.4))
        assert drawn == [T0 + 1]
        # The GPU's utilisation is not in the details; its free memory is.
        busier = (replace(first.gpus[0], utilization_gpu=3), first.gpus[1])
        await feed(pilot, replace(first, time=T0 + 1.6, gpus=busier))
        assert drawn == [T0 + 1]
        fuller = (replace(first.gpus[0], memory_free=first.gpus[0].memory_free - GiB), first.gpus[1])
        await feed(pilot, replace(first, time=T0 + 1.8, gpus=fuller))
        assert drawn == [T0 + 1, T0 + 1.8]
        drawn.pop()
        # The agent's next sample is drawn.
        await feed(pilot, agent_box(T0 + 2, reserved_peak=62 * GiB))
        assert drawn == [T0 + 1, T0 + 2]
        # The same agent sample, long after: the title says how old it is.
        await feed(pilot, replace(first, time=T0 + 31))
        assert drawn[-1] == T0 + 31 and "agent: no news for 30 s" in detail_text(app)
        # The process's NVML figure changed: drawn again.
        train = replace(TRAIN, used_memory=TRAIN.used_memory + GiB)
        gpus = (replace(first.gpus[0], processes=(train, EVAL)), first.gpus[1])
        await feed(pilot, replace(first, time=T0 + 31.2, gpus=gpus))
        assert drawn[-1] == T0 + 31.2


async def test_an_oom_post_mortem_stays_on_screen_for_that_process():
    from vramtop.model import OomReport

    report = OomReport(time=T0, device=0, requested=12 * GiB, device_limit=80 * GiB, device_free=3 * GiB,
                       allocated=70 * GiB, reserved=76 * GiB, step=97, phase="backward",
                       largest_free_block=2 * GiB, largest_live_blocks=(8 * GiB, 4 * GiB),
                       path="/runs/vramtop-oom-30512-20260101-100000.json")
    app = monitor()
    async with app.run_test(size=WIDE_SIZE) as pilot:
        await feed(pilot, agent_box(T0 + 1, reserved_peak=60 * GiB, oom=report))
        await feed(pilot, agent_box(T0 + 2, reserved_peak=60 * GiB, oom=report))  # later samples keep it
        detail = detail_text(app)
        assert "OUT OF MEMORY" in detail and "step 97 · backward: asked for 12.0 GiB with 3.0 GiB free" in detail
        assert "biggest live blocks 8.0 GiB, 4.0 GiB" in detail
        assert "post-mortem: /runs/vramtop-oom-30512-20260101-100000.json" in detail


async def test_an_oom_post_mortem_says_where_it_happened():
    from vramtop.model import CodeFrame, LiveAllocation, OomReport

    report = OomReport(time=T0, device=0, requested=12 * GiB, device_limit=80 * GiB, device_free=3 * GiB,
                       allocated=70 * GiB, reserved=76 * GiB, step=97, phase="forward",
                       module="model.layers.11.mlp", module_class="LlamaMLP",
                       frames=(CodeFrame("/venv/lib/python3.12/site-packages/transformers/models/llama/"
                                         "modeling_llama.py", 180, "forward", True),
                               CodeFrame("/home/me/train.py", 42, "step")),
                       largest_allocations=(LiveAllocation(8 * GiB, (CodeFrame("/home/me/train.py", 30, "load"),)),),
                       path="/runs/oom-30512-20260101-100000.json", trace_path="/runs/oom-30512-20260101-100000.pickle")
    app = monitor()
    async with app.run_test(size=WIDE_SIZE) as pilot:
        await feed(pilot, agent_box(T0 + 1, reserved_peak=60 * GiB, oom=report))
        detail = detail_text(app)
        assert "step 97 · model.layers.11.mlp (LlamaMLP, forward): asked for 12.0 GiB" in detail
        assert "at transformers/models/llama/modeling_llama.py:180 in forward() ← train.py:42 in step()" in detail
        assert "8.0 GiB from train.py:30 in load()" in detail
        assert "Allocation history saved: /runs/oom-30512-20260101-100000.pickle" in detail


async def test_an_agent_that_stopped_reporting_is_flagged_and_its_errors_shown():
    sample = agent_box(T0, reserved_peak=40 * GiB)
    agent = replace(sample.agents[0], time=T0 - 30, error="RuntimeError: odd torch")
    app = monitor()
    async with app.run_test(size=WIDE_SIZE) as pilot:
        await feed(pilot, replace(sample, agents=(agent,)))
        detail = detail_text(app)
        assert "agent: no news for 30 s" in detail and "agent error: RuntimeError: odd torch" in detail


def test_the_warning_list_keeps_to_its_limit_and_points_at_the_full_list():
    from vramtop.analysis.risk import RiskWarning
    from vramtop.ui.widgets.warnings import render_warnings

    warnings = tuple(RiskWarning("info", "neighbour", "GPU-1", 0, 100 + i, f"GPU 0: warning {i}", {}, "why", "do")
                     for i in range(5))
    lines = render_warnings(warnings, 80, narrow=True, limit=2).plain.splitlines()
    assert [line.split(" →")[0].strip() for line in lines[:2]] == ["INFO  GPU 0: warning 0", "INFO  GPU 0: warning 1"]
    assert lines[2] == " … and 3 more (W shows them all)" and len(lines) == 3
    # One over the limit: shown, since counting it would take the same line.
    assert len(render_warnings(warnings[:3], 80, narrow=True, limit=2).plain.splitlines()) == 3
    assert "more" not in render_warnings(warnings[:3], 80, narrow=True, limit=2).plain


async def test_a_problem_reading_agents_is_shown_in_the_banner():
    app = monitor()
    async with app.run_test(size=WIDE_SIZE) as pilot:
        await feed(pilot, replace(box(), problems=("agents cannot be read: /tmp/vramtop-1000 belongs to uid 1001, "
                                                   "not to you (uid 1000). Set XDG_RUNTIME_DIR ...",)))
        assert "agents cannot be read: /tmp/vramtop-1000 belongs to uid 1001" in screen_text(app)


async def test_a_new_sample_repaints_only_the_lines_that_changed_and_lays_out_nothing(monkeypatch):
    # With a training job on screen every sample changes figures, not the layout: a new layout of
    # the whole screen, or repainting unchanged lines, is most of what a frame costs.
    from tests.test_risk import snap
    from vramtop.ui.widgets.panel import Panel

    app = monitor()
    async with app.run_test(size=WIDE_SIZE) as pilot:
        await feed(pilot, snap(0.0, step=100), snap(1.0, step=101))
        calls: list[tuple[str, tuple[object, ...], bool]] = []
        real = Panel.refresh

        def spy(self, *regions, layout=False, **kw):
            calls.append((self.id or type(self).__name__, regions, layout))
            return real(self, *regions, layout=layout, **kw)

        monkeypatch.setattr(Panel, "refresh", spy)
        await feed(pilot, snap(2.0, step=102))  # the step changed, nothing else
        detail = [c for c in calls if c[0] == "detail"]
        assert detail and not any(layout for _, _, layout in calls)
        rows = app.query_one("#detail").size.height
        for _, regions, _ in detail:  # a few single rows of the bill, not all of it
            assert regions and all(r.height == 1 for r in regions) and len(regions) <= rows // 3, (rows, regions)
        assert "step 102" in screen_text(app)


async def test_a_changed_cell_redraws_that_cell_not_the_whole_table(monkeypatch):
    # DataTable alone re-renders every visible cell when one changes: on a box of 64 processes
    # that was half the monitor's time. The table reuses the cells whose content did not change.
    from textual.widgets import DataTable

    from tests.test_risk import snap

    others = [(5000 + i, (i + 1) * GiB, f"python serve_{i}.py") for i in range(12)]
    app = monitor()
    async with app.run_test(size=WIDE_SIZE) as pilot:
        await feed(pilot, snap(0.0, others=others), snap(1.0, others=others))
        await pilot.pause()
        rendered: list[tuple[int, int]] = []
        real = DataTable._render_cell

        def spy(self, row_index, column_index, *args, **kwargs):
            rendered.append((row_index, column_index))
            return real(self, row_index, column_index, *args, **kwargs)

        monkeypatch.setattr(DataTable, "_render_cell", spy)
        await feed(pilot, snap(2.0, others=others, allocated=30 * GiB))  # the agent's TORCH cell only
        await pilot.pause()
        assert screen_text(app).count("30.0 GiB/") == 1
        assert 0 < len(rendered) <= 3, rendered  # that cell (and maybe its row's neighbours), not 13x9


async def test_a_changed_cell_repaints_its_row_not_the_header_or_the_other_rows(monkeypatch):
    # DataTable.update_cell repaints the whole table: its header and every row went to the
    # terminal again each time one process's figure changed.
    from textual.widgets import DataTable

    from tests.test_risk import snap

    others = [(5000 + i, (i + 1) * GiB, f"python serve_{i}.py") for i in range(12)]
    app = monitor()
    async with app.run_test(size=WIDE_SIZE) as pilot:
        await feed(pilot, snap(0.0, others=others), snap(1.0, others=others))
        await pilot.pause()
        table = app.query_one(ProcessTable)
        agent_row = next(i for i, row in enumerate(table_rows(app)) if "GiB/" in row[6])
        drawn: list[int] = []
        real = DataTable.render_line

        def spy(self, y):
            drawn.append(y)
            return real(self, y)

        monkeypatch.setattr(DataTable, "render_line", spy)
        await feed(pilot, snap(2.0, others=others, allocated=30 * GiB))  # the agent's TORCH cell only
        await pilot.pause()
        assert screen_text(app).count("30.0 GiB/") == 1
        assert drawn and set(drawn) == {table.header_height + agent_row}, (drawn, agent_row)


async def test_opening_and_closing_help_many_times_keeps_nothing_behind():
    # Textual's Footer kept its old key widgets after every dialog (+0.4 MiB each time), and a new
    # help screen per `?` left caches behind: a monitor left in tmux for days grew without end.
    import gc

    from textual._styles_cache import StylesCache
    from textual.widget import Widget

    def alive():
        gc.collect()
        objects = gc.get_objects()
        # type(), not isinstance(): some objects (torch's) answer __class__ with a deprecation warning
        return sum(issubclass(type(o), Widget) for o in objects), sum(type(o) is StylesCache for o in objects)

    from tests.test_risk import snap

    app = monitor()
    async with app.run_test(size=NARROW_SIZE) as pilot:
        await feed(pilot, snap(0.0))

        async def help_cycles(n):
            for _ in range(n):
                await pilot.press("question_mark")
                await pilot.pause()
                await pilot.press("escape")
                await pilot.pause()

        await help_cycles(3)
        before = alive()
        await help_cycles(30)
        assert alive() == before


async def test_what_a_long_run_leaves_on_screen_is_what_a_full_redraw_draws():
    # Panels repaint only the rows that changed. If the rows they compare differ from the rows
    # drawn (Textual wrapping a line again), an old row stays on screen: it did, in the bill's
    # advice at 80x24. Feed a real recording, then redraw everything: nothing may change.
    from pathlib import Path

    from vramtop.recording import read_recording
    from vramtop.ui.widgets import panel

    recording = read_recording(Path(__file__).resolve().parents[1] / "screenshots" / "data" / "gpt2-training.jsonl")
    samples = recording.samples_with_events()
    app = monitor()
    async with app.run_test(size=NARROW_SIZE) as pilot:
        # Up to shortly after the first warning: the advice appears, the details outgrow their
        # box and its scrollbar takes a column (the rows must be wrapped again for it).
        for sample in samples[:82]:
            await feed(pilot, sample)
        await pilot.pause()
        incremental = screen_text(app)
        for widget in app.query(panel.Panel):
            widget.refresh()
        await pilot.pause()
        assert screen_text(app) == incremental


async def test_a_changed_cell_repaints_that_cell_not_its_whole_row(monkeypatch):
    # The rest of the row went to the terminal again with each changed figure.
    from tests.test_risk import snap

    app = monitor()
    async with app.run_test(size=WIDE_SIZE) as pilot:
        await feed(pilot, snap(0.0), snap(1.0))
        await pilot.pause()
        table = app.query_one(ProcessTable)
        agent_row = next(i for i, row in enumerate(table_rows(app)) if "GiB/" in row[6])
        y = table.header_height + agent_row
        before = [(ch, str(seg.style)) for seg in table.render_line(y) for ch in seg.text]
        regions = []
        real = ProcessTable.refresh

        def spy(self, *asked, **kwargs):
            regions.extend(asked)
            return real(self, *asked, **kwargs)

        monkeypatch.setattr(ProcessTable, "refresh", spy)
        await feed(pilot, snap(2.0, allocated=30 * GiB))  # the agent's TORCH cell only
        await pilot.pause()
        after = [(ch, str(seg.style)) for seg in table.render_line(y) for ch in seg.text]
        changed = {x for x, (a, b) in enumerate(zip(before, after, strict=True)) if a != b}
        repainted = {(x, ry) for r in regions for ry in range(r.y, r.bottom) for x in range(r.x, r.right)}
        assert changed and {(x, y) for x in changed} <= repainted
        assert {ry for _, ry in repainted} == {y} and len(repainted) < len(after) / 3, regions
