"""Recordings: the format, the writer, the reader (damage of every kind) and ReplaySource."""

from __future__ import annotations

import errno
import gzip
import json
import lzma
import os
from dataclasses import replace
from pathlib import Path

import pytest

from tests.fakes.fake_nvml import MiB, two_gpu_box
from vramtop.codec import from_dict, to_dict
from vramtop.model import (
    AgentDevice,
    AgentSample,
    AllocatorStats,
    GpuSample,
    HostSample,
    MigDeviceSample,
    ProcessSample,
    Sample,
    StepPeak,
    TensorCensus,
)
from vramtop.protocol import RECORDING_SCHEMA, RECORDING_VERSION, SchemaError
from vramtop.recording import (
    RecordingError,
    RecordingReader,
    encode,
    end_record,
    event_record,
    header_record,
    read_recording,
    sample_record,
)
from vramtop.sinks.recorder import Recorder, RecorderError
from vramtop.sources.hostinfo import HostInfo
from vramtop.sources.nvml import NvmlSource
from vramtop.sources.poller import DeadlineReader
from vramtop.sources.replay import EndOfRecording, ReplaySource


def nvml_samples(n: int) -> list[Sample]:
    """Real NvmlSource samples of the two-GPU fake box, with memory moving between reads."""
    fake = two_gpu_box()
    source = NvmlSource(nvml=fake, host=HostInfo(holds_gpu=lambda pid: True), process_interval=0)
    samples = []
    for i in range(n):
        fake.gpus[0].used = (20000 + 37 * i) * MiB + i
        samples.append(source.read())
    return samples


def small_sample(i: int) -> Sample:
    return Sample(time=1_800_000_000.0 + i / 4, host=HostSample("h", 64 * MiB, 8 * MiB + i),
                  gpus=(GpuSample(index=0, uuid="GPU-a", name="G", memory_used=i * MiB),))


def rich_sample() -> Sample:
    """Every sample type, optional fields set and unset, a stale error: all must survive."""
    stats = AllocatorStats(allocated=10 * MiB, reserved=16 * MiB, active=11 * MiB,
                           requested=9 * MiB, inactive_split=1 * MiB, allocated_peak=14 * MiB,
                           reserved_peak=20 * MiB, num_alloc_retries=2, num_ooms=1,
                           largest_free_block=3 * MiB, segments=4, snapshot_time=1_800_000_000.5)
    census = TensorCensus(parameters_trainable=4 * MiB, parameters_frozen=1 * MiB,
                          gradients=4 * MiB, optimizer_state=8 * MiB, time=1_800_000_000.25,
                          seen="1 optimizer", complete=False)
    agent = AgentSample(pid=7, time=1_800_000_000.5, torch_version="2.13.0", step=12,
                        phase="backward", rank=0, expandable_segments=True, dropped=3, host_pid=70,
                        devices=(AgentDevice(index=0, uuid="GPU-a", name="G", stats=stats,
                                             census=census,
                                             last_step=StepPeak(step=11, duration=0.5,
                                                                peak_allocated=15 * MiB,
                                                                peak_reserved=20 * MiB,
                                                                persistent=9 * MiB, exact=True)),))
    gpu = GpuSample(index=3, uuid="GPU-a", name="G \u00e9 \udcff", memory_total=80 * MiB,
                    memory_used=None, mig_enabled=True,
                    mig_devices=(MigDeviceSample(0, "MIG-1", 1, 0, 10 * MiB, None, 2 * MiB),),
                    processes=(ProcessSample(pid=70, gpu_uuid="GPU-a", used_memory=None, kind="C+G",
                                             gpu_instance_id=1, compute_instance_id=0,
                                             visibility="not-visible", command="python -c 'x\ny'",
                                             host_rss=5, create_time=1.5),))
    lost = GpuSample(index=4, uuid="GPU-b", name="G", error="GPU is lost")
    return Sample(time=1_800_000_001.0, host=HostSample("h", 1 << 40, 1 << 39, 7, 3),
                  gpus=(gpu, lost), driver_version="580.1", cuda_driver_version="13.0",
                  error="NVML has not answered for 5 s", stale_since=1_800_000_000.0,
                  agents=(agent,))


def record(path: Path, samples: list[Sample], *, events: int = 0, close: bool = True,
           compress: str = "") -> Path:
    recorder = Recorder(path, header_record(samples[0], interval=0.25, command=["python", "t.py"]))
    for i, sample in enumerate(samples):
        recorder.write_sample(sample)
        if i < events:
            recorder.write_event("step", {"step": i, "peak": i * MiB}, pid=42, time=sample.time)
    return Path(recorder.close("done", compress=compress)) if close else path


