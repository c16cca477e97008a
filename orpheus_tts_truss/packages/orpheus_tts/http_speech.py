"""The HTTP flavour: three vendors' speech requests on one endpoint, each a session of the core.

``truss push --config config_http.yaml`` deploys it (``OrpheusSpeech`` in ``model/model.py``).
The body, JSON or MessagePack (``Content-Type: application/msgpack``, or Truss's binary
``application/octet-stream``), is recognised by its text key:

- ``input``: Together's ``POST /v1/audio/speech`` (``SpeechRequest``): ``model``, ``voice``,
  ``response_format`` (``wav``, ``mp3``, ``raw``, ``mulaw``), ``response_encoding`` (for
  ``raw``), ``sample_rate``, ``stream``, ``alignment``, ``segment``, ``language``. Without
  ``stream`` the audio file; with it, server-sent events (``conversation.item.audio_output.delta``
  per chunk, then ``data: [DONE]``).
- ``prompt``: Baseten's Orpheus truss (``PredictRequest``, what LiveKit's Baseten plugin posts to
  an https endpoint): raw PCM s16le 24 kHz streamed back, labelled ``audio/wav`` as that truss
  labels it.
- ``text``: Fish Audio's ``POST /v1/tts`` (``orpheus_tts.dialects.fish.FishRequest``): the audio
  in its ``format``, streamed (a ``wav`` is sent whole, with its sizes filled in).

Errors are typed 400s (429 overloaded, 500 ours) in the vendor's error shape; a body that cannot
be read is a 400 too, never a 500.

A request runs as one session of the same core (``orpheus_tts.dialects.http``: its codec, and
the driver's transport for an HTTP exchange), so text chunking, the encoders, the engine's
scheduling and every limit are the WebSocket's. A client that goes away mid-stream is a
disconnect: the generation is aborted as for a WebSocket client.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator
from typing import Annotated, Any, ClassVar, Literal

import msgpack
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orpheus_tts.dialects.fish import FishRequest
from orpheus_tts.dialects.together import DEFAULT_MODEL, word_timestamps
from orpheus_tts.prompt import DEFAULT_VOICE
from orpheus_tts.schema import MAX_TOKENS_LIMIT, WordTimestamps, check_language
from speech_common.ws import ProtocolError, describe_validation_error

MAX_INPUT_CHARS = 4096  # one request; longer texts belong on the WebSocket
# HTTP status per error close code: bad input 400, unsupported 400, overloaded 429, ours 500.
STATUS = {1003: 400, 1008: 400, 1009: 413, 1011: 500, 1013: 429}
MSGPACK_TYPES = frozenset({"application/msgpack", "application/x-msgpack",
                           "application/octet-stream"})  # fmt: skip


class HttpError(Exception):
    """An error answer: status and the vendor's error body (``Vendor.error_body``)."""

    def __init__(
        self, status: int, error_type: str, message: str, vendor: type[Vendor] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.vendor = vendor or Vendor  # whose error shape (a body not yet recognised: Together's)

    @property
    def body(self) -> dict[str, Any]:
        return self.vendor.error_body(self)


# -- the three bodies ------------------------------------------------------------------------------
class Vendor:
    """What a body kind says about its answer: ``text`` to speak, ``session_config()``, and
    ``sse`` (server-sent events: Together's ``stream``), ``whole_wav`` (sent at the end with its
    sizes filled in) or else the audio streamed as it comes, as ``media_type``."""

    sse = False
    whole_wav = False

    def check(self) -> None:
        """Raise ``HttpError`` for what the schema cannot say."""

    def session_config(self) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def error_body(error: HttpError) -> dict[str, Any]:
        return {"error": {"message": error.message, "type": error.error_type,
                          "code": error.error_type}}  # fmt: skip


class SpeechRequest(BaseModel, Vendor):
    """Together's speech request."""

    model_config = ConfigDict(extra="forbid")
    CONTENT_TYPES: ClassVar[dict[str, str]] = {
        "wav": "audio/wav", "mp3": "audio/mpeg", "raw": "application/octet-stream",
        "mulaw": "audio/basic",
    }  # fmt: skip

    model: str = DEFAULT_MODEL
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS)
    voice: str = DEFAULT_VOICE
    response_format: Literal["wav", "mp3", "raw", "mulaw"] = "wav"
    response_encoding: Literal["pcm_s16le", "pcm_f32le"] = "pcm_s16le"
    sample_rate: int | None = None
    stream: bool = False
    alignment: Literal["none", "word"] = "none"
    segment: Literal["sentence", "immediate", "never"] = "sentence"
    language: str | None = None

    @property
    def text(self) -> str:
        return self.input

    @property
    def media_type(self) -> str:
        return self.CONTENT_TYPES[self.response_format]

    @property
    def whole_wav(self) -> bool:
        return self.response_format == "wav"

    @property
    def sse(self) -> bool:
        return self.stream

    def check(self) -> None:
        if "orpheus" not in self.model.lower():
            raise HttpError(
                400, "invalid_request_error", f"model {self.model!r} is not served here"
            )
        if self.alignment != "none" and not self.stream:
            raise HttpError(
                400, "unsupported", "alignment=word needs stream: true (timestamps are events)"
            )

    def session_config(self) -> dict[str, Any]:
        fmt = self.response_encoding if self.response_format == "raw" else self.response_format
        config: dict[str, Any] = {"events": True, "voice": self.voice, "response_format": fmt,
                                  "segment": self.segment}  # fmt: skip
        if self.sample_rate is not None:
            config["sample_rate"] = self.sample_rate
        if self.alignment == "word":
            config["word_timestamps"] = True
        return config


_Sampling = Annotated[float, Field(allow_inf_nan=False)] | None


