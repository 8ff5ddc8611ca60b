"""The runner interface: what the paid-inference daemon asks a model to do.

A runner turns one admitted request into one answer. The contract with the daemon:

- ``infer`` returns a :class:`RunnerResponse` on success: the call is served and may be charged.
- ``infer`` raises a :class:`~marketplace.runners.errors.RunnerError` on failure: the daemon gives
  the price back and answers ``{"error": error.code, "detail": error.detail}`` with the status its
  table gives the error (marketplace.daemon.errors). ``detail`` is safe to show the consumer;
  ``str(error)`` is for logs.
- A streamed answer (``RunnerResponse.stream``) can still fail after its first bytes: iterating it
  raises a ``RunnerError`` then. The status line is already sent, so the daemon can only cut the
  response short (and give the price back); it must call :meth:`RunnerResponse.aclose` when it
  stops iterating early (client gone), which releases the upstream connection.

Runners are async and used from one event loop; ``aclose`` releases what they hold.

``Runner.artifact`` names what answers, for receipts: the artifact an ONNX runner was loaded from;
for a runner proxying to the provider's own server (which the daemon cannot inspect), the artifact
registered on chain when the daemon configured it. A later ``update-model`` does not change it.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from marketplace.types import ModelArtifact

__all__ = ["Runner", "RunnerRequest", "RunnerResponse"]


@dataclass(frozen=True, slots=True)
class RunnerRequest:
    """One call to a model, as admitted by the daemon.

    ``headers`` are the consumer's headers that may reach the model (names in any case); runners
    drop hop-by-hop, payment and credential headers again whatever the daemon passes.
    """

    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class RunnerResponse:
    """A model's answer: either a whole ``body`` or a ``stream`` of chunks, never both.

    ``headers`` are (lowercase name, value) pairs to send to the consumer, in order, repeated names
    kept; they never include Content-Length, hop-by-hop, payment or cookie headers.
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None

    @property
    def content_type(self) -> str | None:
        for name, value in self.headers:
            if name == "content-type":
                return value
        return None

    @property
    def is_stream(self) -> bool:
        return self.stream is not None

    async def aclose(self) -> None:
        """Stop a stream early and release what it holds; harmless on a whole body or twice."""
        stream = self.stream
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


class Runner(abc.ABC):
    """Runs one model. Construct it once, call ``infer`` concurrently, ``aclose`` at shutdown."""

    artifact: ModelArtifact | None = None  # what answers (see the module's docstring); None: not known

    @abc.abstractmethod
    async def infer(self, request: RunnerRequest) -> RunnerResponse:
        """Answer one call, or raise a RunnerError (the consumer is then not charged)."""

    async def aclose(self) -> None:  # a runner holding nothing has nothing to close
        """Release connections, threads and sessions; ``infer`` must not be called afterwards."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
