"""Recordings: samples and events in a JSON Lines file, to replay, tail, report on or share.

Format (schema ``vramtop.recording``, version 1; docs/recording.md has the long version):

- UTF-8 JSON Lines. Every record is one JSON object on one line, written with a single
  ``os.write`` of the complete line (newline included), appended, never rewritten. A reader
  therefore never sees half a record, except a torn last line after a crash or a full disk.
- Line 1 is the header::

    {"type":"header","schema":"vramtop.recording","version":1,"vramtop":"0.1.0",
     "host":"gpu-box","driver":"580.159.04","cuda_driver":"13.0",
     "gpus":[{"index":0,"uuid":"GPU-...","name":"NVIDIA H100 80GB HBM3",
              "memory_total":85520809984}],
     "interval":1.0,"started":1795000000.0,"command":["python","train.py"]}

  ``command`` is null when nothing was launched; ``gpus`` lists the GPUs at the start.
- Then samples and events, in the order they happened::

    {"type":"sample","sample":{...}}     the sample exactly as codec.to_dict writes it
                                         (the same shape as ``vramtop --once --json``)
    {"type":"event","time":...,"kind":"command.started","pid":4242,"data":{...}}

  Events are generic: ``kind`` names them ("command.started", "command.exited"; later steps,
  warnings, OOM post-mortems), ``pid`` is the process they concern or null, ``data`` is free.
- The last line is the end record: ``{"type":"end","time":...,"samples":N,"reason":"..."}``.
  No end record means the writer died (killed, crashed, lost power) or is still writing.
- Memory is in integer bytes; times are seconds since the epoch.
- Closing with compression packs the file into ``<name>.xz`` (or ``<name>.gz``; temporary file
  + rename) and removes the plain file; while recording, the plain file is readable and can be
  tailed. xz is the default: agent samples repeat long structures with changing numbers, and
  its large window packs them ~30% smaller than gzip's 32 KiB one (bench/RESULTS.md).

Compatibility: readers ignore unknown fields and unknown record types (minor additions keep
``version`` 1) and refuse a newer ``version`` with :class:`~vramtop.protocol.SchemaError`.

The record types and the lines written are in ``records.py``, the writer in ``writer.py``,
the reader in ``reader.py``; this package exports them all.

Reading never raises for damage: :func:`read_recording` returns every record it could read
plus a list of :class:`Problem` (torn last line, corrupt lines with their line numbers, a
missing end record, a cut-off compressed stream).
"""

from vramtop.recording.reader import Problem, Recording, RecordingError, RecordingReader, read_recording
from vramtop.recording.records import (
    END,
    EVENT,
    HEADER,
    SAMPLE,
    End,
    Event,
    Header,
    RecordedGpu,
    encode,
    end_record,
    event_record,
    header_record,
    sample_record,
)
from vramtop.recording.writer import (
    COMPRESSED_SUFFIXES,
    GZIP_SUFFIX,
    XZ_SUFFIX,
    RecordingWriter,
    compress_recording,
    compressed_path,
)

__all__ = [
    "COMPRESSED_SUFFIXES", "END", "EVENT", "GZIP_SUFFIX", "HEADER", "SAMPLE", "XZ_SUFFIX", "End", "Event",
    "Header", "Problem", "RecordedGpu", "Recording", "RecordingError", "RecordingReader", "RecordingWriter",
    "compress_recording", "compressed_path", "encode", "end_record", "event_record", "header_record",
    "read_recording", "sample_record",
]
