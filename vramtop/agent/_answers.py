"""The latest sample as a message, and the answers to a client's requests, read-only.

The message is built once per sample (a dataclass tree turned into dicts: the biggest part of a
sampler tick), and only when something wants it: a connected client, or a request. Its object
stays the same until the next sample, so the server encodes an answer once for every client
that asks.
"""

from __future__ import annotations

from typing import Any

from vramtop.codec import to_dict
from vramtop.model import AgentSample


class Answers:
    def __init__(self) -> None:
        self.latest: AgentSample | None = None  # set by the sampler thread
        self._message: tuple[AgentSample, dict[str, Any]] | None = None

    def message(self, sample: AgentSample) -> dict[str, Any]:
        """``sample`` as the "sample" message, built once however often it is asked for."""
        built = self._message
        if built is None or built[0] is not sample:
            built = self._message = (sample, {"type": "sample", "sample": to_dict(sample)})
        return built[1]

    def respond(self, request: dict[str, Any]) -> dict[str, Any]:
        latest = self.latest
        if request.get("type") == "request" and request.get("what") == "sample" and latest:
            return self.message(latest)
        return {"type": "error", "message": f"unknown request {str(request.get('what'))[:80]!r}"}
