"""A codec: one vendor's wire format at the edge of the typed core (pipecat's frame serializers
are the model: ``deserialize`` frames in, ``serialize`` frames out).

``text`` and ``binary`` decode a client's frame into calls of the core's input methods and
return what the core answered (plus any frame of the codec's own, as a driver ``Send``);
``encode`` turns one of the core's events (``orpheus_tts.events``) into the vendor's frames.
Audio ``Send``s keep their acks, so flow control, ``clear`` (``Discard``) and the generation
bounds work the same in every dialect. A ``ProtocolError`` raised while decoding is the
client's: ``orpheus_tts.codec_session`` hands it to the core (``TtsCore.reject``), which answers
it with ``Rejected`` or ``Ended``, encoded here like any event.
"""

from __future__ import annotations

from orpheus_tts.events import Event, Output
from orpheus_tts.protocol import TtsCore
from speech_common.driver import Command
from speech_common.ws import ProtocolError


class Codec:
    def __init__(self, core: TtsCore) -> None:
        self.core = core

    def start(self, now: float) -> list[Output]:
        """The session opened (before any frame): a codec configured by its handshake does it
        here."""
        return []

    def text(self, text: str, now: float) -> list[Output]:
        raise ProtocolError("unsupported_frame", "text frames are not part of this protocol")

    def binary(self, data: bytes, now: float) -> list[Output]:
        raise ProtocolError("unsupported_frame", "binary frames are not part of this protocol")

    def encode(self, event: Event, now: float) -> list[Command]:
        """One of the core's events as the vendor's frames ([] where the vendor has none)."""
        raise NotImplementedError
