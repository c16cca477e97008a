"""Deepgram's live transcription protocol (``wss://api.deepgram.com/v1/listen``) on the same
WebSocket, for Deepgram's clients (livekit-plugins-deepgram, pipecat's DeepgramSTTService and
the deepgram-sdk under it).

Its clients put every setting in the handshake's query string (``model``, ``language``,
``encoding``, ``sample_rate``, ``channels``, ``interim_results``, ``punctuate``,
``endpointing``, ``utterance_end_ms``, ``vad_events``, ``keyterm``, ...), send binary audio and
JSON controls, and read JSON back:

client -> server              this core
binary audio                  ``audio`` (alaw, linear32 and several channels transcoded here)
``KeepAlive``                 the idle deadline starts again (10 s without any frame: NET-0001)
``Finalize``                  ``finalize``: the open utterance's final, ``from_finalize: true``
``CloseStream`` (or b"")      ``end_audio``: every final, then ``Metadata`` and close 1000
``Configure`` {keyterms}      the prompt's key terms replaced; ``ConfigureSuccess``

server -> client: ``Results`` (a partial with ``is_final: false`` when ``interim_results``; a
final per utterance with ``speech_final: true`` when the VAD ended it on a pause),
``SpeechStarted`` (``vad_events``), ``UtteranceEnd`` (``utterance_end_ms``), ``Metadata`` at the
end, ``Error`` before an error's close (Deepgram's close reasons: ``DATA-0000`` undecodable
audio, ``NET-0001`` idle). A query Deepgram would refuse with HTTP 400 is refused the same way
here after the handshake (Truss accepts every socket first): an ``Error`` frame, then 1008.

Whisper transcribes whole utterances: ``endpointing`` (Deepgram's default 10 ms, LiveKit's 25 ms)
sets the VAD's silence timeout, never below ``MIN_ENDPOINTING_MS``. docs/stt.md lists every
parameter: honoured, ignored (where it cannot change the result), or refused.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pydantic import ValidationError

from speech_common.audio import (
    alaw_decode,
    f32le_to_float,
    int16_to_float,
    mulaw_decode,
    s32le_to_float,
)
from speech_common.driver import Close, Command, Send
from speech_common.ws import CloseCode, ProtocolError, describe_validation_error, load_json

from ..events import (
    Ended,
    Event,
    FinalCause,
    FinalFailed,
    Finalized,
    Output,
    SpeechStarted,
    Transcription,
    UtteranceEnd,
)
from ..protocol import EventOptions
from ..schema import SessionConfig, StreamingParams, VadParams, WhisperParams
from ..turns import TurnOptions
from .base import Codec

logger = logging.getLogger(__name__)

# Deepgram Flux's end-of-turn parameters (its /v2/listen; here on v1's protocol): either one
# turns on end-of-turn detection, and then ``speech_final`` is true on the final that ends the
# speaker's turn (the Smart Turn model's verdict at that pause), not on every pause.
EOT_KEYS = frozenset({"eot_threshold", "eot_timeout_ms"})
EOT_THRESHOLD = (0.5, 0.9)  # the v1 dialect's range (Flux's own goes to 1.0: flux.py)
EOT_TIMEOUT_MS = (500, 10_000)
# Every query parameter of Deepgram's live endpoint (its AsyncAPI reference and the deepgram-sdk
# 7.17 ``listen.v1.connect``), plus ``filler_words`` and ``no_delay`` (documented features that
# LiveKit sends) and ``detect_language``. Any of them in the query selects this dialect.
QUERY_KEYS = (
    frozenset(
        """callback callback_method channels detect_entities detect_language diarize diarize_model
    dictation encoding endpointing extra filler_words interim_results keyterm keywords language
    language_hint mip_opt_out model multichannel no_delay numerals profanity_filter punctuate
    redact replace sample_rate search smart_format tag utterance_end_ms vad_events version""".split()
    )
    | EOT_KEYS
)
LISTEN_PATH = "/v1/listen"  # what an SDK appends to its base URL (it lands in ``_p``: ``?_p=``)
# Whisper needs whole utterances: a final per 10-25 ms pause (Deepgram's and LiveKit's
# endpointing) would cut sentences into words. 300 ms is Baseten's protocol's default silence,
# the one every benchmark here was measured with.
MIN_ENDPOINTING_MS = 300
MAX_ENDPOINTING_MS = 10_000
DEFAULT_ENDPOINTING_MS = 10  # Deepgram's default
IDLE_TIMEOUT_S = 10.0  # Deepgram: no audio and no KeepAlive for 10 s closes with NET-0001
PARTIAL_INTERVAL_S = 0.5  # interim results: a new hypothesis every 0.5 s of speech
MAX_CHANNELS = 8
MAX_HEADER_BYTES = 1 << 16  # a WAV header (encoding omitted) must be whole within this
# Deepgram's filler words (its filler_words docs), and Whisper's spellings of them.
FILLERS = frozenset("uh um mhm mm-mm uh-uh uh-huh nuh-uh umm uhm uhh hmm mm".split())
# Dictation (spoken punctuation, Deepgram's ``dictation``): phrase -> mark.
DICTATION = {
    ("comma",): ",",
    ("period",): ".",
    ("full", "stop"): ".",
    ("question", "mark"): "?",
    ("exclamation", "point"): "!",
    ("exclamation", "mark"): "!",
    ("colon",): ":",
    ("semicolon",): ";",
    ("new", "line"): "\n",
    ("new", "paragraph"): "\n\n",
}
# Deepgram's error variants and close reasons for the core's errors; anything else: 1008.
ERRORS: dict[str, tuple[str, int]] = {
    "invalid_query": ("INVALID_QUERY_PARAMETER", CloseCode.POLICY_VIOLATION),
    "unsupported_language": ("INVALID_QUERY_PARAMETER", CloseCode.POLICY_VIOLATION),
    "unsupported_encoding": ("INVALID_QUERY_PARAMETER", CloseCode.POLICY_VIOLATION),
    "undecodable_audio": ("DATA-0000", CloseCode.POLICY_VIOLATION),
    "metadata_timeout": ("NET-0001", CloseCode.INTERNAL_ERROR),
    "idle_timeout": ("NET-0001", CloseCode.INTERNAL_ERROR),
    "frame_too_large": ("DATA-0000", CloseCode.MESSAGE_TOO_BIG),
    "overloaded": ("TOO_MANY_REQUESTS", CloseCode.TRY_AGAIN_LATER),
    "internal_error": ("INTERNAL_SERVER_ERROR", CloseCode.INTERNAL_ERROR),
}


def wants_deepgram(query: Iterable[tuple[str, str]]) -> bool:
    """Deepgram's clients name at least one of its parameters, or its path (``_p``)."""
    for key, value in query:
        if key in QUERY_KEYS or (key == "_p" and value.rstrip("/").endswith(LISTEN_PATH)):
            return True
    return False