# -- round trips ----------------------------------------------------------------------------


def test_round_trip_gives_equal_samples_header_events_and_end(tmp_path):
    samples = [*nvml_samples(5), rich_sample()]
    path = record(tmp_path / "r.jsonl", samples, events=2)
    rec = read_recording(path)
    assert rec.samples == tuple(samples)
    assert rec.problems == () and not rec.writer_died and rec.ignored == 0
    h = rec.header
    assert h is not None and h.version == RECORDING_VERSION and h.interval == 0.25
    assert h.command == ("python", "t.py") and h.driver == "580.159.04"
    assert h.started == samples[0].time
    assert [(g.index, g.uuid, g.memory_total) for g in h.gpus] == [
        (g.index, g.uuid, g.memory_total) for g in samples[0].gpus]
    assert [(e.kind, e.pid, e.data) for e in rec.events] == [
        ("step", 42, {"step": 0, "peak": 0}), ("step", 42, {"step": 1, "peak": MiB})]
    assert rec.end is not None and rec.end.samples == 6 and rec.end.reason == "done"


def test_each_record_is_one_line_of_json(tmp_path):
    path = record(tmp_path / "r.jsonl", [rich_sample()], events=1)  # a newline inside a command
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 5  # header, sample, event, end
    types = [json.loads(line)["type"] for line in lines[:-1]]
    assert types == ["header", "sample", "event", "end"]
    assert json.loads(lines[0])["schema"] == RECORDING_SCHEMA


COMPRESSIONS = pytest.mark.parametrize("suffix,unpack", [(".xz", lzma.decompress), (".gz", gzip.decompress)],
                                       ids=["xz", "gzip"])


@COMPRESSIONS
def test_compressed_round_trip_and_the_plain_name_still_finds_it(tmp_path, suffix, unpack):
    samples = nvml_samples(20)
    final = record(tmp_path / "r.jsonl", samples, compress=suffix)
    assert final == tmp_path / f"r.jsonl{suffix}" and not (tmp_path / "r.jsonl").exists()
    assert [p.name for p in tmp_path.iterdir()] == [f"r.jsonl{suffix}"]  # no temporary file left
    rec = read_recording(final)
    assert rec.compressed and rec.samples == tuple(samples) and rec.problems == ()
    assert read_recording(tmp_path / "r.jsonl").samples == tuple(samples)
    # The standard tool (xz, gzip) reads it too.
    assert unpack(final.read_bytes()).count(b"\n") == 22


def test_missing_file_is_an_error_not_damage(tmp_path):
    with pytest.raises(RecordingError, match="no such file"):
        read_recording(tmp_path / "nope.jsonl")


# -- damage -------------------------------------------------------------------------------


def test_truncation_at_every_byte_offset_returns_whole_records_and_says_what_is_missing(tmp_path):
    samples = [small_sample(i) for i in range(3)]
    good = record(tmp_path / "good.jsonl", samples, events=1).read_bytes()
    records = [json.loads(line) for line in good.splitlines()]
    cut_file = tmp_path / "cut.jsonl"
    for cut in range(len(good) + 1):
        data = good[:cut]
        cut_file.write_bytes(data)
        rec = read_recording(cut_file)  # never raises
        whole = records[: data.count(b"\n")]
        expected = [from_dict(Sample, r["sample"]) for r in whole if r["type"] == "sample"]
        assert rec.samples == tuple(expected)
        assert len(rec.events) == sum(r["type"] == "event" for r in whole)
        assert (rec.header is not None) == bool(whole)
        if cut == len(good):
            assert rec.problems == () and rec.end is not None
            continue
        assert rec.end is None and rec.writer_died
        messages = [str(p) for p in rec.problems]
        assert any("writer died" in m for m in messages)
        torn = [p for p in rec.problems if "cut off" in p.message]
        if data and not data.endswith(b"\n"):
            assert len(torn) == 1 and torn[0].line == len(whole) + 1
        else:
            assert torn == []


