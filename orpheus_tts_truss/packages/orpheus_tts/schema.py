"""The WebSocket protocol's typed edge, in one place: every frame a client may send and every
event the server sends, parsed once (docs/tts.md's protocol tables are tested against this).

Compatible with Baseten's published Orpheus client: ``{"voice", "max_tokens", "buffer_size"}``
plus optional ``temperature``, ``top_p``, ``repetition_penalty``. Then text frames of words,
then ``"__END__"``. Numbers are strict (``"2000"`` or ``true`` is an error, not a coercion) and
unknown keys are rejected so a typo such as ``"temprature"`` is reported instead of ignored.

Opt-in keys of the first frame (a first frame without them gets exactly the published
protocol): ``response_format`` and ``sample_rate`` (the audio's encoding), ``events: true``
(the multi-turn event protocol: ``ControlMessage`` in, ``ServerEvent`` out, see
``orpheus_tts.protocol``).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)

from orpheus_tts.audio_format import AudioFormat, check_format, default_rate
from speech_common.text_buffer import DEFAULT_BUFFER_SIZE_WORDS
from speech_common.ws import CloseCode, ProtocolError, describe_validation_error, load_json

END_OF_INPUT = "__END__"

DEFAULT_MAX_TOKENS = 2000  # ≈ 24 s of audio per generation at 82.03 tokens/s
# Upper bound accepted from clients; the synthesizer clamps further by text length and context.
MAX_TOKENS_LIMIT = 8192
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
    # -- opt-in (not in the published client) --
    events: StrictBool = False  # the multi-turn event protocol
    response_format: StrictStr = AudioFormat.PCM_S16LE.value
    sample_rate: StrictInt | None = None  # None: 24000 (Orpheus's own), 8000 for mulaw/alaw
    # When buffered text is spoken: at sentence ends and every ``buffer_size`` words (the
    # published behaviour), at once after every text frame, or only at a flush / the end.
    segment: Literal["sentence", "immediate", "never"] = "sentence"
    # With events: a word_timestamps event per generation (forced alignment; the deployment
    # must have an aligner model, else the session is refused with a typed 1003).
    word_timestamps: StrictBool = False
    # Gain applied to the audio, in dB (Fish Audio's prosody.volume).
    volume_db: Annotated[StrictFloat | StrictInt, Field(ge=-30, le=30)] = 0
    # A slow automatic gain towards a speech level (Fish Audio's prosody.normalize_loudness).
    normalize_loudness: StrictBool = False
    # mp3 / opus bit rate in bits per second (None: 64 kbit/s mp3, 32 kbit/s opus).
    bitrate_bps: Annotated[StrictInt, Field(ge=6000, le=320_000)] | None = None
    # Characters per generation, below the server's own cap (which it never exceeds).
    max_chunk_chars: Annotated[StrictInt, Field(ge=16, le=MAX_CONFIG_FRAME_CHARS)] | None = None

    @property
    def audio_format(self) -> AudioFormat:
        return AudioFormat(self.response_format)

    @property
    def output_rate(self) -> int:
        return self.sample_rate or default_rate(self.audio_format)

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
    return session_config(data, voices, default_voice)


def session_config(
    fields: dict[str, Any], voices: Collection[str], default_voice: str
) -> SessionConfig:
    """A config from its fields (a first frame's, or a vendor's request mapped onto them),
    validated as a first frame is; raise ``ProtocolError`` with a readable message."""
    try:
        config = SessionConfig.model_validate({"voice": default_voice, **fields})
    except ValidationError as exc:
        raise ProtocolError("invalid_config", describe_validation_error(exc, "config")) from None
    if config.response_format not in {f.value for f in AudioFormat}:
        raise ProtocolError(
            "unsupported_format",
            f"response_format {config.response_format!r} is not supported; choose one of "
            f"{[f.value for f in AudioFormat]}",
            CloseCode.UNSUPPORTED_DATA,
        )
    check_format(config.audio_format, config.output_rate)
    if config.word_timestamps and not config.events:
        raise ProtocolError("invalid_config", "word_timestamps needs events: true")
    return config.model_copy(update={"voice": check_voice(config.voice, voices)})


def check_voice(voice: str, voices: Collection[str], recoverable: bool = False) -> str:
    name = voice.strip().lower()
    if name not in voices:
        raise ProtocolError(
            "invalid_config" if not recoverable else "invalid_message",
            f"unknown voice {voice!r}; choose one of {sorted(voices)}",
            recoverable=recoverable,
        )
    return name


# Orpheus 3B (canopylabs/orpheus-3b-0.1-ft) speaks English only; vendors' clients name the
# language as a code ("en", "en-US", "en_GB") or a word ("english").
ENGLISH = frozenset({"en", "eng", "english"})


def check_language(language: str | None) -> None:
    """Refuse (typed, 1003) a language other than English; None is the model's own."""
    if language is None or re.split(r"[-_]", language.strip().lower())[0] in ENGLISH:
        return
    raise ProtocolError(
        "unsupported",
        f"language {language!r} is not supported: this model (Orpheus 3B) speaks English only",
        CloseCode.UNSUPPORTED_DATA,
    )


