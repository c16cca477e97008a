"""Fish Audio's live TTS WebSocket (``wss://api.fish.audio/v1/tts/live``): MessagePack frames.

client -> server (binary MessagePack maps)
``{"event": "start", "request": {...}}``  Fish's TTS request (``FishRequest``, the same body as
                                          its HTTP API); ``debug`` beside ``request`` turns on
                                          ``log`` events
``{"event": "text", "text": ...}``        text, concatenated verbatim
``{"event": "flush"}``                    speak what is buffered now
``{"event": "stop"}``                     the rest of the audio, then ``finish``

server -> client: ``{"event": "audio", "audio": <bytes>, "time": <ms since the start>}``,
``{"event": "finish", "reason": "stop" | "error"}``, ``{"event": "error", "error": <message>}``,
and with ``debug`` ``{"event": "log", "message": ...}`` for each generation.

The socket outlives ``finish``: LiveKit's plugin keeps a pool of sockets and sends the next
turn's ``start`` on the one that finished (a ``start`` that changes the audio format is refused;
voice and sampling may change). Each turn of a ``wav`` session is a whole file (its own header).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Annotated, Any, Literal

import msgpack
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orpheus_tts.audio_format import wav_header
from orpheus_tts.dialects.base import Codec
from orpheus_tts.events import Audio, Ended, Event, Output, Rejected
from orpheus_tts.protocol import TtsCore
from orpheus_tts.schema import (
    MAX_TOKENS_LIMIT,
    AudioDone,
    AudioStart,
    Cleared,
    FlushDone,
    control_message,
    session_config,
)
from speech_common.driver import Close, Command, Send
from speech_common.ws import CloseCode, ProtocolError, describe_validation_error

MAX_FRAME_BYTES = 65536  # a start or text event; text frames are checked again by the core
# Fish's format -> ours; a Fish wav is PCM with a header per turn (added here).
FORMATS = {"wav": "pcm_s16le", "pcm": "pcm_s16le", "mp3": "mp3", "opus": "opus"}
DEFAULT_FORMAT = "mp3"
DEFAULT_RATE_HZ = 44100  # Fish: "44100 Hz for most formats, 48000 Hz for opus"
DEFAULT_OPUS_RATE_HZ = 48000
OPUS_AUTO_BITRATE = -1000  # Fish's "automatic"
# Fish allows temperature and top_p of 0 (greedy); Orpheus's sampler needs them above 0.
MIN_SAMPLING = 0.01
# Voice ids clients send when their user chose no voice: LiveKit's Fish plugin (1.8.9) defaults
# its voice_id to this Fish library voice. It means "the default voice", here Orpheus's; any
# other id that is not one of this deployment's voices is refused (unknown voice).
DEFAULT_VOICE_IDS = frozenset({"933563129e564b19a115bedd57b7406a"})
# Settings a new start on the same socket must keep: the audio stream's.
STREAM_KEYS = ("response_format", "sample_rate", "volume_db", "normalize_loudness", "bitrate_bps")
UPDATE_KEYS = ("voice", "temperature", "top_p", "repetition_penalty", "max_tokens")


class FishProsody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    speed: float | None = None  # other than 1: refused (Orpheus has no speaking-rate control)
    volume: float | None = None  # dB
    normalize_loudness: bool | None = None  # Fish's default: true


class FishRequest(BaseModel):
    """Fish Audio's TTS request (``TTSRequest`` in its API reference), every documented key.

    Honoured: ``text``, ``format``, ``sample_rate``, ``reference_id`` (one of this deployment's
    voices), ``prosody``, ``temperature``, ``top_p``, ``repetition_penalty``, ``max_new_tokens``
    (per generation), ``chunk_length`` (characters per generation), ``mp3_bitrate``,
    ``opus_bitrate``. Accepted and without effect here, because they tune Fish's own models:
    ``latency``, ``normalize`` (text normalisation), ``min_chunk_length``,
    ``condition_on_previous_chunks``, ``early_stop_threshold``, ``features`` (``quality-guard``).
    Refused: ``references`` (voice cloning), several ``reference_id`` (multi-speaker),
    ``prosody.speed`` other than 1. A key Fish does not document is refused. ``None`` is a key's
    default (Fish's SDK sends its unset keys as nil)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    references: list[Any] | None = None
    reference_id: str | list[str] | None = None
    prosody: FishProsody | None = None
    chunk_length: Annotated[int, Field(ge=16, le=4096)] | None = None
    normalize: bool | None = None
    format: str | None = None  # wav, pcm, mp3, opus (another: unsupported, 1003)
    sample_rate: int | None = None
    mp3_bitrate: Literal[64, 128, 192] | None = None
    opus_bitrate: int | None = None  # bps, -1000 = automatic (Fish's SDK sends kbps)
    latency: Literal["low", "normal", "balanced"] | None = None
    max_new_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    repetition_penalty: float | None = None
    min_chunk_length: int | None = None
    condition_on_previous_chunks: bool | None = None
    early_stop_threshold: float | None = None
    features: list[str] | None = None

    @classmethod
    def parse(cls, data: Any) -> FishRequest:
        if not isinstance(data, dict):
            raise ProtocolError("invalid_message", "the request must be a map")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            message = describe_validation_error(exc, "request")
            raise ProtocolError("invalid_message", message) from None

    @property
    def audio_format(self) -> str:
        return self.format or DEFAULT_FORMAT

    def session_config(self, default_voice: str) -> dict[str, Any]:
        """The request as the fields of the session's config (``schema.session_config``, which
        validates them as a first frame's; a Fish ``wav`` as PCM)."""
        if self.references:
            raise ProtocolError(
                "unsupported",
                "voice cloning (references) is not supported: Orpheus speaks only its stock "
                "voices; pass one as reference_id",
                CloseCode.UNSUPPORTED_DATA,
            )
        prosody = self.prosody or FishProsody()
        if prosody.speed not in (None, 1.0):
            raise ProtocolError(
                "unsupported",
                "prosody.speed other than 1 is not supported: Orpheus has no speaking-rate control",
                CloseCode.UNSUPPORTED_DATA,
            )
        fmt = self.audio_format
        if fmt not in FORMATS:
            raise ProtocolError(
                "unsupported",
                f"format {fmt!r} is not supported; choose one of {sorted(FORMATS)}",
                CloseCode.UNSUPPORTED_DATA,
            )
        opus = fmt == "opus"
        config: dict[str, Any] = {
            "events": True,
            "response_format": FORMATS[fmt],
            "sample_rate": self.sample_rate or (DEFAULT_OPUS_RATE_HZ if opus else DEFAULT_RATE_HZ),
            "voice": self._voice(default_voice),
            "normalize_loudness": prosody.normalize_loudness is not False,
        }
        if prosody.volume:
            config["volume_db"] = float(prosody.volume)
        if fmt == "mp3" and self.mp3_bitrate:
            config["bitrate_bps"] = self.mp3_bitrate * 1000
        if opus and self.opus_bitrate not in (None, OPUS_AUTO_BITRATE):
            kbps = self.opus_bitrate < 1000  # type: ignore[operator]
            config["bitrate_bps"] = self.opus_bitrate * 1000 if kbps else self.opus_bitrate  # type: ignore[operator]
        for theirs in ("temperature", "top_p"):
            if getattr(self, theirs) is not None:
                config[theirs] = max(float(getattr(self, theirs)), MIN_SAMPLING)
        if self.repetition_penalty is not None:
            config["repetition_penalty"] = float(self.repetition_penalty)
        if self.max_new_tokens is not None:
            config["max_tokens"] = self.max_new_tokens
        if self.chunk_length is not None:
            config["max_chunk_chars"] = self.chunk_length
        return config

    def _voice(self, default_voice: str) -> str:
        voice = self.reference_id
        if isinstance(voice, list):
            if len(voice) > 1:
                raise ProtocolError(
                    "unsupported",
                    "several reference_id (multi-speaker) are not supported: one voice per request",
                    CloseCode.UNSUPPORTED_DATA,
                )
            voice = voice[0] if voice else None
        return default_voice if not voice or voice in DEFAULT_VOICE_IDS else voice


def decode(data: bytes) -> dict[str, Any] | None:
    """A Fish event map, or None when the bytes are not one."""
    try:
        message = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:  # noqa: BLE001 (anything msgpack raises: not a Fish frame)
        return None
    return message if isinstance(message, dict) and isinstance(message.get("event"), str) else None


def is_start(data: bytes) -> bool:
    message = decode(data)
    return message is not None and message.get("event") == "start"


STOP_FLUSH_ID = "fish-stop-"  # the id of the flush a stop makes: + its number


class FishCodec(Codec):
    def __init__(self, core: TtsCore) -> None:
        super().__init__(core)
        self.debug = False
        self._fields: dict[str, Any] | None = None  # the first start's config fields
        self._started_at = 0.0  # "time" counts from here: the first start
        self._wav_rate: int | None = None  # a wav session: a header starts each turn
        self._header_due = False
        self._stops = 0

    def start(self, now: float) -> list[Output]:
        # Until the first start, "time" counts from the session's opening (a deployment that
        # speaks only Fish). A codec chosen by the first frame (``FirstFrameCodec``) is never
        # started: before a good start its times count from 0, as they always have.
        self._started_at = now
        return []

    def text(self, text: str, now: float) -> list[Output]:
        raise ProtocolError("invalid_message", "Fish Audio frames are binary MessagePack")

    def binary(self, data: bytes, now: float) -> list[Output]:
        message = decode(data) if len(data) <= MAX_FRAME_BYTES else None
        if message is None:
            raise ProtocolError("invalid_message", "not a MessagePack event", recoverable=True)
        event = message["event"]
        if event == "start":
            return self._start(message, now)
        if self._fields is None:
            raise ProtocolError("invalid_message", "the first event must be start")
        if event == "text":
            text = message.get("text")
            if not isinstance(text, str):
                raise ProtocolError("invalid_message", "text needs a string", recoverable=True)
            return self.core.append(text, now) if text else []
        if event == "flush":
            return self.core.flush(None, now)
        if event == "stop":
            self._stops += 1
            return self.core.flush(f"{STOP_FLUSH_ID}{self._stops}", now)
        raise ProtocolError("invalid_message", f"unknown event {event!r}", recoverable=True)

    def _start(self, message: dict[str, Any], now: float) -> list[Output]:
        request = FishRequest.parse(message.get("request"))
        self.debug = bool(message.get("debug", False))
        fields = request.session_config(self.core.default_voice)
        self._header_due = request.audio_format == "wav"
        if self._fields is None:
            self._started_at = now  # "time" counts from here, however the dialect was chosen
            self._fields = fields
            self._wav_rate = fields["sample_rate"] if self._header_due else None
            config = session_config(fields, self.core.voices, self.core.default_voice)
            outputs = self.core.configure(config, now)
        else:  # the next turn on a pooled socket
            changed = [k for k in STREAM_KEYS if fields.get(k) != self._fields.get(k)]
            if changed or self._header_due != (self._wav_rate is not None):
                raise ProtocolError(
                    "unsupported",
                    f"a new start on this socket cannot change {changed or ['format']}: open "
                    "a new socket",
                    CloseCode.UNSUPPORTED_DATA,
                )
            update = {k: fields[k] for k in UPDATE_KEYS if k in fields}
            if update != {k: self._fields[k] for k in UPDATE_KEYS if k in self._fields}:
                self._fields = fields
                outputs = self._update(update, now)
            else:
                outputs = []
        if request.text:
            outputs += self.core.append(request.text, now)
        return outputs

    def _update(self, update: dict[str, Any], now: float) -> list[Output]:
        """A refused update (an unknown voice) is reported; the start's text is still spoken."""
        try:
            self.core.check_open()  # after the end even a bad update is a frame too many
            message = control_message({"type": "update", **update})
        except ProtocolError as exc:
            return self.core.reject(exc)
        return self.core.update(message, now)

    # -- server messages ---------------------------------------------------------------------------
    def _pack(self, message: dict[str, Any], ack: Hashable | None = None) -> Send:
        return Send(msgpack.packb(message, use_bin_type=True), ack=ack)

    def _ms(self, now: float) -> int:
        return int((now - self._started_at) * 1000)

    def encode(self, event: Event, now: float) -> list[Command]:
        if isinstance(event, Audio):
            data = event.data
            if self._header_due and self._wav_rate is not None:
                data = wav_header(self._wav_rate) + data
                self._header_due = False
            return [self._pack({"event": "audio", "audio": data, "time": self._ms(now)}, event.ack)]
        if isinstance(event, FlushDone):
            if isinstance(event.id, str) and event.id.startswith(STOP_FLUSH_ID):
                return [self._pack({"event": "finish", "reason": "stop", "time": self._ms(now)})]
            return []
        if isinstance(event, (AudioStart, AudioDone, Cleared)):
            if not self.debug:
                return []
            detail = event.model_dump(exclude={"type"})
            return [self._pack({"event": "log", "message": f"{event.type} {detail}"})]
        if isinstance(event, Rejected):
            return [self._error(event.error)]
        if isinstance(event, Ended):
            error = event.error
            if error is None:
                return [Close(CloseCode.NORMAL)]
            finish = {"event": "finish", "reason": "error", "time": self._ms(now)}
            return [self._error(error), self._pack(finish), Close(error.close_code, error.message)]
        return []

    def _error(self, error: ProtocolError) -> Send:
        return self._pack({"event": "error", "error": error.message})
