"""The rank view on real ranks: `torchrun --nproc-per-node 2` under `vramtop run` is one job with
two ranks in `vramtop --once --json` and in the TUI's rank view. Needs two GPUs (one rank each);
skipped with the reason on a one-GPU machine."""

from __future__ import annotations

import pytest

from tests.gpu.test_launch_gpu import gpu_count, torchrun_and_look
from vramtop.protocol import sample_from_document

pytestmark = pytest.mark.skipif(gpu_count() < 2, reason="needs two GPUs: one rank per GPU")


async def test_torchrun_with_two_ranks_is_one_job_in_once_json_and_in_the_rank_view(tmp_path):
    from tests.test_ui import NARROW_SIZE, feed, monitor, screen_text

    ranks, doc, job, err = torchrun_and_look(tmp_path)
    assert job.returncode == 0, err[-3000:]
    (found,) = doc["jobs"]
    assert found["world_size"] == 2 and [r["rank"] for r in found["ranks"]] == [0, 1]
    assert {r["pid"]: r["rank"] for r in found["ranks"]} == ranks
    assert sorted(r["gpu_index"] for r in found["ranks"]) == [0, 1]
    assert all(r["peak"] > 0 and r["headroom"] > 0 for r in found["ranks"])
    assert found["closest_rank"] in (0, 1) and found["peak_spread"] is not None
    # torchrun --standalone names its rendezvous: both ranks report the same run id and master.
    launches = [a["launch"] for a in doc["agents"] if a["pid"] in ranks or a.get("host_pid") in ranks]
    assert len(launches) == 2 and launches[0]["run_id"] == launches[1]["run_id"] is not None
    assert launches[0]["master"] == launches[1]["master"] and launches[0]["parent_pid"] == launches[1]["parent_pid"]

    app = monitor()
    async with app.run_test(size=NARROW_SIZE) as pilot:
        await feed(pilot, sample_from_document(doc))
        await pilot.press("r")
        lines = [line for line in screen_text(app).splitlines() if line.lstrip().startswith("rank ")]
        assert [int(line.split()[1]) for line in lines] == [0, 1]
        assert sum("◀" in line for line in lines) == 1
