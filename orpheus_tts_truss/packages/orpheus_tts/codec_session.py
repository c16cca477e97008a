"""The driver's ``SessionCore`` for one TTS session: ``TtsCore`` behind a codec
(``orpheus_tts.dialects``), on the shared ``speech_common.codec_session`` shape."""

from __future__ import annotations

from typing import Any

from orpheus_tts.dialects.base import Codec
from orpheus_tts.protocol import TtsCore
from speech_common import codec_session
from speech_common.ws import ProtocolError


class CodecSession(codec_session.CodecSession):
    core: TtsCore
    codec: Codec

    def bad_frame(self, error: ProtocolError) -> list[Any]:
        # The core decides what follows: recoverable errors keep the session open.
        return self.core.reject(error)
