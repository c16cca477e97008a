"""A codec: one vendor's wire format at the edge of the typed STT core (the TTS dialects' shape,
``orpheus_tts.dialects.base``).

``start``, ``text`` and ``binary`` decode the session's opening and a client's frames into calls
of the core's input methods (``whisper_streaming.protocol.SttCore``) and return what the core
answered (plus any frame of the codec's own, as a driver ``Send``); ``encode`` turns one of the
core's events (``whisper_streaming.events``) into the vendor's frames. A ``ProtocolError`` raised
while decoding is the client's: ``whisper_streaming.codec_session`` hands it to the core
(``SttCore.fail``), whose ``Ended`` the codec encodes like any event.
"""

from __future__ import annotations

from speech_common.driver import Close, Command
from speech_common.ws import ProtocolError

from ..events import Event, Output
from ..protocol import SttCore


class Codec:
    name = "codec"

    def __init__(self, core: SttCore) -> None:
        self.core = core

    def start(self, now: float) -> list[Output]:
        """The session opened (before any frame): a codec configured by its handshake does it
        here."""
        return []

    def text(self, text: str, now: float) -> list[Output]:
        raise ProtocolError("invalid_message", "text frames are not part of this protocol")

    def binary(self, data: bytes, now: float) -> list[Output]:
        raise ProtocolError("invalid_message", "binary frames are not part of this protocol")

    def encode(self, event: Event, now: float) -> list[Command]:
        """One of the core's events as the vendor's frames ([] where the vendor has none)."""
        raise NotImplementedError

    def refusal(self, error: ProtocolError) -> list[Command]:
        """What a session refused before it starts (admission: 1013) gets, in this protocol."""
        return [Close(error.close_code, error.message, error)]