def invalid(message: str) -> ProtocolError:
    return ProtocolError("invalid_query", message)


# -- the query string ------------------------------------------------------------------------------
@dataclass
class DeepgramOptions:
    model: str = "base"
    language: str = "en"  # Whisper's code; "auto" for Deepgram's "multi" / detect_language
    multi: bool = False  # language=multi: each result names its language
    language_hints: list[str] = field(default_factory=list)
    encoding: str | None = None  # None: containerized audio (a WAV header)
    sample_rate: int | None = None
    channels: int = 1
    interim_results: bool = False
    punctuate: bool = False
    smart_format: bool = False
    filler_words: bool = False
    dictation: bool = False
    numerals: bool = False
    endpointing_ms: int | None = DEFAULT_ENDPOINTING_MS  # None: endpointing off
    utterance_end_ms: int | None = None
    vad_events: bool = False
    keyterms: list[str] = field(default_factory=list)
    replace: list[tuple[str, str]] = field(default_factory=list)
    search: list[str] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)  # given, cannot change the result
    turns: TurnOptions | None = None  # eot_threshold / eot_timeout_ms: end-of-turn detection

    @property
    def formatted(self) -> bool:
        """Punctuation and capitals in the transcript (``punctuate`` or ``smart_format``)."""
        return self.punctuate or self.smart_format or self.dictation


