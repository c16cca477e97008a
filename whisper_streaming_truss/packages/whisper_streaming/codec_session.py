"""The driver's ``SessionCore`` for one STT session: ``SttCore`` behind a codec
(``whisper_streaming.dialects``), on the shared ``speech_common.codec_session`` shape."""

from __future__ import annotations

from typing import Any

from speech_common import codec_session
from speech_common.ws import ProtocolError

from .dialects.base import Codec
from .protocol import CoreLimits, SttCore


class CodecSession(codec_session.CodecSession):
    core: SttCore
    codec: Codec
    HEARD_AT_START = True  # the idle clock (Deepgram's NET-0001) runs from the handshake

    @classmethod
    def baseten(cls, limits: CoreLimits, supported_languages: list[str]) -> CodecSession:
        """A session of Baseten's protocol (the default)."""
        from .dialects.baseten import BasetenCodec

        core = SttCore(limits, supported_languages)
        return cls(core, BasetenCodec(core))

    @property
    def outstanding_jobs(self) -> frozenset[int]:
        return self.core.outstanding_jobs

    def bad_frame(self, error: ProtocolError) -> list[Any]:
        return self.core.fail(error)  # a bad frame ends an STT session
