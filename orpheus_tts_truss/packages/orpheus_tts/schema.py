"""The WebSocket protocol's typed edge: the session's first (JSON) frame, parsed once.

Compatible with Baseten's published Orpheus client: ``{"voice", "max_tokens", "buffer_size"}``
plus optional ``temperature``, ``top_p``, ``repetition_penalty``. Then text frames of words,
then ``"__END__"``. Numbers are strict (``"2000"`` or ``true`` is an error, not a coercion) and
unknown keys are rejected so a typo such as ``"temprature"`` is reported instead of ignored.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError

from speech_common.ws import ProtocolError, describe_validation_error, load_json

END_OF_INPUT = "__END__"

DEFAULT_MAX_TOKENS = 2000  # ≈ 24 s of audio per generation at 82.03 tokens/s
# Upper bound accepted from clients; the synthesizer clamps further by text length and context.
MAX_TOKENS_LIMIT = 8192
DEFAULT_BUFFER_SIZE_WORDS = 10
MAX_BUFFER_SIZE_WORDS = 200
# A config frame is a handful of keys; anything bigger is not a config.
MAX_CONFIG_FRAME_CHARS = 4096

_Temperature = Annotated[StrictFloat, Field(gt=0.0, le=2.0, allow_inf_nan=False)]
_TopP = Annotated[StrictFloat, Field(gt=0.0, le=1.0, allow_inf_nan=False)]
# Orpheus loops or babbles below 1.1; above 2 it stops producing valid audio frames.
_RepetitionPenalty = Annotated[StrictFloat, Field(ge=1.0, le=2.0, allow_inf_nan=False)]


class SessionConfig(BaseModel):
    """The first frame of a session (voice, token budget, buffering, optional sampling)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    voice: Annotated[str, Field(min_length=1, max_length=64)] = "tara"
    max_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_TOKENS_LIMIT)] = DEFAULT_MAX_TOKENS
    buffer_size: Annotated[StrictInt, Field(ge=1, le=MAX_BUFFER_SIZE_WORDS)] = (
        DEFAULT_BUFFER_SIZE_WORDS
    )
    temperature: _Temperature | None = None
    top_p: _TopP | None = None
    repetition_penalty: _RepetitionPenalty | None = None

    def sampling_overrides(self) -> dict[str, float]:
        """The sampling fields the client set (the server's defaults apply to the rest)."""
        fields = ("temperature", "top_p", "repetition_penalty")
        return {name: getattr(self, name) for name in fields if getattr(self, name) is not None}


def parse_session_config(
    raw: str | bytes | None, voices: Collection[str], default_voice: str
) -> SessionConfig:
    """Parse and validate the first frame; raise ``ProtocolError`` with a readable message."""
    if raw is None or isinstance(raw, (bytes, bytearray)):
        raise ProtocolError(
            "invalid_config", "the first frame must be a JSON text frame, not binary"
        )
    if len(raw) > MAX_CONFIG_FRAME_CHARS:
        raise ProtocolError(
            "frame_too_large", f"config frame exceeds {MAX_CONFIG_FRAME_CHARS} characters"
        )
    try:
        data: Any = load_json(raw)
    except ValueError as exc:
        raise ProtocolError("invalid_json", f"the first frame is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("invalid_config", "the first frame must be a JSON object")
    data.setdefault("voice", default_voice)
    try:
        config = SessionConfig.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError("invalid_config", describe_validation_error(exc, "config")) from None
    voice = config.voice.strip().lower()
    if voice not in voices:
        raise ProtocolError(
            "invalid_config", f"unknown voice {config.voice!r}; choose one of {sorted(voices)}"
        )
    return config.model_copy(update={"voice": voice})