class PredictRequest(BaseModel, Vendor):
    """Baseten's Orpheus truss body (truss-examples ``orpheus-best-performance``): ``prompt``,
    ``voice``, ``max_tokens``, ``temperature``, ``top_p``, ``repetition_penalty``,
    ``max_chunk_size`` (characters per generation), ``request_id`` (a log id there; unused
    here), ``language`` (English only)."""

    model_config = ConfigDict(extra="forbid")
    media_type: ClassVar[str] = "audio/wav"  # raw PCM, labelled as Baseten's truss labels it

    prompt: str = Field(min_length=1, max_length=MAX_INPUT_CHARS)
    voice: str = DEFAULT_VOICE
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    temperature: _Sampling = None
    top_p: _Sampling = None
    repetition_penalty: _Sampling = None
    max_chunk_size: Annotated[int, Field(ge=16, le=MAX_INPUT_CHARS)] | None = None
    request_id: str | None = None
    language: str | None = None

    @property
    def text(self) -> str:
        return self.prompt

    def session_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"events": True, "voice": self.voice}
        for key in ("max_tokens", "temperature", "top_p", "repetition_penalty"):
            value = getattr(self, key)
            if value is not None:
                config[key] = float(value) if key != "max_tokens" else value
        if self.max_chunk_size is not None:
            config["max_chunk_chars"] = self.max_chunk_size
        return config


class FishHttpRequest(Vendor):
    """Fish Audio's ``POST /v1/tts``: the request of its live socket, answered with the audio."""

    CONTENT_TYPES: ClassVar[dict[str, str]] = {
        "wav": "audio/wav", "mp3": "audio/mpeg", "pcm": "application/octet-stream",
        "opus": "audio/ogg",
    }  # fmt: skip

    def __init__(self, request: FishRequest) -> None:
        self.request = request
        self.text = request.text or ""
        self.language = None
        self.media_type = self.CONTENT_TYPES.get(request.audio_format, "")  # else refused
        self.whole_wav = request.audio_format == "wav"

    def check(self) -> None:
        if not self.text.strip():
            raise HttpError(400, "invalid_message", "text: the text to speak is empty")
        if len(self.text) > MAX_INPUT_CHARS:
            raise HttpError(
                400, "invalid_message", f"text: at most {MAX_INPUT_CHARS} characters per request"
            )

    def session_config(self) -> dict[str, Any]:
        config = self.request.session_config(DEFAULT_VOICE)
        if self.whole_wav:  # a file with its header (the live socket writes one per turn)
            config["response_format"] = "wav"
        return config

    @staticmethod
    def error_body(error: HttpError) -> dict[str, Any]:
        return {"status": error.status, "message": error.message, "reason": error.error_type}


def parse_request(body: Any, content_type: str = "application/json") -> Vendor:
    """The request a body holds (raw bytes with their content type, or a parsed mapping)."""
    data = _decode(body, content_type) if isinstance(body, (bytes, str)) else body
    if not isinstance(data, dict):
        raise HttpError(400, "invalid_request_error", "the body must be an object")
    vendor: type[Vendor] = Vendor
    try:
        if "input" in data:
            request: Vendor = SpeechRequest.model_validate(data)
        elif "prompt" in data:
            request = PredictRequest.model_validate(data)
        elif "text" in data:
            vendor = FishHttpRequest
            request = FishHttpRequest(FishRequest.model_validate(data))
        else:
            raise HttpError(
                400, "invalid_request_error",
                "the body needs the text to speak: input (Together), prompt (Baseten's Orpheus) "
                "or text (Fish Audio)",
            )  # fmt: skip
        check_language(getattr(request, "language", None))
        request.check()
        request.session_config()  # what it refuses (Fish's references, ...) is a 400 now
    except ValidationError as exc:
        message = describe_validation_error(exc, "body")
        raise HttpError(400, "invalid_request_error", message, vendor) from None
    except ProtocolError as exc:
        raise HttpError(400, exc.error_type, exc.message, vendor) from None
    except HttpError as exc:
        exc.vendor = vendor
        raise
    return request


def _decode(body: bytes | str, content_type: str) -> Any:
    media_type = content_type.partition(";")[0].strip().lower()
    try:
        if media_type in MSGPACK_TYPES:
            return msgpack.unpackb(body, raw=False, strict_map_key=False)
        return json.loads(body or "{}")
    except Exception as exc:  # noqa: BLE001 (anything a decoder raises: a bad body)
        kind = "MessagePack" if media_type in MSGPACK_TYPES else "JSON"
        raise HttpError(400, "invalid_request_error", f"the body is not {kind}: {exc}") from None


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


async def sse_events(chunks: AsyncIterator[bytes | WordTimestamps]) -> AsyncIterator[str]:
    """Together's server-sent events: one audio delta per chunk (and word timestamps), then
    ``[DONE]``; an error after the stream began is an ``error`` event (the status line went out
    already)."""
    try:
        async for chunk in chunks:
            if isinstance(chunk, WordTimestamps):
                yield f"data: {json.dumps(word_timestamps(chunk, 'tts_1'))}\n\n"
                continue
            delta = {"type": "conversation.item.audio_output.delta", "item_id": "tts_1",
                     "delta": base64.b64encode(chunk).decode()}  # fmt: skip
            yield f"data: {json.dumps(delta)}\n\n"
    except HttpError as exc:
        yield f"data: {json.dumps({'type': 'error', **exc.body})}\n\n"
    yield "data: [DONE]\n\n"


__all__ = ["FishHttpRequest", "HttpError", "PredictRequest", "SpeechRequest", "Vendor",
           "finish_wav", "parse_request", "sse_events"]  # fmt: skip
