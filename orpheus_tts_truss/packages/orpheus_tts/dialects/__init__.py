"""Other vendors' TTS protocols served by the same session core (see ``base``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orpheus_tts.dialects.fish import FishCore, is_start
from orpheus_tts.dialects.together import TogetherCore, wants_together
from orpheus_tts.protocol import TtsCore
from speech_common.driver import Command


class FirstFrameDialect:
    """Baseten's protocol, unless the first frame is a Fish Audio MessagePack ``start``."""

    def __init__(self, core: TtsCore) -> None:
        self.core = core
        self.inner: Any = core  # until the first frame says otherwise

    def __getattr__(self, name: str) -> Any:  # done, next_deadline, outcome, on_* ...
        return getattr(self.inner, name)

    def on_bytes(self, data: bytes, now: float) -> list[Command]:
        if self.inner is self.core and self.core.config is None and is_start(data):
            self.inner = FishCore(self.core)
        return self.inner.on_bytes(data, now)


def session_core(core: TtsCore, query: Mapping[str, str], default: str) -> Any:
    """The session's protocol: Together when the handshake's query string (or the deployment's
    ``dialect``) says so, Fish when the first frame is MessagePack, else Baseten's."""
    if default == "together" or (default == "auto" and wants_together(query)):
        return TogetherCore(core, query)
    if default == "fish":
        return FishCore(core)
    if default == "baseten":
        return core
    return FirstFrameDialect(core)
