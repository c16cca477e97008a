"""The driver's ``SessionCore`` for one session: a typed protocol core behind a wire codec.

Both trusses have the shape: frames go through the codec (a vendor's wire format) into the
core's input methods; job results, acknowledgements, timers and the disconnect go to the core
as the driver reports them; everything the core says comes back out through the codec's
``encode``, its job commands (``speech_common.driver.Command``) straight to the driver. Nothing
here knows a wire format or a model.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Protocol

from .driver import Command
from .ws import ProtocolError


class Core(Protocol):
    """What a typed protocol core offers the session (``TtsCore``, ``SttCore``)."""

    @property
    def done(self) -> bool: ...
    @property
    def next_deadline(self) -> float | None: ...
    def start(self, now: float) -> list[Any]: ...
    def heard(self, now: float) -> None: ...
    def on_result(self, job_id: Hashable, result: Any, now: float) -> list[Any]: ...
    def on_sent(self, ack: Hashable, now: float) -> list[Any]: ...
    def on_timer(self, now: float) -> list[Any]: ...
    def on_disconnect(self, now: float) -> list[Any]: ...


class Codec(Protocol):
    """A wire format: client frames in as core calls, core events out as frames."""

    def start(self, now: float) -> list[Any]: ...
    def text(self, text: str, now: float) -> list[Any]: ...
    def binary(self, data: bytes, now: float) -> list[Any]: ...
    def encode(self, event: Any, now: float) -> list[Command]: ...


class CodecSession:
    # Whether the session's start counts as hearing from the client (an idle clock from then).
    HEARD_AT_START = False

    def __init__(self, core: Core, codec: Codec) -> None:
        self.core = core
        self.codec = codec

    @property
    def done(self) -> bool:
        return self.core.done

    @property
    def next_deadline(self) -> float | None:
        return self.core.next_deadline

    def start(self, now: float) -> list[Command]:
        started = self.core.start(now)
        if self.HEARD_AT_START:
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

    def bad_frame(self, error: ProtocolError) -> list[Any]:
        """What the core says to a frame the codec refused (a subclass picks the core's rule)."""
        raise NotImplementedError

    def _frame(self, decode: Callable[[], list[Any]], now: float) -> list[Command]:
        if self.core.done:
            return []
        self.core.heard(now)  # any frame, even one refused, shows the client is there
        return self._out(self._decode(decode), now)

    def _decode(self, decode: Callable[[], list[Any]]) -> list[Any]:
        try:
            return decode()
        except ProtocolError as exc:
            return self.bad_frame(exc)

    def _out(self, outputs: list[Any], now: float) -> list[Command]:
        commands: list[Command] = []
        for output in outputs:
            if isinstance(output, Command):
                commands.append(output)
            else:
                commands.extend(self.codec.encode(output, now))
        return commands
