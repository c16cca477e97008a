"""Together AI's realtime TTS WebSocket (``wss://api.together.ai/v1/audio/speech/websocket``).

Its clients put the session's settings in the query string (``model``, ``voice``,
``response_format``, ``sample_rate``, ``segment``, ``max_partial_length``, ``alignment``,
``speed``) and wait for ``session.created`` before they send anything. Then JSON messages:

client -> server                     this core
``input_text_buffer.append`` {text}  text, verbatim; answered ``conversation.item.input_text.received``
``input_text_buffer.commit``         ``flush``; with nothing appended since the last commit, the
                                     end of the item (below)
``input_text_buffer.clear``          ``clear``; the next text is a new item
``tts_session.updated`` {session}    ``update`` (voice, sampling); answered ``session.updated``

server -> client: ``session.created``; ``conversation.item.audio_output.delta`` {item_id,
delta: base64 audio}; ``conversation.item.audio_output.done`` {item_id} after an item's last
audio; ``conversation.item.tts.failed`` when a generation fails; ``error`` {error: {message,
type, code}} for bad input.

An item (``tts_<n>``) is a turn: the audio of every commit until an empty commit. Together's
docs leave "item" undefined; pipecat's TogetherTTSService commits after every sentence, sends an
empty commit at the end of the LLM's turn, and ends its turn at the first ``.done``: an item per
commit would cut its reply after one sentence. ``alignment=word`` adds
``conversation.item.word_timestamps`` {item_id, words, start_seconds, end_seconds} per
generation (where the deployment has an aligner model). ``language`` other than English and
``speed`` other than 1 are refused (Orpheus 3B speaks English and has no rate control).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping
from typing import Any

from orpheus_tts.dialects.base import Codec
from orpheus_tts.events import Audio, Ended, Event, Output, Rejected
from orpheus_tts.protocol import TtsCore
from orpheus_tts.schema import (
    MAX_BUFFER_SIZE_WORDS,
    Cleared,
    FlushDone,
    SessionCreated,
    WordTimestamps,
    check_language,
    control_message,
    session_config,
)
from orpheus_tts.settings import ORPHEUS_HF_REPO
from speech_common.driver import Close, Command, Send
from speech_common.ws import CloseCode, ProtocolError, load_json

DEFAULT_MODEL = ORPHEUS_HF_REPO
# Together's response_format names -> ours ("raw" and "pcm" are 16-bit PCM).
FORMATS = {"raw": "pcm_s16le", "pcm": "pcm_s16le", "pcm_s16le": "pcm_s16le",
           "pcm_f32le": "pcm_f32le", "wav": "wav", "mp3": "mp3", "opus": "opus",
           "mulaw": "mulaw", "alaw": "alaw"}  # fmt: skip
QUERY_KEYS = ("model", "voice", "response_format", "sample_rate", "segment",
              "max_partial_length", "alignment", "speed", "language", "api_key")  # fmt: skip
# Query keys that select this dialect when a client connects with them.
SELECTING_KEYS = frozenset(QUERY_KEYS)
UPDATE_KEYS = frozenset({"voice", "temperature", "top_p", "repetition_penalty", "max_tokens"})


def wants_together(query: Mapping[str, str]) -> bool:
    return bool(SELECTING_KEYS & set(query))


ITEM_FLUSH_ID = "together-item-"  # the id of the flush that ends an item: + its number


class TogetherCodec(Codec):
    def __init__(self, core: TtsCore, query: Mapping[str, str]) -> None:
        super().__init__(core)
        self.query = dict(query)
        self.model = self.query.get("model") or DEFAULT_MODEL
        self._item = 1  # the item whose audio is going out
        self._next_item = 1  # the item that text appended now belongs to
        self._item_has_text = False  # text was appended to _next_item
        self._appended = False  # text was appended since the last commit

    def start(self, now: float) -> list[Output]:
        """Together's clients configure the session in the handshake's query string."""
        config = session_config(self._config(), self.core.voices, self.core.default_voice)
        return self.core.configure(config, now)

    def _config(self) -> dict[str, Any]:
        q = self.query
        unknown = sorted(set(q) - set(QUERY_KEYS))
        if unknown:
            raise ProtocolError("invalid_request_error", f"unknown query parameters {unknown}")
        if "orpheus" not in self.model.lower():
            raise ProtocolError(
                "invalid_request_error", f"model {self.model!r} is not served here (Orpheus)"
            )
        if q.get("alignment", "none") not in ("none", "word"):
            raise ProtocolError("invalid_request_error", "alignment must be none or word")
        check_language(q.get("language"))
        if _number(q.get("speed", "1"), "speed") != 1.0:
            raise ProtocolError(
                "unsupported",
                "speed other than 1 is not supported: Orpheus has no speaking-rate control",
                CloseCode.UNSUPPORTED_DATA,
            )
        fmt = q.get("response_format", "raw")
        if fmt not in FORMATS:
            raise ProtocolError(
                "unsupported",
                f"response_format {fmt!r} is not supported; choose one of {sorted(FORMATS)}",
                CloseCode.UNSUPPORTED_DATA,
            )
        config: dict[str, Any] = {
            "events": True,
            "voice": q.get("voice", self.core.default_voice),
            "response_format": FORMATS[fmt],
            "segment": q.get("segment", "sentence"),
            # Together buffers "until sentence completion or maximum length": words of a
            # sentence are never released early.
            "buffer_size": MAX_BUFFER_SIZE_WORDS,
        }
        if q.get("alignment") == "word":
            config["word_timestamps"] = True
        if "sample_rate" in q:
            config["sample_rate"] = int(_number(q["sample_rate"], "sample_rate"))
        if "max_partial_length" in q:
            config["max_chunk_chars"] = int(_number(q["max_partial_length"], "max_partial_length"))
        return config

    # -- client messages ---------------------------------------------------------------------------
    def text(self, text: str, now: float) -> list[Output]:
        try:
            message = load_json(text)
        except ValueError as exc:
            raise ProtocolError(
                "invalid_request_error", f"not JSON: {exc}", recoverable=True
            ) from None
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "input_text_buffer.append":
            piece = message.get("text")
            if not isinstance(piece, str):
                raise ProtocolError(
                    "invalid_request_error", "append needs a text string", recoverable=True
                )
            received = Send({"type": "conversation.item.input_text.received", "text": piece})
            self._appended = self._item_has_text = self._appended or bool(piece)
            return [received, *self.core.append(piece, now)]
        if kind == "input_text_buffer.commit":
            return self._commit(now)
        if kind == "input_text_buffer.clear":
            return self.core.clear(None, now)
        if kind == "tts_session.updated":
            return self._update(message.get("session"), now)
        raise ProtocolError(
            "invalid_request_error", f"unknown message type {kind!r}", recoverable=True
        )

    def _commit(self, now: float) -> list[Output]:
        if self._appended or not self._item_has_text:  # speak it now; the item goes on
            self._appended = False
            return self.core.flush(None, now)
        # An empty commit: the item ends after its last audio (the flush's flush_done).
        item, self._next_item, self._item_has_text = self._next_item, self._next_item + 1, False
        return self.core.flush(f"{ITEM_FLUSH_ID}{item}", now)

    def _update(self, session: Any, now: float) -> list[Output]:
        if not isinstance(session, dict):
            raise ProtocolError(
                "invalid_request_error", "tts_session.updated needs a session object",
                recoverable=True,
            )  # fmt: skip
        unknown = sorted(set(session) - UPDATE_KEYS)
        if unknown:
            raise ProtocolError(
                "invalid_request_error", f"cannot update {unknown}", recoverable=True
            )
        self.core.check_open()  # after the end even a bad update is a frame too many
        outputs = self.core.update(control_message({"type": "update", **session}), now)
        if any(isinstance(output, Rejected) for output in outputs):
            return outputs  # refused (an unknown voice): no session.updated
        updated = {"type": "session.updated", "session": {**self._session(), **session}}
        return [*outputs, Send(updated)]

    def _session(self) -> dict[str, Any]:
        return {
            "id": self.core.session_id,
            "object": "realtime.tts.session",
            "modalities": ["text", "audio"],
            "model": self.model,
            "voice": self.core.config.voice if self.core.config else None,
        }

    # -- server messages ---------------------------------------------------------------------------
    def encode(self, event: Event, now: float) -> list[Command]:
        if isinstance(event, Audio):
            delta = json.dumps({
                "type": "conversation.item.audio_output.delta",
                "item_id": f"tts_{self._item}",
                "delta": base64.b64encode(event.data).decode(),
            })  # fmt: skip
            # Audio as base64 text: it weighs on the outbox bound as the text it is.
            return [Send(delta, ack=event.ack, size=len(delta))]
        if isinstance(event, SessionCreated):
            created = {"event_id": uuid.uuid4().hex, "type": "session.created",
                       "session": self._session()}  # fmt: skip
            return [Send(created)]
        if isinstance(event, FlushDone):
            if isinstance(event.id, str) and event.id.startswith(ITEM_FLUSH_ID):
                self._item = int(event.id.removeprefix(ITEM_FLUSH_ID)) + 1
                return [Send({"type": "conversation.item.audio_output.done",
                              "item_id": f"tts_{self._item - 1}"})]  # fmt: skip
            return []
        if isinstance(event, Cleared):  # the cleared item never finishes; new text is a new item
            self._next_item += self._item_has_text
            self._item, self._item_has_text, self._appended = self._next_item, False, False
            return []
        if isinstance(event, WordTimestamps):
            return [Send(word_timestamps(event, f"tts_{self._item}"))]
        if isinstance(event, Rejected):
            return [self._error(event.error)]
        if isinstance(event, Ended):
            error = event.error
            if error is None:
                return [Close(CloseCode.NORMAL)]
            return [self._error(error), Close(error.close_code, error.message)]
        return []  # audio_start, audio_done, session_done: Together has none

    def _error(self, error: ProtocolError) -> Send:
        body = {"message": error.message, "type": error.error_type, "code": error.error_type}
        if error.error_type == "engine_error":
            return Send({"type": "conversation.item.tts.failed", "error": body})
        return Send({"type": "error", "error": body})


def word_timestamps(event: WordTimestamps, item_id: str) -> dict[str, Any]:
    """Our ``word_timestamps`` event in Together's shape (parallel lists, seconds)."""
    return {
        "type": "conversation.item.word_timestamps",
        "item_id": item_id,
        "words": [w.word for w in event.words],
        "start_seconds": [w.start_s for w in event.words],
        "end_seconds": [w.end_s for w in event.words],
    }


def _number(value: str, name: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ProtocolError("invalid_request_error", f"{name} must be a number") from None
