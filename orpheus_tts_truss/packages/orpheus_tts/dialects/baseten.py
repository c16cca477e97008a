"""Baseten's Orpheus protocol (``orpheus_tts.schema``): a JSON config frame, text frames of words,
``__END__``; binary audio back; a typed ``error`` frame before an error's close.

With ``events: true`` in the config the socket lives for a whole conversation: a text frame whose
first non-blank character is ``{`` is a control message (``flush``, ``clear``, ``update``,
``text``, ``end``), any other is text, appended verbatim; the core's events go out as JSON. A
published first frame (no ``events``) gets exactly the published protocol: audio only.
"""

from __future__ import annotations

from orpheus_tts.dialects.base import Codec
from orpheus_tts.events import Audio, Ended, Event, Output, Rejected
from orpheus_tts.schema import (
    ClearMessage,
    ControlMessage,
    EndMessage,
    FlushMessage,
    TextMessage,
    is_control_frame,
    parse_control,
    parse_session_config,
)
from speech_common.driver import Close, Command, Send
from speech_common.ws import CloseCode, ProtocolError


class BasetenCodec(Codec):
    def text(self, text: str, now: float) -> list[Output]:
        core = self.core
        if core.config is None:
            return core.configure(parse_session_config(text, core.voices, core.default_voice), now)
        core.check_open()  # after __END__ even a bad control message is a frame too many
        if core.config.events and is_control_frame(text):
            return self._control(parse_control(text), now)
        return core.append(text, now)

    def binary(self, data: bytes, now: float) -> list[Output]:
        if self.core.config is None:
            raise ProtocolError(
                "invalid_config", "the first frame must be a JSON text frame, not binary"
            )
        raise ProtocolError("unsupported_frame", "expected a text frame, got a binary frame")

    def _control(self, message: ControlMessage, now: float) -> list[Output]:
        core = self.core
        if isinstance(message, TextMessage):
            return core.append(message.text, now)
        if isinstance(message, EndMessage):
            return core.end(now)
        if isinstance(message, FlushMessage):
            return core.flush(message.id, now)
        if isinstance(message, ClearMessage):
            return core.clear(message.id, now)
        return core.update(message, now)

    def encode(self, event: Event, now: float) -> list[Command]:
        if isinstance(event, Audio):
            return [Send(event.data, ack=event.ack)]
        if isinstance(event, Rejected):
            return [Send(event.error.frame())]
        if isinstance(event, Ended):
            error = event.error
            if error is None:
                return [Close(CloseCode.NORMAL)]
            return [Close(error.close_code, error.message, error)]  # the error frame, then close
        config = self.core.config
        return [Send(event.model_dump())] if config is not None and config.events else []