@COMPRESSIONS
def test_truncated_compressed_file_at_every_offset_never_raises(tmp_path, suffix, unpack):
    samples = [small_sample(i) for i in range(3)]
    good = record(tmp_path / "good.jsonl", samples, compress=suffix).read_bytes()
    cut_file = tmp_path / f"cut.jsonl{suffix}"
    for cut in range(len(good)):
        cut_file.write_bytes(good[:cut])
        rec = read_recording(cut_file)
        assert rec.samples == tuple(samples[: len(rec.samples)])
        assert rec.problems
        # Only the end of the stream (the last bits, the check and index trailer) can go missing
        # with every record still readable; then everything must be there.
        assert rec.end is None or rec.samples == tuple(samples)
    # Every complete line that made it into the file is recovered, not only whole 1 MiB chunks.
    many = [small_sample(i) for i in range(60)]
    longer = record(tmp_path / "longer.jsonl", many, compress=suffix).read_bytes()
    cut_file.write_bytes(longer[: len(longer) // 2])
    recovered = read_recording(cut_file).samples
    assert 0 < len(recovered) < 60 and recovered == tuple(many[: len(recovered)])

def test_garbage_lines_in_the_middle_are_skipped_and_counted_with_line_numbers(tmp_path):
    samples = [small_sample(i) for i in range(4)]
    lines = record(tmp_path / "good.jsonl", samples).read_bytes().splitlines(keepends=True)
    garbage = [
        b"this is not json\n",
        b"\xff\xfe\x00\x01 binary\n",
        b"[1, 2, 3]\n",
        b'{"type":"sample","sample":{"time":"yesterday"}}\n',
        b'{"type":"sample","sam\n',  # a torn line that was followed by more (a crash, then reuse)
        b"\n",  # blank lines are not damage
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"".join(lines[:3] + garbage + lines[3:]))
    rec = read_recording(path)
    assert rec.samples == tuple(samples) and rec.end is not None
    assert [p.line for p in rec.problems] == [4, 5, 6, 7, 8]
    assert rec.damaged_lines == 5
    assert "time" in rec.problems[3].message  # the decoder says which field is bad


def test_newer_major_version_is_refused_with_a_clear_message(tmp_path):
    header = header_record(small_sample(0), interval=1.0, command=None)
    path = tmp_path / "new.jsonl"
    path.write_bytes(encode({**header, "version": RECORDING_VERSION + 1})
                     + encode(sample_record(small_sample(0))))
    with pytest.raises(SchemaError, match=r"version 2 file, newer than this vramtop.*upgrade"):
        read_recording(path)
    with pytest.raises(SchemaError, match="newer"):
        ReplaySource(path).open()


def test_a_different_document_is_not_a_recording(tmp_path):
    path = tmp_path / "once.json"
    path.write_text(json.dumps({"schema": "vramtop.sample", "version": 1, "time": 1.0}) + "\n")
    with pytest.raises(SchemaError, match="not a vramtop recording"):
        read_recording(path)


def test_a_file_with_no_json_record_is_not_a_recording_and_the_cli_says_so(tmp_path, capsys):
    from vramtop.cli import main
    from vramtop.errors import EXIT_FAILURE

    path = tmp_path / "notes.md"
    path.write_text("# Notes\n\nnot JSON at all\n{also not\n")
    with pytest.raises(SchemaError, match=r"notes.md is not a vramtop recording: none of its 3 lines is a JSON record"):
        read_recording(path)
    for command in ("report", "replay"):
        assert main([command, str(path)]) == EXIT_FAILURE
        err = capsys.readouterr().err
        assert "is not a vramtop recording" in err and "Traceback" not in err
    # A recording whose lines are all damaged but one is still a (damaged) recording.
    good = encode(header_record(small_sample(0), interval=1.0, command=None))
    path.write_bytes(b"garbage\n" + good + b"more garbage\n")
    assert read_recording(path).damaged_lines == 2


def test_unknown_fields_and_record_types_are_ignored(tmp_path):
    sample = small_sample(1)
    header = {**header_record(sample, interval=1.0, command=None), "gpu_topology": {"nvlink": 18}}
    inner = to_dict(sample)
    inner["future"] = [1, 2]
    inner["gpus"][0]["clock_mhz"] = 1980
    path = tmp_path / "future.jsonl"
    path.write_bytes(
        encode(header)
        + encode({"type": "sample", "sample": inner, "seq": 1})
        + encode({"type": "annotation", "text": "from a newer minor version"})
        + encode({**event_record("oom", {"device": 0}, pid=3, time=2.0), "stack": "..."})
        + encode({**end_record(1, "done", time=3.0), "checksum": "abc"})
    )
    rec = read_recording(path)
    assert rec.samples == (sample,) and rec.problems == () and rec.ignored == 1
    assert rec.events[0].kind == "oom" and rec.events[0].data == {"device": 0}


def test_a_missing_end_record_means_the_writer_died(tmp_path):
    samples = [small_sample(i) for i in range(2)]
    path = tmp_path / "died.jsonl"
    path.write_bytes(b"".join(encode(r) for r in [
        header_record(samples[0], interval=1.0, command=None), *map(sample_record, samples)]))
    rec = read_recording(path)
    assert rec.samples == tuple(samples) and rec.end is None and rec.writer_died
    assert [str(p) for p in rec.problems] == [
        "no end record: the writer died (killed, crashed or out of disk) or is still writing; "
        "2 samples are readable"]


def test_an_empty_file_is_damage_not_an_exception(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    rec = read_recording(path)
    assert rec.header is None and rec.samples == ()
    assert any("empty recording" in str(p) for p in rec.problems)


# -- the writer under a full disk and other write errors ----------------------------------------


class FullDisk:
    """An ``os.write`` for a disk with ``room`` bytes left: short writes, then ENOSPC."""

    def __init__(self, room: int, code: int = errno.ENOSPC) -> None:
        self.room = room
        self.code = code

    def __call__(self, fd: int, data: bytes) -> int:
        if self.room <= 0:
            raise OSError(self.code, os.strerror(self.code))
        n = os.write(fd, data[: self.room])
        self.room -= n
        return n


def test_disk_full_is_a_clear_error_and_loses_nothing_already_written(tmp_path):
    samples = [small_sample(i) for i in range(3)]
    lines = [encode(header_record(samples[0], interval=1.0, command=None)),
             *(encode(sample_record(s)) for s in samples)]
    room = len(lines[0]) + len(lines[1]) + len(lines[2]) + len(lines[3]) // 2
    path = tmp_path / "full.jsonl"
    recorder = Recorder(path, header_record(samples[0], interval=1.0, command=None),
                        write=FullDisk(room))
    recorder.write_sample(samples[0])
    recorder.write_sample(samples[1])
    with pytest.raises(RecorderError) as caught:
        recorder.write_sample(samples[2])  # half of it fits: the half is taken back
    assert caught.value.message == f"disk full while writing {path}: 2 samples saved"
    with pytest.raises(RecorderError, match="disk full"):
        recorder.write_event("late")
    assert recorder.close("stopped") == str(path)  # no end record: it cannot be written
    assert path.read_bytes() == b"".join(lines[:3])
    rec = read_recording(path)
    assert rec.samples == tuple(samples[:2]) and rec.damaged_lines == 0 and rec.writer_died


@pytest.mark.parametrize(("code", "words"), [(errno.EIO, "I/O error"),
                                             (errno.EDQUOT, "disk quota exceeded")])
def test_other_write_errors_are_named(tmp_path, code, words):
    sample = small_sample(0)
    header = header_record(sample, interval=1.0, command=None)
    recorder = Recorder(tmp_path / "r.jsonl", header, write=FullDisk(len(encode(header)), code))
    with pytest.raises(RecorderError, match=f"^{words} while writing .*: 0 samples saved$"):
        recorder.write_sample(sample)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_dev_full_gives_the_disk_full_error():
    with pytest.raises(RecorderError, match=r"^disk full while writing /dev/full: 0 samples saved"):
        Recorder("/dev/full", header_record(small_sample(0), interval=1.0, command=None),
                 overwrite=True)


def test_create_errors_are_clear(tmp_path):
    header = header_record(small_sample(0), interval=1.0, command=None)
    with pytest.raises(RecorderError, match=r"^cannot create .*/no/such/dir/r\.jsonl: No such"):
        Recorder(tmp_path / "no" / "such" / "dir" / "r.jsonl", header)
    (tmp_path / "r.jsonl").write_text("precious")
    with pytest.raises(RecorderError, match="already exists"):
        Recorder(tmp_path / "r.jsonl", header)
    assert (tmp_path / "r.jsonl").read_text() == "precious"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_permission_denied_is_clear(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(RecorderError, match=r"cannot create .*: Permission denied"):
        Recorder(locked / "r.jsonl", header_record(small_sample(0), interval=1.0, command=None))


# -- reading while the writer writes --------------------------------------------------------


def test_a_reader_can_tail_a_recording_being_written_and_never_sees_half_a_line(tmp_path):
    samples = [small_sample(i) for i in range(4)]
    path = tmp_path / "live.jsonl"
    recorder = Recorder(path, header_record(samples[0], interval=1.0, command=None))
    recorder.write_sample(samples[0])
    reader = RecordingReader(path)
    assert reader.poll() == 1
    # What a reader could see if it looked in the middle of a write.
    line = encode(sample_record(samples[1]))
    with open(path, "ab") as f:
        f.write(line[:10])
    assert reader.poll() == 0
    assert any("cut off" in str(p) for p in reader.result().problems)
    with open(path, "ab") as f:
        f.write(line[10:])
    assert reader.poll() == 1
    recorder.write_sample(samples[2])
    recorder.write_sample(samples[3])
    recorder.close("done", compress=".xz")  # removes the plain file: the open reader reads on
    assert reader.poll() == 2
    rec = reader.result()
    assert rec.samples == tuple(samples) and rec.problems == () and rec.end is not None
    reader.close()


# -- ReplaySource -----------------------------------------------------------------------------


def test_replay_source_reads_in_order_then_says_end(tmp_path):
    samples = nvml_samples(4)
    source = ReplaySource(record(tmp_path / "r.jsonl", samples, events=1))
    source.open()
    assert len(source) == 4 and source.position == 0 and source.problems == ()
    assert [source.read() for _ in range(4)] == samples
    assert source.at_end
    with pytest.raises(EndOfRecording, match="end of recording"):
        source.read()
    assert source.events[0].kind == "step" and source.end is not None
    assert source.header is not None and source.header.interval == 0.25
    source.close()


def test_replay_source_random_access(tmp_path):
    samples = [small_sample(i) for i in range(8)]  # a quarter of a second apart
    source = ReplaySource(record(tmp_path / "r.jsonl", samples))
    source.seek(5)
    assert source.read() == samples[5] and source.position == 6
    source.seek(-1)
    assert source.read() == samples[7]
    source.seek(100)
    assert source.at_end
    assert source.seek_time(samples[2].time + 0.1) == 2 and source.read() == samples[2]
    assert source.seek_time(0) == 0
    assert source[3] == samples[3] and source[-1] == samples[-1]


def test_replay_source_behind_a_deadline_reader_holds_the_last_frame(tmp_path):
    samples = [small_sample(i) for i in range(2)]
    reader = DeadlineReader(ReplaySource(record(tmp_path / "r.jsonl", samples)), deadline=5)
    assert reader.read() == samples[0]
    assert reader.read() == samples[1]
    last = reader.read()
    assert last.stale and last.error == "end of recording (2 samples)"
    assert replace(last, error=None, stale_since=None) == samples[1]


def test_replay_source_reports_damage_and_refreshes_a_live_recording(tmp_path):
    samples = [small_sample(i) for i in range(3)]
    path = tmp_path / "live.jsonl"
    recorder = Recorder(path, header_record(samples[0], interval=1.0, command=None))
    recorder.write_sample(samples[0])
    source = ReplaySource(path)
    source.open()
    assert len(source) == 1 and any("writer died" in str(p) for p in source.problems)
    recorder.write_sample(samples[1])
    recorder.write_sample(samples[2])
    recorder.close("done")
    assert source.refresh() == 2
    assert [source.read() for _ in range(3)] == samples and source.problems == ()
    assert source.refresh() == 0


# -- damaged numbers ------------------------------------------------------------------------------

DAMAGES = [
    ('"time":', '"time":1e999,"was":'),  # every record's time at infinity
    ('"started":', '"started":NaN,"was":'),
    ('"interval":', '"interval":' + "9" * 401 + ',"was":'),
    ('"memory_used":', '"memory_used":' + "9" * 401 + ',"was":'),
    ('"requested":', '"requested":' + "9" * 401 + ',"was":'),
    ('"device":0', '"device":"cuda:0"'),
    ('"allocated_peak":', '"allocated_peak":-1e999,"was":'),
]


@pytest.mark.parametrize("old,new", DAMAGES, ids=[d[1][:24] for d in DAMAGES])
def test_damaged_numbers_are_damage_never_a_traceback(tmp_path, old, new, capsys):
    """Values a fuzzer put in recordings that ended in tracebacks (report and replay): reading
    marks them damaged with the line named; the report and the replay's analysis still work."""
    import gzip

    from vramtop.cli import main
    from vramtop.ui.replay import ReplayApp

    source = Path(__file__).resolve().parent.parent / "vramtop" / "demo" / "gpt2-h100.jsonl.gz"
    text = gzip.decompress(source.read_bytes()).decode()
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text(text.replace(old, new))
    assert text.replace(old, new) != text, "the damage did not apply"
    for args in ([], ["--json"]):
        code = main(["report", str(damaged), *args])
        captured = capsys.readouterr()
        assert code in (0, 1) and "Traceback" not in captured.err, captured.err
    recording = read_recording(damaged)
    ReplayApp(ReplaySource(recording), title="t", interval=1.0)  # warnings computed here
