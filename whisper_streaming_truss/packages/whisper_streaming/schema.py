"""Client metadata (three shapes in the wild), control messages and server messages."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from speech_common.audio import Encoding
from speech_common.turn import COMPLETE_THRESHOLD
from speech_common.ws import describe_validation_error

from .turns import DEFAULT_TIMEOUT_MS

MAX_FINAL_DURATION_S = 30.0  # Whisper's input window
DEFAULT_SAMPLE_RATE_HZ = 16000  # the published client's, and Whisper's own
MIN_SAMPLE_RATE_HZ = 4000
MAX_SAMPLE_RATE_HZ = 192000


class _Strict(BaseModel):
    # Baseten's server rejects unknown keys; so do we (a typo must not silently change behaviour).
    model_config = ConfigDict(extra="forbid")


class VadParams(_Strict):
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    min_silence_duration_ms: int = Field(300, ge=32, le=10_000)
    speech_pad_ms: int = Field(30, ge=0, le=2_000)


class StreamingParams(_Strict):
    # Any string parses; the session refuses a name that is not an ``Encoding`` (pcm_s16le and
    # pcm_mulaw, Baseten's; pcm_f32le, ours) with unsupported_encoding, 1003 (protocol.py).
    encoding: str = Encoding.PCM_S16LE.value
    sample_rate: int = Field(DEFAULT_SAMPLE_RATE_HZ, ge=MIN_SAMPLE_RATE_HZ, le=MAX_SAMPLE_RATE_HZ)
    enable_partial_transcripts: bool = False
    partial_transcript_interval_s: float = Field(0.5, ge=0.1, le=10.0)
    # Opt-in (an extension of the published protocol, docs/stt.md "Stable partials"): each
    # partial carries stable_text / stable_word_count, its prefix that will not change.
    stable_partials: bool = False
    final_transcript_max_duration_s: float = Field(30.0, ge=1.0, le=MAX_FINAL_DURATION_S)
    # Opt-in (an extension of the published protocol, docs/stt.md "Events"): speech_started and
    # utterance_end messages, and the finalize and keep_alive controls. Without it every frame
    # is exactly the published protocol's.
    events: bool = False
    # With events: an utterance_end after this much non-speech follows a final with words
    # (0: none).
    utterance_end_ms: int = Field(1000, ge=0, le=10_000)
    # Opt-in (docs/stt.md "End of turn"): an end_of_turn message when the speaker's turn is over
    # (the turn model at a pause, or end_of_turn_timeout_ms of silence after the turn's speech).
    end_of_turn: bool = False
    end_of_turn_threshold: float = Field(COMPLETE_THRESHOLD, gt=0.0, lt=1.0)  # P(complete) above
    end_of_turn_timeout_ms: int = Field(DEFAULT_TIMEOUT_MS, ge=300, le=30_000)


class WhisperParams(_Strict):
    audio_language: str = "en"  # "auto" = detect
    prompt: str = Field("", max_length=2_000)
    language_detection_only: bool = False
    language_options: list[str] = Field(default_factory=list, max_length=100)
    show_word_timestamps: bool = False
    # Beam for finals (partials are greedy); None: the deployment's whisper_beam_width.
    beam_width: int | None = Field(None, ge=1, le=10)
    length_penalty: float = Field(1.0, ge=0.0, le=10.0)
    repetition_penalty: float = Field(1.0, ge=0.5, le=5.0)
    no_repeat_ngram_size: int = Field(0, ge=0, le=20)
    # Opt-in (an extension of the published schema): each final is decoded with the session's
    # previous finals as context, like Whisper's own ``condition_on_previous_text``.
    condition_on_previous_text: bool = False


class StreamingWhisperParams(StreamingParams, WhisperParams):
    """v1 clients send streaming and Whisper fields in one object."""


class SessionConfig(BaseModel):
    """The normalised session metadata, whichever shape the client sent."""

    vad: VadParams = Field(default_factory=VadParams)
    streaming: StreamingParams = Field(default_factory=StreamingParams)
    whisper: WhisperParams = Field(default_factory=WhisperParams)
    shape: Literal["v1", "v2", "v3", "empty", "deepgram"] = "empty"


class _Metadata(_Strict):
    vad_params: VadParams | None = None
    streaming_vad_config: VadParams | None = None
    streaming_whisper_params: StreamingWhisperParams | None = None
    streaming_params: StreamingParams | None = None
    whisper_params: WhisperParams | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> _Metadata:
        if self.vad_params is not None and self.streaming_vad_config is not None:
            raise ValueError("send either vad_params or streaming_vad_config, not both")
        if self.streaming_whisper_params is not None and (
            self.streaming_params is not None or self.whisper_params is not None
        ):
            raise ValueError(
                "streaming_whisper_params cannot be combined with streaming_params/whisper_params"
            )
        return self


def parse_metadata(raw: Any) -> SessionConfig:
    """Validate the first frame (already JSON-decoded) into a SessionConfig; raises ValueError."""
    if not isinstance(raw, dict):
        raise ValueError("metadata must be a JSON object")
    try:
        meta = _Metadata.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(describe_validation_error(exc, "metadata", limit=5)) from None
    vad = meta.vad_params or meta.streaming_vad_config or VadParams()
    if meta.streaming_whisper_params is not None:
        combined = meta.streaming_whisper_params.model_dump()
        streaming = StreamingParams(**{k: combined[k] for k in StreamingParams.model_fields})
        whisper = WhisperParams(**{k: combined[k] for k in WhisperParams.model_fields})
        shape = "v1"
    else:
        streaming = meta.streaming_params or StreamingParams()
        whisper = meta.whisper_params or WhisperParams()
        shape = "v3" if meta.streaming_vad_config is not None else "v2"
        if not raw:
            shape = "empty"
    return SessionConfig(vad=vad, streaming=streaming, whisper=whisper, shape=shape)


# -- control messages ---------------------------------------------------------------------------
class ControlMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # clients may add fields (e.g. a body) we ignore
    type: Literal["end_audio", "health_check"]


class EventControlMessage(ControlMessage):
    """The controls of a session with ``events``: also finalize and keep_alive."""

    type: Literal["end_audio", "health_check", "finalize", "keep_alive"]


# -- server messages ----------------------------------------------------------------------------
class WordTimestamp(BaseModel):
    word: str
    start_time: float
    end_time: float
    prob: float


class SegmentOut(BaseModel):
    text: str
    start_time: float
    end_time: float
    log_prob: float | None = None
    word_timestamps: list[WordTimestamp] | None = None


class TranscriptionMessage(BaseModel):
    type: Literal["transcription"] = "transcription"
    is_final: bool
    transcript: str
    transcription_num: int
    language_code: str
    language_prob: float | None
    audio_length_sec: float
    segments: list[SegmentOut]
    is_end_of_audio_flush: bool | None = None
    from_finalize: bool | None = None  # only with events: this final answers a finalize
    # Partials of a session with stable_partials only: the transcript's first stable_word_count
    # words (whitespace-separated), which will not change.
    stable_text: str | None = None
    stable_word_count: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = self.model_dump(exclude_none=True)
        data["language_prob"] = self.language_prob  # always present, may be null
        for seg in data["segments"]:
            seg.setdefault("log_prob", None)
        return data


def end_audio_message(status: Literal["acknowledged", "finished"]) -> dict[str, Any]:
    return {"type": "end_audio", "body": {"status": status}}


def health_message(healthy: bool = True) -> dict[str, Any]:
    return {"type": "health_check", "body": {"healthy": healthy}}


def finalize_message() -> dict[str, Any]:
    return {"type": "finalize", "body": {"status": "finished"}}
