"""Baseten's streaming-Whisper protocol (``whisper_streaming.schema``, docs/stt.md): a JSON
metadata frame, binary audio, ``end_audio`` / ``health_check`` controls; ``transcription``
messages back; a typed ``error`` frame before an error's close.

With ``events: true`` in the metadata's streaming params the session also gets
``speech_started`` and ``utterance_end`` messages and takes the ``finalize`` and ``keep_alive``
controls; with ``stable_partials: true`` each partial also carries its stable prefix
(``stable_text``, ``stable_word_count``). Metadata without them gets exactly the published
protocol, byte for byte.
"""

from __future__ import annotations

from typing import Any

from speech_common.driver import Close, Command, Send
from speech_common.ws import CloseCode, ProtocolError, check_json_depth, load_json

from ..events import (
    EndAudio,
    Ended,
    EndOfTurn,
    Event,
    FinalCause,
    FinalFailed,
    Finalized,
    Health,
    Output,
    SpeechStarted,
    Transcription,
    UtteranceEnd,
)
from ..protocol import EventOptions
from ..schema import (
    ControlMessage,
    EventControlMessage,
    SegmentOut,
    TranscriptionMessage,
    WordTimestamp,
    end_audio_message,
    finalize_message,
    health_message,
    parse_metadata,
)
from ..turns import TurnOptions
from .base import Codec

CONTROLS = (
    'text frames after the metadata must be {"type": "end_audio"} or {"type": "health_check"}'
)
EVENT_CONTROLS = (
    'text frames after the metadata must be {"type": "end_audio"}, {"type": "health_check"}, '
    '{"type": "finalize"} or {"type": "keep_alive"}'
)


class BasetenCodec(Codec):
    name = "baseten"

    @property
    def events(self) -> bool:
        config = self.core.config
        return config is not None and config.streaming.events

    def text(self, text: str, now: float) -> list[Output]:
        core = self.core
        if core.config is None:
            try:
                raw = load_json(text)
            except ValueError as exc:
                raise ProtocolError("invalid_json", f"metadata is not valid JSON: {exc}") from None
            try:
                config = parse_metadata(raw)
            except ValueError as exc:
                raise ProtocolError("invalid_metadata", str(exc)) from None
            s = config.streaming
            events = EventOptions(
                speech_started=s.events,
                utterance_end_ms=(s.utterance_end_ms or None) if s.events else None,
                turns=TurnOptions(s.end_of_turn_threshold, s.end_of_turn_timeout_ms)
                if s.end_of_turn
                else None,
            )
            return core.configure(config, events)
        events = self.events
        try:
            check_json_depth(text)
            model = EventControlMessage if events else ControlMessage
            control = model.model_validate_json(text)
        except ValueError:
            raise ProtocolError("invalid_message", EVENT_CONTROLS if events else CONTROLS) from None
        if control.type == "health_check":
            return core.health_check()
        if control.type == "finalize":
            return core.finalize(now)
        if control.type == "keep_alive":
            return core.keep_alive(now)
        return core.end_audio(now)

    def binary(self, data: bytes, now: float) -> list[Output]:
        return self.core.audio(data, now)

    def encode(self, event: Event, now: float) -> list[Command]:
        if isinstance(event, Transcription):
            return [Send(transcription_message(event, self.events))]
        if isinstance(event, EndAudio):
            return [Send(end_audio_message(event.status))]
        if isinstance(event, Health):
            return [Send(health_message(event.healthy))]
        if isinstance(event, FinalFailed):
            return [Send(final_failed_message(event.num))]
        if isinstance(event, EndOfTurn):  # only a session that asked for it gets one
            message = {"type": "end_of_turn", "transcription_num": event.num,
                       "speech_end": event.speech_end_s, "reason": event.reason,
                       "probability": event.probability}  # fmt: skip
            return [Send(message)]
        if isinstance(event, Ended):
            error = event.error
            if error is None:
                return [Close(CloseCode.NORMAL, "end of audio")]
            return [Close(error.close_code, error.message, error)]  # the error frame, then close
        if not self.events:
            return []
        if isinstance(event, SpeechStarted):
            message = {"type": "speech_started", "transcription_num": event.num,
                       "start_time": event.timestamp_s}  # fmt: skip
            return [Send(message)]
        if isinstance(event, UtteranceEnd):
            message = {"type": "utterance_end", "transcription_num": event.num,
                       "last_word_end": event.last_word_end_s}  # fmt: skip
            return [Send(message)]
        if isinstance(event, Finalized):
            return [Send(finalize_message())]
        return []


def transcription_message(event: Transcription, events: bool = False) -> dict[str, Any]:
    """A partial or final as the published ``transcription`` message (``from_finalize`` added
    only for a session with ``events`` whose finalize cut this final; ``stable_text`` and
    ``stable_word_count`` only to the partials of a session with ``stable_partials``)."""
    transcript = event.result
    stable = event.stable
    segments = [
        SegmentOut(
            text=seg.text,
            start_time=round(float(seg.start), 3),
            end_time=round(float(seg.end), 3),
            log_prob=None if seg.avg_logprob is None else float(seg.avg_logprob),
            word_timestamps=[
                WordTimestamp(
                    word=w.word,
                    start_time=round(float(w.start), 3),
                    end_time=round(float(w.end), 3),
                    prob=float(w.prob),
                )
                for w in seg.words
            ]
            if seg.words
            else None,
        )
        for seg in transcript.segments
    ]
    return TranscriptionMessage(
        is_final=event.is_final,
        transcript=transcript.text,
        transcription_num=event.num,
        language_code=transcript.language,
        language_prob=transcript.language_prob,
        audio_length_sec=round(event.audio_s, 3),
        segments=segments,
        is_end_of_audio_flush=True if event.flush else None,
        from_finalize=True if events and event.cause is FinalCause.FINALIZE else None,
        stable_text=None if stable is None else " ".join(stable),
        stable_word_count=None if stable is None else len(stable),
    ).to_json()


def final_failed_message(num: int) -> dict[str, Any]:
    """A recoverable error: this utterance's final could not be computed; the session goes on."""
    return {
        "type": "error",
        "body": {
            "error_type": "final_failed",
            "message": f"transcription {num} failed; the session continues",
            "recoverable": True,
            "transcription_num": num,
        },
    }