# -- the event protocol (``events: true``) ---------------------------------------------------------
# Client -> server: a text frame whose first non-blank character is "{" is a control message
# (below); any other text frame is text to speak, appended verbatim (an LLM's deltas: "Hel",
# "lo wor", "ld."). Text that itself starts with "{" is sent as {"type": "text", "text": ...}.
# "__END__" is the same as {"type": "end"}.
_Id = Annotated[StrictStr, Field(max_length=128)] | StrictInt | None


class _Control(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FlushMessage(_Control):
    """Speak everything buffered now; ``flush_done`` (same id) follows its last audio byte."""

    type: Literal["flush"]
    id: _Id = None


class ClearMessage(_Control):
    """Barge-in: drop buffered text, abort generations; ``cleared`` follows, then no audio of
    the cleared text."""

    type: Literal["clear"]
    id: _Id = None


class UpdateMessage(_Control):
    """New voice or sampling for the text that follows (text before it keeps the old ones)."""

    type: Literal["update"]
    voice: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    max_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    temperature: _Temperature | None = None
    top_p: _TopP | None = None
    repetition_penalty: _RepetitionPenalty | None = None


class TextMessage(_Control):
    """Text to speak, for text that would otherwise look like a control message."""

    type: Literal["text"]
    text: StrictStr


class EndMessage(_Control):
    """Finish: the remaining audio, ``session_done``, close 1000."""

    type: Literal["end"]


ControlMessage = FlushMessage | ClearMessage | UpdateMessage | TextMessage | EndMessage
_CONTROL = TypeAdapter(Annotated[ControlMessage, Field(discriminator="type")])
CONTROL_TYPES = ("flush", "clear", "update", "text", "end")


def is_control_frame(text: str) -> bool:
    return text.lstrip().startswith("{")


def parse_control(text: str) -> ControlMessage:
    """A control message, or a recoverable ``ProtocolError`` (the session goes on)."""
    try:
        data: Any = load_json(text)
    except ValueError as exc:
        raise ProtocolError("invalid_json", f"not JSON: {exc}", recoverable=True) from None
    return control_message(data)


def control_message(data: Any) -> ControlMessage:
    """A control message from its fields (a frame's, or a vendor's message mapped onto them),
    or a recoverable ``ProtocolError``."""
    if not isinstance(data, dict) or data.get("type") not in CONTROL_TYPES:
        kind = data.get("type") if isinstance(data, dict) else None
        raise ProtocolError(
            "unknown_control",
            f"unknown control message type {kind!r}; expected one of {list(CONTROL_TYPES)}",
            recoverable=True,
        )
    try:
        return _CONTROL.validate_python(data)
    except ValidationError as exc:
        raise ProtocolError(
            "invalid_message", describe_validation_error(exc, "message"), recoverable=True
        ) from None


# Server -> client (JSON text frames, interleaved with binary audio). Times are seconds on the
# session's audio timeline: the audio sent so far, at the session's sample rate.
class _Event(BaseModel):
    model_config = ConfigDict(frozen=True)


class SessionCreated(_Event):
    type: Literal["session_created"] = "session_created"
    session_id: str
    voice: str
    response_format: str
    sample_rate: int


class AudioStart(_Event):
    type: Literal["audio_start"] = "audio_start"
    generation: int  # 1, 2, ... in the session
    text: str
    start_s: float


class AudioDone(_Event):
    type: Literal["audio_done"] = "audio_done"
    generation: int
    text: str
    start_s: float
    end_s: float


class WordOut(BaseModel):
    word: str
    start_s: float
    end_s: float


class WordTimestamps(_Event):
    """Before a generation's ``audio_done``: its words on the session's audio timeline."""

    type: Literal["word_timestamps"] = "word_timestamps"
    generation: int
    words: list[WordOut]


class FlushDone(_Event):
    type: Literal["flush_done"] = "flush_done"
    id: str | int | None = None


class Cleared(_Event):
    type: Literal["cleared"] = "cleared"
    id: str | int | None = None
    generations_aborted: int


class SessionDone(_Event):
    type: Literal["session_done"] = "session_done"
    generations: int
    audio_s: float


# Errors are speech_common.ws.ErrorFrame ({"type": "error", "body": {...}}); in the event
# protocol a bad control message is ``recoverable: true`` and the session goes on.
ServerEvent = (
    SessionCreated | AudioStart | WordTimestamps | AudioDone | FlushDone | Cleared | SessionDone
)
