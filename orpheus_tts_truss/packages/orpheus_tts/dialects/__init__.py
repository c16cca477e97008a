"""The wire formats at the edge of the one TTS core, a codec each (``base.Codec``): Baseten's
(``baseten``), Together's (``together``), Fish Audio's (``fish``), the HTTP flavour's (``http``).
"""

from __future__ import annotations

from collections.abc import Mapping

from orpheus_tts.dialects.base import Codec
from orpheus_tts.dialects.baseten import BasetenCodec
from orpheus_tts.dialects.fish import FishCodec, is_start
from orpheus_tts.dialects.together import TogetherCodec, wants_together
from orpheus_tts.events import Event, Output
from orpheus_tts.protocol import TtsCore
from speech_common.driver import Command


class FirstFrameCodec(Codec):
    """Baseten's protocol, unless the first frame is a Fish Audio MessagePack ``start``."""

    def __init__(self, core: TtsCore) -> None:
        super().__init__(core)
        self.chosen: Codec = BasetenCodec(core)

    def start(self, now: float) -> list[Output]:
        return self.chosen.start(now)

    def text(self, text: str, now: float) -> list[Output]:
        return self.chosen.text(text, now)

    def binary(self, data: bytes, now: float) -> list[Output]:
        first = isinstance(self.chosen, BasetenCodec) and self.core.config is None
        if first and is_start(data):
            self.chosen = FishCodec(self.core)
        return self.chosen.binary(data, now)

    def encode(self, event: Event, now: float) -> list[Command]:
        return self.chosen.encode(event, now)


def choose_codec(core: TtsCore, query: Mapping[str, str], default: str) -> Codec:
    """A WebSocket's codec: Together when the handshake's query string (or the deployment's
    ``dialect``) says so, Fish when the first frame is MessagePack, else Baseten's."""
    if default == "together" or (default == "auto" and wants_together(query)):
        return TogetherCodec(core, query)
    if default == "fish":
        return FishCodec(core)
    if default == "baseten":
        return BasetenCodec(core)
    return FirstFrameCodec(core)
