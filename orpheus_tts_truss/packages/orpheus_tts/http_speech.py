"""The HTTP flavour: Together's speech request (``POST /v1/audio/speech``) on the same session.

``truss push --config config_http.yaml`` deploys it (``OrpheusSpeech`` in ``model/model.py``).
Body: ``model``, ``input``, ``voice``, ``response_format`` (``wav``, ``mp3``, ``raw``, ``mulaw``),
``response_encoding`` (for ``raw``: ``pcm_s16le`` or ``pcm_f32le``), ``sample_rate``, ``stream``,
``alignment``, ``segment``, ``language``. Without ``stream`` the answer is the audio file; with
it, server-sent events: ``conversation.item.audio_output.delta`` (base64 audio) per chunk, then
``data: [DONE]``.

A request runs as one event-protocol session of ``TtsCore`` on an in-memory socket
(``MemorySocket``), so text chunking, the encoders, the engine's scheduling and every limit are
the WebSocket's. A client that goes away mid-stream disconnects that socket: the generation is
aborted as for a WebSocket client.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orpheus_tts.dialects.together import DEFAULT_MODEL
from speech_common.ws import ProtocolError, describe_validation_error

MAX_INPUT_CHARS = 4096  # one request; longer texts belong on the WebSocket
CONTENT_TYPES = {"wav": "audio/wav", "mp3": "audio/mpeg", "raw": "application/octet-stream",
                 "mulaw": "audio/basic"}  # fmt: skip
# HTTP status per error close code: bad input 400, unsupported 400, overloaded 429, ours 500.
STATUS = {1003: 400, 1008: 400, 1009: 413, 1011: 500, 1013: 429}


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = DEFAULT_MODEL
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS)
    voice: str = "tara"
    response_format: Literal["wav", "mp3", "raw", "mulaw"] = "wav"
    response_encoding: Literal["pcm_s16le", "pcm_f32le"] = "pcm_s16le"
    sample_rate: int | None = None
    stream: bool = False
    alignment: Literal["none", "word"] = "none"
    segment: Literal["sentence", "immediate", "never"] = "sentence"
    language: str | None = None

    def session_config(self) -> dict[str, Any]:
        fmt = self.response_encoding if self.response_format == "raw" else self.response_format
        config: dict[str, Any] = {"events": True, "voice": self.voice, "response_format": fmt,
                                  "segment": self.segment}  # fmt: skip
        if self.sample_rate is not None:
            config["sample_rate"] = self.sample_rate
        if self.alignment == "word":
            config["word_timestamps"] = True
        return config


class HttpError(Exception):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": error_type, "code": error_type}}


def parse_request(body: Any) -> SpeechRequest:
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body or "{}")
        except ValueError as exc:
            raise HttpError(400, "invalid_request_error", f"not JSON: {exc}") from None
    try:
        request = SpeechRequest.model_validate(body)
    except ValidationError as exc:
        message = describe_validation_error(exc, "body")
        raise HttpError(400, "invalid_request_error", message) from None
    if "orpheus" not in request.model.lower():
        message = f"model {request.model!r} is not served here"
        raise HttpError(400, "invalid_request_error", message)
    if request.alignment != "none" and not request.stream:
        raise HttpError(
            400, "unsupported", "alignment=word needs stream: true (timestamps are events)"
        )
    if request.language not in (None, "en"):
        raise HttpError(400, "unsupported", "Orpheus 3B (this model) speaks English only")
    return request


class MemorySocket:
    """The part of Starlette's WebSocket that ``run_session`` uses, in memory: the request's
    frames are queued in advance; what the session sends lands in ``out``."""

    def __init__(self, frames: list[str]) -> None:
        self.inbox: asyncio.Queue[dict] = asyncio.Queue()
        for frame in frames:
            self.inbox.put_nowait({"type": "websocket.receive", "text": frame})
        self.out: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.query_params: dict[str, str] = {}

    async def receive(self) -> dict:
        return await self.inbox.get()

    def disconnect(self) -> None:
        self.inbox.put_nowait({"type": "websocket.disconnect", "code": 1001})

    async def send_bytes(self, data: bytes) -> None:
        self.out.put_nowait(("audio", data))

    async def send_json(self, message: dict) -> None:
        self.out.put_nowait(("event", message))

    async def send_text(self, text: str) -> None:
        self.out.put_nowait(("event", json.loads(text)))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.out.put_nowait(("close", (code, reason)))


Runner = Callable[[MemorySocket], Awaitable[None]]  # runs one session on a socket
_winding_down: set[asyncio.Task] = set()  # sessions of clients that left, still releasing


async def speech_chunks(request: SpeechRequest, run: Runner) -> AsyncIterator[bytes | dict]:
    """The audio of one request, chunk by chunk as the session sends it (and its
    ``word_timestamps`` events, with ``alignment``); ``HttpError`` if the session ends with an
    error (before any audio, or after: then the stream is cut)."""
    frames = [json.dumps(request.session_config()),
              json.dumps({"type": "text", "text": request.input}), json.dumps({"type": "end"})]  # fmt: skip
    socket = MemorySocket(frames)
    task = asyncio.create_task(run(socket))
    error: dict | None = None
    try:
        while True:
            kind, item = await socket.out.get()
            if kind == "audio":
                yield item
            elif kind == "event" and item.get("type") == "error":
                error = item["body"]
            elif kind == "event" and item.get("type") == "word_timestamps":
                yield item
            elif kind == "close":
                code, _ = item
                if code != 1000:
                    body = error or {"error_type": "internal_error", "message": "failed"}
                    raise HttpError(STATUS.get(code, 500), body["error_type"], body["message"])
                return
    finally:
        if not task.done():
            socket.disconnect()  # the HTTP client left: abort like a WebSocket disconnect
        # The session winds down by itself (its core sees the disconnect, aborts the
        # generation, releases its slot). The response's own cancellation must not cancel it
        # halfway: it is shielded, and kept referenced until it has finished.
        _winding_down.add(task)
        task.add_done_callback(_winding_down.discard)
        await asyncio.shield(task)


def finish_wav(data: bytes) -> bytes:
    """A streaming WAV's sizes (unknown while streaming) filled in for a whole file."""
    if len(data) < 44 or data[:4] != b"RIFF":
        return data
    return (
        data[:4]
        + struct.pack("<I", len(data) - 8)
        + data[8:40]
        + struct.pack("<I", len(data) - 44)
        + data[44:]
    )


async def sse_events(chunks: AsyncIterator[bytes | dict]) -> AsyncIterator[str]:
    """Together's server-sent events: one audio delta per chunk (and word timestamps), then
    ``[DONE]``; an error after the stream began is an ``error`` event (the status line went out
    already)."""
    from orpheus_tts.dialects.together import word_timestamps

    try:
        async for chunk in chunks:
            if isinstance(chunk, dict):
                yield f"data: {json.dumps(word_timestamps(chunk))}\n\n"
                continue
            delta = {"type": "conversation.item.audio_output.delta", "item_id": "tts_1",
                     "delta": base64.b64encode(chunk).decode()}  # fmt: skip
            yield f"data: {json.dumps(delta)}\n\n"
    except HttpError as exc:
        yield f"data: {json.dumps({'type': 'error', **exc.body})}\n\n"
    yield "data: [DONE]\n\n"


__all__ = ["CONTENT_TYPES", "HttpError", "ProtocolError", "SpeechRequest", "finish_wav",
           "parse_request", "speech_chunks", "sse_events"]  # fmt: skip
