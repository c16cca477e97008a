"""The token engine interface: prompt ids + sampling params → async stream of generated ids."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from orpheus_tts.tokens import END_OF_SPEECH_TOKEN_ID


@dataclass(frozen=True)
class SamplingParams:
    """Orpheus sampling defaults (repetition_penalty >= 1.1 is needed for stable speech)."""

    temperature: float = 0.6
    top_p: float = 0.8
    repetition_penalty: float = 1.3
    max_tokens: int = 2000
    stop_token_ids: tuple[int, ...] = (END_OF_SPEECH_TOKEN_ID,)
    seed: int | None = None  # per-request seed (tests, reproducible benchmarks)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")


class EngineError(RuntimeError):
    """The engine failed a request (not a cancellation)."""


DONE = object()  # pushed by an engine's thread when a request finished
# Recently aborted request ids an engine remembers (so a late result of one is dropped).
ABORTED_IDS_KEPT = 1024


class ThreadBridge:
    """What an engine's thread produces for one request, handed to the caller's event loop in
    order: ``push`` from any thread (an item, an exception, or ``DONE``); ``items`` on the loop
    (create it there). If the caller's loop is gone, ``push`` calls ``on_gone`` instead."""

    def __init__(self, on_gone: Callable[[], None] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._on_gone = on_gone

    def push(self, item: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the consumer's loop is closed
            if self._on_gone is not None:
                self._on_gone()

    async def items(self, request_id: str) -> AsyncIterator[object]:
        """Until ``DONE``; an exception pushed by the thread fails the request."""
        while True:
            item = await self._queue.get()
            if item is DONE:
                return
            if isinstance(item, BaseException):
                raise EngineError(f"generation {request_id} failed: {item}") from item
            yield item


@runtime_checkable
class TokenEngine(Protocol):
    """A continuous-batching (or threaded) generator of token ids.

    ``generate`` yields generated ids as they come (the stop token included when it is produced);
    closing the iterator or cancelling its consumer aborts the request at once.
    """

    def generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[int]: ...

    async def abort(self, request_id: str) -> None: ...

    async def warmup(self) -> None: ...

    def is_healthy(self) -> bool:
        """Can still serve requests (its threads and, for vLLM, its engine process are alive)."""
        ...

    def shutdown(self) -> None: ...
