"""`vramtop record` where it cannot write, through the real CLI with FakeNvml (the cases of
bench/record_faults.py): a read-only directory, a disk that fills while it records, the file or
the directory made unwritable while it records. Each ends with exit code 1 (documented: error),
one clear line naming the file and the cause, no traceback, and every sample already written
readable from the file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import record_faults as rf

needs_namespaces = pytest.mark.skipif(not rf.namespaces_work(), reason="no user+mount namespaces (unshare -rm)")


def clear_failure(result, cause: str) -> list[str]:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    failures = [line for line in result.stderr.splitlines() if cause in line]
    assert len(failures) == 1 and failures[0].startswith("vramtop: ") and "r.jsonl" in failures[0], result.stderr
    return failures


@needs_namespaces
def test_a_read_only_directory_is_one_clear_line(tmp_path):
    result = rf.in_tmpfs(tmp_path, "size=1m,ro", ["--duration", "1"])
    clear_failure(result, "Read-only file system")
    assert not (tmp_path / "r.jsonl").exists()


@needs_namespaces
def test_a_disk_that_fills_while_recording_keeps_every_sample_written(tmp_path):
    result = rf.in_tmpfs(tmp_path, "size=12k", ["--duration", "3"])
    clear_failure(result, "disk full while writing")
    row = rf.outcome("full", result, tmp_path / "r.jsonl")
    assert row["said_saved"] == row["complete_lines"] == row["readable"] > 0, row


@pytest.fixture
def chattr_dir(tmp_path):
    if not rf.chattr_works(tmp_path):
        pytest.skip("chattr +i needs root on a file system with attributes")
    return tmp_path


def test_a_file_made_unwritable_while_recording_keeps_every_sample_written(chattr_dir):
    result = rf.with_chattr(chattr_dir, "file", 1.0, ["--duration", "3"])
    clear_failure(result, "permission denied while writing")
    row = rf.outcome("file", result, chattr_dir / "r.jsonl")
    assert row["said_saved"] == row["complete_lines"] == row["readable"] > 0, row


def test_a_directory_made_unwritable_before_compress_keeps_the_plain_recording(chattr_dir):
    result = rf.with_chattr(chattr_dir, "dir", 1.0, ["--duration", "2", "--compress"])
    clear_failure(result, "could not compress")
    from vramtop.recording import read_recording

    recording = read_recording(chattr_dir / "r.jsonl")
    assert recording.end is not None and recording.end.samples == len(recording.samples) > 0
    assert not recording.problems and not (chattr_dir / "r.jsonl.xz").exists()
