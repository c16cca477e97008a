"""The driver's ``SessionCore`` for one STT session: the typed core behind a codec (the TTS's
``orpheus_tts.codec_session`` shape).

Frames go through the codec (``whisper_streaming.dialects``) into the core's input methods; job
results, timers and the disconnect go to the core as the driver reports them; everything the
core says comes back out through the codec's ``encode``, its job commands straight to the
driver. Nothing here knows a wire format.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from speech_common.driver import Command
from speech_common.ws import ProtocolError

from .dialects.base import Codec
from .events import Output
from .protocol import CoreLimits, SttCore


class CodecSession:
    def __init__(self, core: SttCore, codec: Codec) -> None:
        self.core = core
        self.codec = codec

    @classmethod
    def baseten(cls, limits: CoreLimits, supported_languages: list[str]) -> CodecSession:
        """A session of Baseten's protocol (the default)."""
        from .dialects.baseten import BasetenCodec

        core = SttCore(limits, supported_languages)
        return cls(core, BasetenCodec(core))

    @property
    def done(self) -> bool:
        return self.core.done

    @property
    def next_deadline(self) -> float | None:
        return self.core.next_deadline

    @property
    def outstanding_jobs(self) -> frozenset[int]:
        return self.core.outstanding_jobs

    def start(self, now: float) -> list[Command]:
        started = self.core.start(now)
        self.core.heard(now)
        return self._out([*started, *self._decode(lambda: self.codec.start(now))], now)

    def on_text(self, text: str, now: float) -> list[Command]:
        return self._frame(lambda: self.codec.text(text, now), now)

    def on_bytes(self, data: bytes, now: float) -> list[Command]:
        return self._frame(lambda: self.codec.binary(data, now), now)

    def on_result(self, job_id: Hashable, result: Any, now: float) -> list[Command]:
        return self._out(self.core.on_result(job_id, result, now), now)

    def on_sent(self, ack: Hashable, now: float) -> list[Command]:
        return self._out(self.core.on_sent(ack, now), now)

    def on_timer(self, now: float) -> list[Command]:
        return self._out(self.core.on_timer(now), now)

    def on_disconnect(self, now: float) -> list[Command]:
        return self._out(self.core.on_disconnect(now), now)

    def _frame(self, decode: Callable[[], list[Output]], now: float) -> list[Command]:
        if self.core.done:
            return []
        self.core.heard(now)  # any frame, even one refused, shows the client is there
        return self._out(self._decode(decode), now)

    def _decode(self, decode: Callable[[], list[Output]]) -> list[Output]:
        try:
            return decode()
        except ProtocolError as exc:  # the frame itself was bad: the session ends with it
            return self.core.fail(exc)

    def _out(self, outputs: list[Output], now: float) -> list[Command]:
        commands: list[Command] = []
        for output in outputs:
            if isinstance(output, Command):
                commands.append(output)
            else:
                commands.extend(self.codec.encode(output, now))
        return commands
