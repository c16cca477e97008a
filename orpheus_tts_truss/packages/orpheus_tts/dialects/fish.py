"""Fish Audio's live TTS WebSocket (``wss://api.fish.audio/v1/tts/live``): MessagePack frames.

client -> server (binary MessagePack maps)
``{"event": "start", "request": {...}}``  first frame: ``format`` (wav, pcm, mp3, opus),
                                          ``sample_rate``, ``reference_id`` (a voice name here),
                                          ``prosody`` {``speed``, ``volume`` (dB)},
                                          ``temperature``, ``top_p``, ``repetition_penalty``,
                                          ``max_new_tokens``, ``chunk_length``; ``debug`` beside
                                          ``request`` turns on ``log`` events
``{"event": "text", "text": ...}``        text, concatenated verbatim
``{"event": "flush"}``                    speak what is buffered now
``{"event": "stop"}``                     finish: the rest of the audio, then ``finish``

server -> client: ``{"event": "audio", "audio": <bytes>, "time": <ms since start>}``,
``{"event": "finish", "reason": "stop" | "error"}``, ``{"event": "error", "error": <message>}``,
and with ``debug`` ``{"event": "log", "message": ...}`` for each generation.

Voice cloning (``references`` with audio) is not something Orpheus does: it is refused with an
error, never silently replaced by a stock voice. ``prosody.speed`` other than 1 likewise (no
speaking-rate control); ``prosody.volume`` is a gain in dB.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from typing import Any

import msgpack

from orpheus_tts.dialects.base import DialectCore
from orpheus_tts.protocol import TtsCore
from speech_common.driver import Command, Send
from speech_common.ws import CloseCode, ProtocolError

FORMATS = {"wav": "wav", "pcm": "pcm_s16le", "mp3": "mp3", "opus": "opus"}
# Request keys of Fish's TTS API that are accepted; those not listed in the module docstring
# tune Fish's own models and change nothing here (latency mode, text normalisation, bitrates).
REQUEST_KEYS = frozenset({
    "text", "format", "sample_rate", "reference_id", "references", "prosody", "temperature",
    "top_p", "repetition_penalty", "max_new_tokens", "chunk_length", "latency", "normalize",
    "mp3_bitrate", "opus_bitrate", "min_chunk_length", "condition_on_previous_chunks",
    "early_stop_threshold",
})  # fmt: skip
MAX_FRAME_BYTES = 65536  # a start or text event; text frames are checked again by the core


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


class FishCore(DialectCore):
    def __init__(self, core: TtsCore) -> None:
        super().__init__(core)
        self.debug = False
        self._started = False

    def client_text(self, text: str, now: float) -> list[Command]:
        raise ProtocolError("invalid_message", "Fish Audio frames are binary MessagePack")

    def client_bytes(self, data: bytes, now: float) -> list[Command]:
        message = decode(data) if len(data) <= MAX_FRAME_BYTES else None
        if message is None:
            raise ProtocolError("invalid_message", "not a MessagePack event", recoverable=True)
        event = message["event"]
        if not self._started:
            if event != "start":
                raise ProtocolError("invalid_message", "the first event must be start")
            self._started = True
            return self._start(message, now)
        if event == "text":
            text = message.get("text")
            if not isinstance(text, str):
                raise ProtocolError("invalid_message", "text needs a string", recoverable=True)
            return self.control({"type": "text", "text": text}, now) if text else []
        if event == "flush":
            return self.control({"type": "flush"}, now)
        if event == "stop":
            return self.control({"type": "end"}, now)
        raise ProtocolError("invalid_message", f"unknown event {event!r}", recoverable=True)

    def _start(self, message: dict[str, Any], now: float) -> list[Command]:
        request = message.get("request")
        if not isinstance(request, dict):
            raise ProtocolError("invalid_message", "start needs a request map")
        self.debug = bool(message.get("debug", False))
        unknown = sorted(set(request) - REQUEST_KEYS)
        if unknown:
            raise ProtocolError("invalid_message", f"unknown request keys {unknown}")
        if request.get("references"):
            raise ProtocolError(
                "unsupported",
                "voice cloning (references) is not supported: Orpheus speaks only its stock "
                "voices; pass one as reference_id",
                CloseCode.UNSUPPORTED_DATA,
            )
        prosody = request.get("prosody") or {}
        if not isinstance(prosody, dict) or set(prosody) - {"speed", "volume"}:
            raise ProtocolError("invalid_message", "prosody takes speed and volume")
        if float(prosody.get("speed", 1.0)) != 1.0:
            raise ProtocolError(
                "unsupported",
                "prosody.speed other than 1 is not supported: Orpheus has no speaking-rate control",
                CloseCode.UNSUPPORTED_DATA,
            )
        fmt = request.get("format", "wav")
        if fmt not in FORMATS:
            raise ProtocolError(
                "unsupported", f"format {fmt!r} is not supported; choose one of {sorted(FORMATS)}",
                CloseCode.UNSUPPORTED_DATA,
            )  # fmt: skip
        config: dict[str, Any] = {
            "events": True,
            "response_format": FORMATS[fmt],
            "voice": request.get("reference_id") or self.core.default_voice,
        }
        copied = {"sample_rate": "sample_rate", "temperature": "temperature", "top_p": "top_p",
                  "repetition_penalty": "repetition_penalty", "max_new_tokens": "max_tokens",
                  "chunk_length": "max_chunk_chars"}  # fmt: skip
        for theirs, ours in copied.items():
            if request.get(theirs) is not None:
                config[ours] = request[theirs]
        if prosody.get("volume"):
            config["volume_db"] = float(prosody["volume"])
        commands = self.translate(self.core.on_text(json.dumps(config), now), now)
        if request.get("text"):
            commands += self.control({"type": "text", "text": request["text"]}, now)
        return commands

    # -- server messages ---------------------------------------------------------------------------
    def _pack(self, message: dict[str, Any], ack: Hashable | None = None) -> Send:
        return Send(msgpack.packb(message, use_bin_type=True), ack=ack)

    def _ms(self, now: float) -> int:
        return int((now - self._started_at) * 1000)

    def audio(self, data: bytes, ack: Hashable, now: float) -> list[Command]:
        return [self._pack({"event": "audio", "audio": data, "time": self._ms(now)}, ack)]

    def event(self, event: dict[str, Any], now: float) -> list[Command]:
        kind = event["type"]
        if kind == "session_done":
            return [self._pack({"event": "finish", "reason": "stop", "time": self._ms(now)})]
        if self.debug and kind in ("audio_start", "audio_done", "cleared"):
            detail = {k: v for k, v in event.items() if k != "type"}
            return [self._pack({"event": "log", "message": f"{kind} {detail}"})]
        return []

    def error(self, error: ProtocolError, fatal: bool, now: float) -> list[Command]:
        commands: list[Command] = [self._pack({"event": "error", "error": error.message})]
        if fatal:
            commands.append(
                self._pack({"event": "finish", "reason": "error", "time": self._ms(now)})
            )
        return commands
