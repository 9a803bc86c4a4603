"""Answers to a client's requests: read-only, from the latest sample.

The answer object stays the same until the next sample, so the server encodes it once for
every client that asks.
"""

from __future__ import annotations

from typing import Any

from vramtop.codec import to_dict
from vramtop.model import AgentSample


class Answers:
    def __init__(self) -> None:
        self.latest: AgentSample | None = None  # set by the sampler thread
        self._answer: tuple[AgentSample, dict[str, Any]] | None = None

    def respond(self, request: dict[str, Any]) -> dict[str, Any]:
        latest = self.latest
        if request.get("type") == "request" and request.get("what") == "sample" and latest:
            answer = self._answer
            if answer is None or answer[0] is not latest:
                answer = self._answer = (latest, {"type": "sample", "sample": to_dict(latest)})
            return answer[1]
        return {"type": "error", "message": f"unknown request {str(request.get('what'))[:80]!r}"}
