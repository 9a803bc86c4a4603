"""scripts/screenshots.py, run as a program on synthetic samples in a temporary directory."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path

from vramtop.model import GpuSample, HostSample, ProcessSample, Sample
from vramtop.protocol import sample_document

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "screenshots.py"
MiB = 1024 * 1024
GiB = 1024 * MiB
T0 = 1_767_261_600.0  # 2026-01-01 10:00:00 UTC
UUID = "GPU-7d1e2f3a-4b5c-4d6e-8f7a-9b0c1d2e3f4a"


def synthetic(t: float, used_mib: int) -> Sample:
    """A made-up one-GPU machine (not real data: real data lives in screenshots/data/)."""
    total, reserved = 40_960 * MiB, 368 * MiB
    proc = ProcessSample(pid=4321, gpu_uuid=UUID, used_memory=(used_mib - 300) * MiB, kind="C",
                         user="alice", command="python train.py", host_rss=3 * GiB)
    gpu = GpuSample(index=0, uuid=UUID, name="NVIDIA A100-SXM4-40GB", memory_total=total,
                    memory_used=used_mib * MiB, memory_free=total - used_mib * MiB - reserved,
                    memory_reserved=reserved, utilization_gpu=88, utilization_memory=40,
                    processes=(proc,))
    host = HostSample(hostname="synthetic-host", memory_total=251 * GiB, memory_used=40 * GiB)
    return Sample(time=t, host=host, gpus=(gpu,), driver_version="570.86.15",
                  cuda_driver_version="12.8")


def document(t: float, used_mib: int) -> dict[str, object]:
    return sample_document(synthetic(t, used_mib))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120)


_TEXT = re.compile(r'<text [^>]*x="([\d.]+)"[^>]*textLength="([\d.]+)"[^>]*'
                   r'clip-path="url\(#terminal-(?:\d+-)?line-(\d+)\)">(.*?)</text>')


def svg_lines(svg: str) -> list[str]:
    """The terminal lines drawn in a Rich SVG screenshot (text spans put back in their cells)."""
    rows: dict[int, dict[int, str]] = {}
    cell = None
    for x, length, line, escaped in _TEXT.findall(svg):
        text = html.unescape(escaped).replace("\xa0", " ")
        cell = cell or float(length) / len(text)
        column = round(float(x) / cell)
        row = rows.setdefault(int(line), {})
        for offset, char in enumerate(text):
            row[column + offset] = char
    return ["".join(row.get(c, " ") for c in range(max(row) + 1))
            for _, row in sorted(rows.items())]


def test_renders_each_data_file_at_both_sizes_from_the_samples_it_holds(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    # The three accepted forms: a JSON list (history), one document, documents one after another.
    (data / "history.json").write_text(
        json.dumps([document(T0 + 2 * i, 8_000 + 1_000 * i) for i in range(5)]))
    (data / "single.json").write_text(json.dumps(document(T0, 30_000), indent=2))
    (data / "repeated.json").write_text(
        "\n".join(json.dumps(document(T0 + i, 20_000 + i), indent=2) for i in range(3)))

    result = run("--data", str(data), "--out", str(out))

    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        f"{name}-{size}.svg" for name in ("history", "repeated", "single")
        for size in ("160x48", "80x24")]
    wide = "\n".join(svg_lines((out / "history-160x48.svg").read_text()))
    # The newest sample of the history, 12000 MiB used, at its time, with its host name.
    assert "NVIDIA A100-SXM4-40GB" in wide and "12000/40960 MiB" in wide
    assert "synthetic-host" in wide and "10:00:08" in wide and "every 2s" in wide
    assert "11700 MiB" in wide and "python train.py" in wide  # the process row
    narrow = svg_lines((out / "history-80x24.svg").read_text())
    assert len(narrow) <= 24 and all(len(line) <= 80 for line in narrow)
    assert "A100-SXM4-40GB" in "\n".join(narrow) and "12000/40960 MiB" in "\n".join(narrow)
    assert "30000/40960 MiB" in "\n".join(svg_lines((out / "single-80x24.svg").read_text()))
    assert "20002/40960 MiB" in "\n".join(svg_lines((out / "repeated-160x48.svg").read_text()))


def test_a_file_that_is_not_a_sample_is_named_in_a_clear_error(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"schema": "something.else"}))
    result = run("--data", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "bad.json" in result.stderr and "not a vramtop.sample document" in result.stderr
    assert not (tmp_path / "out").exists()


def test_no_data_points_to_the_capture_instructions(tmp_path):
    result = run("--data", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and "screenshots/data/README.md" in result.stderr


def test_a_distributed_job_also_gets_the_rank_view_at_both_sizes(tmp_path):
    from tests.fakes.fake_ranks import job_documents

    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    (data / "job.json").write_text(json.dumps(job_documents(count=2)))
    result = run("--data", str(data), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        f"{name}-{size}.svg" for name in ("job", "job-ranks") for size in ("160x48", "80x24")]
    narrow = svg_lines((out / "job-ranks-80x24.svg").read_text())
    ranks = [line for line in narrow if line.lstrip().startswith("rank ")]
    assert len(ranks) == 8 and "◀" in ranks[3] and all(len(line) <= 80 for line in narrow)
    wide = "\n".join(svg_lines((out / "job-ranks-160x48.svg").read_text()))
    assert "◀ nearest OOM" in wide and "master 127.0.0.1:29500" in wide
    folded = svg_lines((out / "job-80x24.svg").read_text())
    assert not any(line.lstrip().startswith("rank ") for line in folded)
    assert any("8 ranks" in line and "r: ranks" in line for line in folded)