def _bool(key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0", ""):
        return False
    raise invalid(f"{key}: expected true or false, got {value!r}")


def _int(key: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise invalid(f"{key}: expected an integer, got {value!r}") from None
    if not low <= number <= high:
        raise invalid(f"{key}: {number} is outside {low}..{high}")
    return number


def _float(key: str, value: str, low: float, high: float) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        raise invalid(f"{key}: expected a number, got {value!r}") from None
    if not low <= number <= high:
        raise invalid(f"{key}: {number} is outside {low}..{high}")
    return number


def _pairs(value: str, last: bool = False) -> tuple[str, str]:
    """``a:b`` as (a, b), split at the first colon (``last``: the last one); ``a`` as (a, "")."""
    term, sep, rest = value.rpartition(":") if last else value.partition(":")
    return (term, rest) if sep else (value, "")


def _language(value: str) -> tuple[str, bool]:
    """A BCP-47 tag as Whisper's code ("en-US" -> "en"); "multi": detect, per result."""
    tag = value.strip().lower()
    if tag == "multi":
        return "auto", True
    primary = tag.split("-")[0]
    if not re.fullmatch(r"[a-z]{2,3}", primary):
        raise invalid(f"language: {value!r} is not a BCP-47 language tag")
    return primary, False


def parse_query(query: Iterable[tuple[str, str]]) -> DeepgramOptions:
    """Deepgram's query parameters as options; raises ProtocolError (``invalid_query``) for a
    value Deepgram would refuse or a feature this server cannot honour."""
    o = DeepgramOptions()
    keywords: list[str] = []
    multichannel = False
    for key, value in query:
        if key == "model":
            o.model = value
        elif key == "language":
            o.language, o.multi = _language(value)
        elif key == "detect_language":
            if _bool(key, value):
                o.language, o.multi = "auto", True
        elif key == "language_hint":
            o.language_hints += [_language(v)[0] for v in value.split(",") if v.strip()]
        elif key == "encoding":
            o.encoding = value.strip().lower()
        elif key == "sample_rate":
            o.sample_rate = _int(key, value, 1, 10**6)
        elif key == "channels":
            o.channels = _int(key, value, 1, MAX_CHANNELS)
        elif key == "multichannel":
            multichannel = _bool(key, value)  # one channel: nothing to transcribe on its own
        elif key in ("interim_results", "punctuate", "smart_format", "filler_words", "dictation",
                     "numerals", "vad_events"):  # fmt: skip
            setattr(o, key, _bool(key, value))
        elif key == "endpointing":
            lowered = value.strip().lower()
            if lowered == "false":
                o.endpointing_ms = None
            elif lowered == "true":
                o.endpointing_ms = DEFAULT_ENDPOINTING_MS
            else:
                o.endpointing_ms = _int(key, value, 0, MAX_ENDPOINTING_MS) or None
        elif key == "utterance_end_ms":
            o.utterance_end_ms = _int(key, value, 1, MAX_ENDPOINTING_MS)
        elif key == "eot_threshold":
            o.turns = replace(
                o.turns or TurnOptions(), threshold=_float(key, value, *EOT_THRESHOLD)
            )
        elif key == "eot_timeout_ms":
            o.turns = replace(
                o.turns or TurnOptions(), timeout_ms=_int(key, value, *EOT_TIMEOUT_MS)
            )
        elif key == "keyterm":
            o.keyterms += [value.strip()] if value.strip() else []
        elif key == "keywords":
            term, boost = _pairs(value, last=True)
            try:
                weight = float(boost) if boost else 1.0
            except ValueError:
                term, weight = value, 1.0  # "a:b" with no number: all of it is the keyword
            if term.strip() and weight > 0:
                keywords.append(term.strip())  # a negative boost (suppress) has no prompt form
        elif key == "replace":
            term, replacement = _pairs(value)
            if term.strip():
                o.replace.append((term.strip(), replacement.strip()))
        elif key == "search":
            o.search += [value.strip()] if value.strip() else []
        elif key == "extra":
            name, extra_value = _pairs(value)
            o.extra[name] = extra_value
        elif key in ("profanity_filter", "detect_entities", "diarize"):
            if _bool(key, value):
                raise invalid(f"{key}=true is not supported by this Whisper deployment")
        elif key == "diarize_model":
            raise invalid("diarize_model: speaker diarization is not supported here")
        elif key == "redact":
            if value.strip().lower() != "false":
                raise invalid(f"redact={value} is not supported by this Whisper deployment")
        elif key == "callback":
            raise invalid("callback: results are only sent on this WebSocket")
        elif key in ("tag", "mip_opt_out", "version", "no_delay", "callback_method"):
            o.ignored.append(key)
        elif key in QUERY_KEYS:  # pragma: no cover - every key is handled above
            o.ignored.append(key)
        # anything else (``_p``, an API token, an unknown key) is not Deepgram's: ignored
    if multichannel and o.channels > 1:
        raise invalid("multichannel=true: each channel transcribed on its own is not supported")
    if o.encoding is not None and o.encoding not in AUDIO_ENCODINGS:
        supported = ", ".join(sorted(AUDIO_ENCODINGS))
        raise ProtocolError(
            "unsupported_encoding",
            f"encoding {o.encoding!r} is not supported here; use one of {supported}, or no "
            "encoding for WAV",
        )
    if o.encoding is not None and o.sample_rate is None:
        raise invalid("sample_rate is required when encoding is set")
    o.keyterms = list(dict.fromkeys(o.keyterms + keywords))
    return o


def prompt_for(terms: list[str]) -> str:
    """Key terms as Whisper's prompt: text before the audio's own, which Whisper then spells the
    same way (what faster-whisper's ``hotwords`` does). Measured with tiny.en on samples/real
    (docs/stt.md): each clip's misspelt word fixed by its term; as "Glossary: a, b." the terms
    disturb the other clips least (corpus WER 2.5 % without terms, 3.3 % with four relevant
    ones, 4.2 % with four unrelated ones; "a, b." alone: 4.4 % / 5.8 %)."""
    return f"Glossary: {', '.join(terms)}." if terms else ""


# -- audio ------------------------------------------------------------------------------------------
# Deepgram's encodings this server decodes: (bytes per sample, decoder to float or None: the
# core decodes it as it comes when mono).
AUDIO_ENCODINGS = {
    "linear16": 2,
    "linear32": 4,
    "mulaw": 1,
    "alaw": 1,
    "float32": 4,  # not a Deepgram name; a WAV header's IEEE float
}
PASSTHROUGH = {"linear16": "pcm_s16le", "mulaw": "pcm_mulaw"}  # mono: the core decodes these


def _to_float(encoding: str, data: bytes) -> np.ndarray:
    if encoding == "linear16":
        return int16_to_float(np.frombuffer(data, dtype="<i2"))
    if encoding == "mulaw":
        return int16_to_float(mulaw_decode(data))
    if encoding == "alaw":
        return int16_to_float(alaw_decode(data))
    if encoding == "linear32":
        return s32le_to_float(data)
    return f32le_to_float(data)


class Transcoder:
    """Deepgram's audio -> an encoding the core decodes: mono linear16 and mulaw as they are,
    anything else (alaw, linear32, several channels: mixed down) as float32."""

    def __init__(self, encoding: str, channels: int) -> None:
        self.encoding = encoding
        self.channels = channels
        self.core_encoding = PASSTHROUGH.get(encoding) if channels == 1 else None
        self.core_encoding = self.core_encoding or "pcm_f32le"
        self._frame = AUDIO_ENCODINGS[encoding] * channels
        self._rest = b""
        self._bytes = 0  # received

    @property
    def frames(self) -> int:
        """Sample frames received (per channel)."""
        return self._bytes // self._frame

    def feed(self, data: bytes) -> bytes:
        self._bytes += len(data)
        if self.core_encoding != "pcm_f32le":
            return data
        data = self._rest + data
        usable = len(data) - len(data) % self._frame
        self._rest = data[usable:]
        samples = _to_float(self.encoding, data[:usable])
        if self.channels > 1:
            samples = samples.reshape(-1, self.channels).mean(axis=1, dtype=np.float32)
        return samples.astype("<f4").tobytes()


@dataclass(frozen=True)
class WavFormat:
    encoding: str
    sample_rate: int
    channels: int
    data_offset: int  # where the samples start in the bytes read so far


WAV_FORMATS = {(1, 16): "linear16", (1, 32): "linear32", (3, 32): "float32", (6, 8): "alaw",
               (7, 8): "mulaw"}  # fmt: skip


def parse_wav_header(data: bytes) -> WavFormat | None:
    """A WAV header's format once its ``data`` chunk begins (None: not all there yet); raises
    ProtocolError (``undecodable_audio``) for anything else, as Deepgram's DATA-0000."""

    def undecodable(why: str) -> ProtocolError:
        return ProtocolError(
            "undecodable_audio",
            f"the payload cannot be decoded as audio ({why}); send WAV, or raw audio with "
            "encoding and sample_rate",
        )

    if len(data) < 12:
        if not b"RIFF".startswith(data[:4]):
            raise undecodable("no encoding given and no WAV header")
        return None
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise undecodable("no encoding given and no WAV header")
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = pos + 8
        if chunk == b"data":
            if fmt is None:
                raise undecodable("WAV data before its fmt chunk")
            return WavFormat(*fmt, data_offset=body)
        if chunk == b"fmt ":
            if body + 16 > len(data):
                return None

            tag, channels = _le(data, body, 2), _le(data, body + 2, 2)
            rate, bits = _le(data, body + 4, 4), _le(data, body + 14, 2)
            if tag == 0xFFFE and body + 26 <= len(data):  # WAVE_FORMAT_EXTENSIBLE
                tag = _le(data, body + 24, 2)
            encoding = WAV_FORMATS.get((tag, bits))
            if encoding is None or not 1 <= channels <= MAX_CHANNELS or rate <= 0:
                raise undecodable(f"WAV format {tag} with {bits} bits is not supported")
            fmt = (encoding, rate, channels)
        pos = body + size + size % 2
    if len(data) > MAX_HEADER_BYTES:
        raise undecodable("no WAV data chunk")
    return None


def _le(data: bytes, at: int, size: int) -> int:
    return int.from_bytes(data[at : at + size], "little")


# -- transcripts as Deepgram words ------------------------------------------------------------------
@dataclass
class Word:
    punctuated: str
    start: float
    end: float
    confidence: float

    @property
    def plain(self) -> str:
        """Deepgram's ``word``: lower case, no punctuation around it."""
        return re.sub(r"^[^\w']+|[^\w']+$", "", self.punctuated.lower()).strip("'")


def _words(event: Transcription) -> list[Word]:
    words: list[Word] = []
    for seg in event.result.segments:
        if seg.words:
            words += [Word(w.word.strip(), w.start, w.end, float(w.prob)) for w in seg.words]
            continue
        # No word timings (a partial): the segment's span shared out by length.
        parts = seg.text.split()
        confidence = math.exp(seg.avg_logprob) if seg.avg_logprob is not None else 0.0
        total = sum(len(p) + 1 for p in parts) or 1
        at, span = float(seg.start), max(float(seg.end) - float(seg.start), 0.0)
        for part in parts:
            length = span * (len(part) + 1) / total
            words.append(Word(part, at, at + length, min(max(confidence, 0.0), 1.0)))
            at += length
    kept: list[Word] = []
    for word in words:  # a token that is only punctuation joins the word before it
        if word.plain or not kept:
            if word.plain:
                kept.append(word)
            continue
        kept[-1].punctuated += word.punctuated
        kept[-1].end = max(kept[-1].end, word.end)
    return kept


def _drop_fillers(words: list[Word]) -> list[Word]:
    kept: list[Word] = []
    capitalise = False
    for word in words:
        if word.plain in FILLERS:
            capitalise = capitalise or word.punctuated[:1].isupper()
            continue
        if capitalise and word.punctuated[:1].islower():
            word.punctuated = word.punctuated[:1].upper() + word.punctuated[1:]
        capitalise = False
        kept.append(word)
    return kept


def _match(words: list[Word], at: int, phrase: tuple[str, ...]) -> bool:
    return tuple(w.plain for w in words[at : at + len(phrase)]) == phrase


def _dictate(words: list[Word]) -> list[Word]:
    out: list[Word] = []
    i = 0
    while i < len(words):
        for phrase, mark in DICTATION.items():
            if _match(words, i, phrase) and out:
                out[-1].punctuated = out[-1].punctuated.rstrip(",.;:!?") + mark
                i += len(phrase)
                break
        else:
            out.append(words[i])
            i += 1
    return out


def _replace(words: list[Word], rules: list[tuple[str, str]]) -> list[Word]:
    for term, replacement in rules:
        phrase = tuple(Word(t, 0, 0, 0).plain for t in term.split())
        out: list[Word] = []
        i = 0
        while i < len(words):
            if phrase and _match(words, i, phrase):
                span = words[i : i + len(phrase)]
                i += len(phrase)
                if replacement:
                    tail = re.search(r"[^\w']*$", span[-1].punctuated).group(0)
                    confidence = min(w.confidence for w in span)
                    out.append(Word(replacement + tail, span[0].start, span[-1].end, confidence))
            else:
                out.append(words[i])
                i += 1
        words = out
    return words


def _search(words: list[Word], queries: list[str]) -> list[dict[str, Any]]:
    results = []
    for query in queries:
        phrase = tuple(Word(t, 0, 0, 0).plain for t in query.split())
        hits = []
        for i in range(len(words)):
            if phrase and _match(words, i, phrase):
                span = words[i : i + len(phrase)]
                hits.append({
                    "confidence": round(min(w.confidence for w in span), 4),
                    "start": round(span[0].start, 3),
                    "end": round(span[-1].end, 3),
                    "snippet": " ".join(w.plain for w in span),
                })  # fmt: skip
        results.append({"query": query, "hits": hits})
    return results


# -- the codec --------------------------------------------------------------------------------------
class DeepgramCodec(Codec):
    name = "deepgram"

    def __init__(
        self,
        core: Any,
        query: Iterable[tuple[str, str]],
        *,
        model_name: str = "whisper",
        request_id: str | None = None,
        created: str | None = None,
    ) -> None:
        super().__init__(core)
        self.query = list(query)
        self.model_name = model_name
        self.request_id = request_id or str(uuid.uuid4())
        self.created = created or datetime.now(UTC).isoformat(timespec="milliseconds").replace(
            "+00:00", "Z"
        )
        self.model_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"whisper-streaming/{model_name}"))
        self.options = DeepgramOptions()
        self._transcoder: Transcoder | None = None
        self._header = b""  # a WAV header still coming in (encoding omitted)
        self._sha = hashlib.sha256()
        self._closing = False

    # -- decoding ------------------------------------------------------------------------------
    def start(self, now: float) -> list[Output]:
        self.options = o = parse_query(self.query)
        if o.ignored:
            logger.info("deepgram parameters accepted without effect: %s", sorted(set(o.ignored)))
        if o.encoding is None:
            return []  # configured once the WAV header is in
        return self._configure(o.encoding, o.sample_rate, o.channels)

    def _configure(self, encoding: str, sample_rate: int, channels: int) -> list[Output]:
        o = self.options
        self._transcoder = Transcoder(encoding, channels)
        try:
            config = SessionConfig(
                vad=VadParams(
                    min_silence_duration_ms=min(
                        max(o.endpointing_ms or 0, MIN_ENDPOINTING_MS), MAX_ENDPOINTING_MS
                    )
                ),
                streaming=StreamingParams(
                    encoding=self._transcoder.core_encoding,
                    sample_rate=sample_rate,
                    enable_partial_transcripts=o.interim_results,
                    partial_transcript_interval_s=PARTIAL_INTERVAL_S,
                ),
                whisper=WhisperParams(
                    audio_language=o.language,
                    language_options=o.language_hints if o.multi else [],
                    prompt=prompt_for(o.keyterms)[:2000],
                    show_word_timestamps=True,  # every Deepgram final has timed words
                ),
                shape="deepgram",
            )
        except ValidationError as exc:
            raise invalid(describe_validation_error(exc, "query", limit=3)) from None
        events = EventOptions(
            speech_started=o.vad_events,
            utterance_end_ms=o.utterance_end_ms,
            idle_timeout_s=IDLE_TIMEOUT_S,
            turns=o.turns,
        )
        return self.core.configure(config, events)

    def binary(self, data: bytes, now: float) -> list[Output]:
        if not data:
            return self._close_stream(now)  # Deepgram's older clients close with an empty frame
        self._sha.update(data)
        if self._transcoder is None:
            self._header += data
            wav = parse_wav_header(self._header)
            if wav is None:
                return []
            outputs = self._configure(wav.encoding, wav.sample_rate, wav.channels)
            data, self._header = self._header[wav.data_offset :], b""
            if not data:
                return outputs
            return outputs + self.core.audio(self._transcoder.feed(data), now)
        return self.core.audio(self._transcoder.feed(data), now)

    def text(self, text: str, now: float) -> list[Output]:
        kind, message = control(text)
        if kind == "KeepAlive":
            return self.core.keep_alive(now)
        if kind == "Finalize":
            return self.core.finalize(now) if self.core.config is not None else []
        if kind == "CloseStream":
            return self._close_stream(now)
        if kind == "Configure":
            return self._configure_message(message)
        return [Send(error_frame("SchemaError", "unknown or malformed control message", text))]

    def _close_stream(self, now: float) -> list[Output]:
        outputs: list[Output] = []
        if self.core.config is None:  # no audio came (or only part of a WAV header)
            outputs = self._configure("linear16", 16000, 1)
            self._transcoder.channels = 0  # Deepgram's Metadata for no audio: 0 channels
        return outputs + self.core.end_audio(now)

    def _configure_message(self, message: dict[str, Any]) -> list[Output]:
        """Deepgram's mid-stream Configure: key terms (the prompt) and formatting features."""
        keyterms = message.get("keyterms")
        features = message.get("features") or {}
        switchable = {"punctuate", "smart_format", "filler_words", "dictation", "numerals"}
        bad = (keyterms is not None and not (
            isinstance(keyterms, list) and all(isinstance(k, str) for k in keyterms)
        )) or not isinstance(features, dict)  # fmt: skip
        unknown = sorted(set(features) - switchable) if isinstance(features, dict) else []
        if bad or unknown or not all(isinstance(v, bool) for v in features.values()):
            what = f"features {unknown} cannot be switched here" if unknown else "bad Configure"
            return [Send({"type": "ConfigureFailure", "request_id": self.request_id,
                          "code": "CONFIGURE_INTERNAL_ERROR", "description": what})]  # fmt: skip
        for name, value in features.items():
            setattr(self.options, name, value)
        answer: dict[str, Any] = {"type": "ConfigureSuccess", "request_id": self.request_id}
        outputs: list[Output] = []
        if keyterms is not None:
            self.options.keyterms = [k.strip() for k in keyterms if k.strip()]
            outputs += self.core.set_prompt(prompt_for(self.options.keyterms)[:2000])
            answer["keyterms"] = self.options.keyterms
        return [*outputs, Send(answer)]

    # -- encoding ------------------------------------------------------------------------------
    def encode(self, event: Event, now: float) -> list[Command]:
        if isinstance(event, Transcription):
            return [Send(self.results(event))]
        if isinstance(event, SpeechStarted):
            return [Send({"type": "SpeechStarted", "channel": [0, 1],
                          "timestamp": event.timestamp_s})]  # fmt: skip
        if isinstance(event, UtteranceEnd):
            return [Send({"type": "UtteranceEnd", "channel": [0, 1],
                          "last_word_end": event.last_word_end_s})]  # fmt: skip
        if isinstance(event, Finalized):
            if event.answered:
                return []
            return [Send(self._results(event.position_s, 0.0, "", 0.0, [], True, False, True))]
        if isinstance(event, FinalFailed):
            return [Send(error_frame("FINAL_FAILED", f"utterance {event.num} failed; the "
                                     "session continues"))]  # fmt: skip
        if isinstance(event, Ended):
            return self._ended(event.error)
        return []  # EndAudio, Health: Deepgram has no such frames

    def results(self, event: Transcription) -> dict[str, Any]:
        o = self.options
        words = _words(event)
        if not o.filler_words:
            words = _drop_fillers(words)
        if o.dictation:
            words = _dictate(words)
        if o.replace:
            words = _replace(words, o.replace)
        transcript = " ".join(w.punctuated if o.formatted else w.plain for w in words)
        confidence = sum(w.confidence for w in words) / len(words) if words else 0.0
        speech_final = (
            event.is_final and event.cause is FinalCause.PAUSE and o.endpointing_ms is not None
        )
        if event.end_of_turn is not None:  # eot_*: the turn model decides, not the pause alone
            speech_final = event.end_of_turn
        message = self._results(
            event.offset_s,
            event.audio_s,
            transcript,
            confidence,
            words,
            event.is_final,
            speech_final,
            event.cause is FinalCause.FINALIZE,
        )
        alternative = message["channel"]["alternatives"][0]
        if o.multi:
            alternative["languages"] = [event.result.language]
        if o.search:
            message["channel"]["search"] = _search(words, o.search)
        return message

    def _results(
        self,
        start: float,
        duration: float,
        transcript: str,
        confidence: float,
        words: list[Word],
        is_final: bool,
        speech_final: bool,
        from_finalize: bool,
    ) -> dict[str, Any]:
        formatted = self.options.formatted

        def word(w: Word) -> dict[str, Any]:
            out = {"word": w.plain, "start": round(w.start, 3), "end": round(w.end, 3),
                   "confidence": round(w.confidence, 4)}  # fmt: skip
            if formatted:
                out["punctuated_word"] = w.punctuated
            return out

        metadata: dict[str, Any] = {
            "request_id": self.request_id,
            "model_info": self._model_info(),
            "model_uuid": self.model_uuid,
        }
        if self.options.extra:
            metadata["extra"] = dict(self.options.extra)
        return {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": round(duration, 3),
            "start": round(start, 3),
            "is_final": is_final,
            "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {
                "alternatives": [
                    {
                        "transcript": transcript,
                        "confidence": round(confidence, 4),
                        "words": [word(w) for w in words],
                    }
                ]
            },
            "metadata": metadata,
        }

    def _model_info(self) -> dict[str, str]:
        return {"name": self.model_name, "version": "latest", "arch": "whisper"}

    def metadata(self) -> dict[str, Any]:
        """Deepgram's summary at a normal end (after CloseStream)."""
        t = self._transcoder
        duration = (
            t.frames / self.core.config.streaming.sample_rate if t and self.core.config else 0
        )
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": self._sha.hexdigest(),
            "created": self.created,
            "duration": round(duration, 3),
            "channels": t.channels if t else 0,
            "models": [self.model_uuid],
            "model_info": {self.model_uuid: self._model_info()},
        }

    def _ended(self, error: ProtocolError | None) -> list[Command]:
        if error is None:
            return [Send(self.metadata()), Close(CloseCode.NORMAL)]
        variant, code = ERRORS.get(error.error_type, (error.error_type.upper(), error.close_code))
        return [Send(error_frame(variant, error.message)), Close(code, variant)]

    def refusal(self, error: ProtocolError) -> list[Command]:
        return self._ended(error)


def control(text: str) -> tuple[str | None, Any]:
    """A control frame's ``type`` (None: not JSON, or no object with one) and its JSON."""
    try:
        message = load_json(text)
    except ValueError:
        return None, None
    return (message.get("type") if isinstance(message, dict) else None), message


def error_frame(variant: str, description: str, message: str | None = None) -> dict[str, Any]:
    """Deepgram's ``Error`` message (deepgram-sdk's ``ListenV1Error``)."""
    frame: dict[str, Any] = {"type": "Error", "variant": variant, "description": description}
    if message is not None:
        frame["message"] = message[:1000]
    return frame
