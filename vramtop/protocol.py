"""Names and versions of everything vramtop writes for other programs to read.

The one-shot JSON document, the agent socket and recordings all carry samples in the same
shape (``codec.to_dict`` of :class:`vramtop.model.Sample`), so a reader of one reads all.
Versioning: a reader accepts any minor change (new fields are ignored) and refuses a newer
major ``version`` with a clear message.
"""

from __future__ import annotations

from typing import Any

from vramtop import __version__
from vramtop.codec import from_dict, to_dict
from vramtop.model import Sample

SAMPLE_SCHEMA = "vramtop.sample"
SAMPLE_VERSION = 1


class SchemaError(ValueError):
    """A document that is not a vramtop sample, or is from a newer, incompatible vramtop."""


def sample_document(sample: Sample) -> dict[str, Any]:
    """The ``vramtop --once --json`` document: the sample plus its schema name and version."""
    return {"schema": SAMPLE_SCHEMA, "version": SAMPLE_VERSION, "vramtop": __version__, **to_dict(sample)}


def sample_from_document(doc: Any) -> Sample:
    if not isinstance(doc, dict) or doc.get("schema") != SAMPLE_SCHEMA:
        raise SchemaError(f"not a {SAMPLE_SCHEMA} document")
    version = doc.get("version")
    if not isinstance(version, int) or version > SAMPLE_VERSION:
        raise SchemaError(
            f"{SAMPLE_SCHEMA} version {version} is newer than this vramtop understands "
            f"({SAMPLE_VERSION}); upgrade vramtop"
        )
    return from_dict(Sample, doc)
