"""The HTTP flavour at the edge of the core: one speech request (``orpheus_tts.http_speech``)
is one session, run by the same driver as a WebSocket's.

``HttpCodec`` gives the core the whole request at the start (configure, its text, end) and
keeps of the core's events what an HTTP answer carries: audio, word timestamps (server-sent
events only) and the end. ``HttpExchange`` is the driver's transport for the request: there
are no frames to receive (the body went in at the start), only the client leaving; what the
codec sends becomes the response's parts, in order. ``speech_chunks`` reads them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orpheus_tts.dialects.base import Codec
from orpheus_tts.events import Audio, Ended, Event, Output
from orpheus_tts.http_speech import STATUS, HttpError, Vendor
from orpheus_tts.protocol import TtsCore
from orpheus_tts.schema import WordTimestamps, session_config
from speech_common.driver import Close, Command, Send
from speech_common.ws import CloseCode, ProtocolError

if TYPE_CHECKING:
    from orpheus_tts.session import TTSSession

Part = bytes | WordTimestamps  # what a response streams: audio, and word timestamps for SSE


class HttpCodec(Codec):
    def __init__(self, core: TtsCore, request: Vendor) -> None:
        super().__init__(core)
        self.request = request

    def start(self, now: float) -> list[Output]:
        core = self.core
        config = session_config(self.request.session_config(), core.voices, core.default_voice)
        # A step that ends the session makes the next ones nothing (the core is done).
        return [
            *core.configure(config, now),
            *core.append(self.request.text, now),
            *core.end(now),
        ]

    def encode(self, event: Event, now: float) -> list[Command]:
        if isinstance(event, Audio):
            return [Send(event.data, ack=event.ack)]
        if isinstance(event, WordTimestamps):
            return [Send(event)]
        if isinstance(event, Ended):
            error = event.error
            if error is None:
                return [Close(CloseCode.NORMAL)]
            return [Close(error.close_code, error.message, error)]
        return []  # the event protocol's other messages have no place in an HTTP answer


@dataclass(frozen=True)
class _Finished:
    code: int
    error: ProtocolError | None


class HttpExchange:
    """The driver's ``Transport`` for one HTTP request."""

    def __init__(self) -> None:
        self.parts: asyncio.Queue[Part | _Finished] = asyncio.Queue()
        self._left = asyncio.Event()

    async def receive(self) -> None:
        await self._left.wait()  # no frames: the request is all in; None: the client left
        return None

    async def send(self, message: Part) -> None:
        self.parts.put_nowait(message)

    async def close(self, code: int, reason: str = "", error: ProtocolError | None = None) -> None:
        self.parts.put_nowait(_Finished(code, error))

    def leave(self) -> None:
        """The HTTP client went away: the session sees a disconnect."""
        self._left.set()


_winding_down: set[asyncio.Task] = set()  # sessions of clients that left, still releasing


async def speech_chunks(request: Vendor, session: TTSSession) -> AsyncIterator[Part]:
    """The audio of one request, chunk by chunk as the session sends it (and its
    ``word_timestamps`` events, with ``alignment``); ``HttpError`` if the session ends with an
    error (before any audio, or after: then the stream is cut)."""
    exchange = HttpExchange()
    task = asyncio.create_task(session.run(exchange, lambda core: HttpCodec(core, request)))
    # A session that ended without a close (a bug) must not leave the response waiting.
    task.add_done_callback(lambda _: exchange.parts.put_nowait(_Finished(1011, None)))
    try:
        while True:
            part = await exchange.parts.get()
            if not isinstance(part, _Finished):
                yield part
                continue
            if part.code != CloseCode.NORMAL:
                error = part.error or ProtocolError("internal_error", "failed")
                raise HttpError(STATUS.get(part.code, 500), error.error_type, error.message)
            return
    finally:
        if not task.done():
            exchange.leave()  # the HTTP client left: abort like a WebSocket disconnect
        # The session winds down by itself (its core sees the disconnect, aborts the
        # generation, releases its slot). The response's own cancellation must not cancel it
        # halfway: it is shielded, and kept referenced until it has finished.
        _winding_down.add(task)
        task.add_done_callback(_winding_down.discard)
        await asyncio.shield(task)
