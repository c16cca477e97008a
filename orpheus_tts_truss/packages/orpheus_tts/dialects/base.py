"""Other vendors' TTS protocols on top of the one session core.

A dialect is a thin translator around ``TtsCore`` in event mode: it turns the vendor's client
messages into the core's control messages (``flush``, ``clear``, ``update``, ``end``, text) and
the core's commands into the vendor's frames. Audio ``Send``s keep their acks, so flow control,
``clear`` (``Discard``) and the generation bounds work exactly as in the Baseten protocol; a
fatal error's close carries the vendor's error frame instead of ours.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from typing import Any

from orpheus_tts.protocol import TtsCore
from speech_common.driver import Close, Command, Send
from speech_common.ws import ProtocolError


class DialectCore:
    """``SessionCore`` of a dialect: subclasses translate frames in and commands out."""

    def __init__(self, core: TtsCore) -> None:
        self.core = core
        self._closed = False
        self._generation = 0  # the generation whose audio is going out (from audio_start)
        self._started_at = 0.0

    # -- the SessionCore interface -------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._closed or self.core.done

    @property
    def next_deadline(self) -> float | None:
        return self.core.next_deadline

    @property
    def outcome(self) -> str:
        return self.core.outcome

    def start(self, now: float) -> list[Command]:
        self._started_at = now
        return self.translate(self.core.start(now), now)

    def on_text(self, text: str, now: float) -> list[Command]:
        return self._guard(lambda: self.client_text(text, now), now)

    def on_bytes(self, data: bytes, now: float) -> list[Command]:
        return self._guard(lambda: self.client_bytes(data, now), now)

    def on_result(self, job_id: int, result: Any, now: float) -> list[Command]:
        return self.translate(self.core.on_result(job_id, result, now), now)

    def on_sent(self, ack: Hashable, now: float) -> list[Command]:
        return self.translate(self.core.on_sent(ack, now), now)

    def on_timer(self, now: float) -> list[Command]:
        return self.translate(self.core.on_timer(now), now)

    def on_disconnect(self, now: float) -> list[Command]:
        return self.translate(self.core.on_disconnect(now), now)

    # -- for subclasses ----------------------------------------------------------------------------
    def client_text(self, text: str, now: float) -> list[Command]:
        raise ProtocolError("unsupported_frame", "text frames are not part of this protocol")

    def client_bytes(self, data: bytes, now: float) -> list[Command]:
        raise ProtocolError("unsupported_frame", "binary frames are not part of this protocol")

    def audio(self, data: bytes, ack: Hashable, now: float) -> list[Command]:
        raise NotImplementedError

    def event(self, event: dict[str, Any], now: float) -> list[Command]:
        """One of the core's events (``orpheus_tts.schema``) in the dialect; [] to drop it."""
        raise NotImplementedError

    def error(self, error: ProtocolError, fatal: bool, now: float) -> list[Command]:
        raise NotImplementedError

    # -- helpers -----------------------------------------------------------------------------------
    def control(self, message: dict[str, Any], now: float) -> list[Command]:
        """Feed the core one of its own control messages (text goes as ``{"type": "text"}``)."""
        return self.translate(self.core.on_text(json.dumps(message), now), now)

    def translate(self, commands: list[Command], now: float) -> list[Command]:
        out: list[Command] = []
        for command in commands:
            if isinstance(command, Send) and isinstance(command.message, bytes):
                out.extend(self.audio(command.message, command.ack, now))
            elif isinstance(command, Send) and isinstance(command.message, dict):
                message = command.message
                if message.get("type") == "audio_start":
                    self._generation = message["generation"]
                if message.get("type") == "error":
                    body = message["body"]
                    error = ProtocolError(
                        body["error_type"], body["message"], recoverable=body["recoverable"]
                    )
                    out.extend(self.error(error, False, now))
                else:
                    out.extend(self.event(message, now))
            elif isinstance(command, Close) and command.error is not None:
                out.extend(self.error(command.error, True, now))
                out.append(Close(command.code, command.reason))
                self._closed = True
            else:
                if isinstance(command, Close):
                    self._closed = True
                out.append(command)
        return out

    def fail(self, error: ProtocolError, now: float) -> list[Command]:
        """End the session with the dialect's error frame (the core cancels what it runs)."""
        commands = self.core.on_disconnect(now)  # releases the core's generations
        self.core.outcome = "protocol_error"
        self._closed = True
        return [*self.translate(commands, now), *self.error(error, True, now),
                Close(error.close_code, error.message)]  # fmt: skip

    def _guard(self, handler: Any, now: float) -> list[Command]:
        if self.done:
            return []
        try:
            return handler()
        except ProtocolError as exc:
            if exc.recoverable:
                return self.error(exc, False, now)
            return self.fail(exc, now)
