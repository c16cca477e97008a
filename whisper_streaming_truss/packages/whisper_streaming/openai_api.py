"""OpenAI's transcription request (``POST /v1/audio/transcriptions``) on the HTTP flavour
(``config_http.yaml``): the multipart form parsed and checked, the file transcribed
(``file_transcription``), the answer written in each ``response_format`` as OpenAI writes it, and
every refusal in OpenAI's error shape, ``{"error": {"message", "type", "param", "code"}}``.

Form fields: ``file`` (any container and codec FFmpeg reads), ``model`` (required, any name: the
deployment has one model), ``language`` (ISO-639-1; omitted: detected), ``prompt``,
``temperature`` (0-1; 0: beam search with Whisper's temperature fallback), ``response_format``
(``json``, ``text``, ``srt``, ``vtt``, ``verbose_json``), ``timestamp_granularities[]``
(``segment``, ``word``; ``word`` only with ``verbose_json``, as OpenAI), ``stream`` (server-sent
``transcript.text.delta`` events per chunk, then ``transcript.text.done``). ``chunking_strategy``
is accepted and ignored (files are always cut by VAD); ``include[]=logprobs`` is refused, as
OpenAI refuses it for Whisper.

Everything but ``respond`` is pure: no model, no I/O.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import unicodedata
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from email.message import Message
from typing import Any

from .file_transcription import FileTranscript, TimedSegment, TimedWord

logger = logging.getLogger(__name__)

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GRANULARITIES = ("word", "segment")
TEXT_MEDIA_TYPE = "text/plain; charset=utf-8"
JSON_MEDIA_TYPE = "application/json"
MAX_PART_HEADERS_BYTES = 16 * 1024

# Whisper's language codes and the names verbose_json answers with (openai/whisper, MIT).
LANGUAGE_NAMES = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian",
    "ko": "korean", "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish",
    "pl": "polish", "ca": "catalan", "nl": "dutch", "ar": "arabic", "sv": "swedish",
    "it": "italian", "id": "indonesian", "hi": "hindi", "fi": "finnish", "vi": "vietnamese",
    "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay", "cs": "czech",
    "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian",
    "la": "latin", "mi": "maori", "ml": "malayalam", "cy": "welsh", "sk": "slovak",
    "te": "telugu", "fa": "persian", "lv": "latvian", "bn": "bengali", "sr": "serbian",
    "az": "azerbaijani", "sl": "slovenian", "kn": "kannada", "et": "estonian",
    "mk": "macedonian", "br": "breton", "eu": "basque", "is": "icelandic", "hy": "armenian",
    "ne": "nepali", "mn": "mongolian", "bs": "bosnian", "kk": "kazakh", "sq": "albanian",
    "sw": "swahili", "gl": "galician", "mr": "marathi", "pa": "punjabi", "si": "sinhala",
    "km": "khmer", "sn": "shona", "yo": "yoruba", "so": "somali", "af": "afrikaans",
    "oc": "occitan", "ka": "georgian", "be": "belarusian", "tg": "tajik", "sd": "sindhi",
    "gu": "gujarati", "am": "amharic", "yi": "yiddish", "lo": "lao", "uz": "uzbek",
    "fo": "faroese", "ht": "haitian creole", "ps": "pashto", "tk": "turkmen", "nn": "nynorsk",
    "mt": "maltese", "sa": "sanskrit", "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan",
    "tl": "tagalog", "mg": "malagasy", "as": "assamese", "tt": "tatar", "haw": "hawaiian",
    "ln": "lingala", "ha": "hausa", "ba": "bashkir", "jw": "javanese", "su": "sundanese",
    "yue": "cantonese",
}  # fmt: skip


class ApiError(Exception):
    """A refusal in OpenAI's error shape."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = "invalid_value",
        status: int = 400,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status
        self.type = type

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


UNDECODABLE_MESSAGE = "The audio file could not be decoded or its format is not supported."


# -- the request --------------------------------------------------------------------------------
@dataclass(frozen=True)
class FormPart:
    name: str
    data: memoryview  # of the request's body: an upload is not copied
    filename: str | None = None
    content_type: str | None = None


def _header_params(value: str, header: str) -> Message:
    message = Message()
    message[header] = value
    return message


def parse_multipart(body: bytes, content_type: str) -> list[FormPart]:
    """RFC 7578 multipart/form-data: the parts in order. Raises ApiError when the body is not
    one (a missing boundary, a part without headers' end or without a closing delimiter)."""
    header = _header_params(content_type or "", "content-type")
    if header.get_content_type() != "multipart/form-data":
        raise ApiError(
            "The request must be multipart/form-data (a file upload), "
            f"not {header.get_content_type() if content_type else 'without a Content-Type'}.",
            code="invalid_content_type",
        )
    boundary = header.get_param("boundary", header="content-type")
    if not isinstance(boundary, str) or not boundary or not boundary.isascii():
        raise ApiError("The multipart/form-data Content-Type has no (ASCII) boundary.")
    delimiter = b"--" + boundary.encode()
    malformed = ApiError("The multipart/form-data body could not be parsed.")
    position = body.find(delimiter)
    if position < 0:
        raise malformed
    parts = []
    while True:
        position += len(delimiter)
        if body[position : position + 2] == b"--":  # the closing delimiter
            return parts
        line_end = body.find(b"\n", position)
        if line_end < 0 or body[position:line_end].strip(b" \t\r"):
            raise malformed
        headers_start = line_end + 1
        headers_end = body.find(b"\r\n\r\n", headers_start, headers_start + MAX_PART_HEADERS_BYTES)
        if headers_end < 0:
            raise malformed
        data_start = headers_end + 4
        next_delimiter = body.find(b"\r\n" + delimiter, data_start)
        if next_delimiter < 0:
            raise malformed
        data = memoryview(body)[data_start:next_delimiter]
        parts.append(_part(body[headers_start:headers_end], data))
        position = next_delimiter + 2


def _part(raw_headers: bytes, data: memoryview) -> FormPart:
    headers: dict[str, str] = {}
    for line in raw_headers.decode("utf-8", "replace").split("\r\n"):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    disposition = _header_params(headers.get("content-disposition", ""), "content-disposition")
    name = disposition.get_param("name", header="content-disposition")
    if not isinstance(name, str):
        raise ApiError("A multipart/form-data part has no name.")
    filename = disposition.get_filename()
    return FormPart(name, data, filename, headers.get("content-type"))


@dataclass(frozen=True)
class TranscriptionRequest:
    file: memoryview
    filename: str | None
    model: str
    language: str | None
    prompt: str
    temperature: float
    response_format: str
    granularities: frozenset[str]
    stream: bool

    @property
    def words(self) -> bool:
        return "word" in self.granularities

    @property
    def segments(self) -> bool:
        """verbose_json's segments: unless only word timestamps were asked for (OpenAI's rule)."""
        return self.granularities != frozenset({"word"})


def _missing(name: str) -> ApiError:
    return ApiError(
        f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter"
    )


def _text(part: FormPart) -> str:
    try:
        return bytes(part.data).decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ApiError(f"'{part.name}' is not UTF-8 text.", param=part.name) from None


def _boolean(value: str, name: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0", ""):
        return False
    raise ApiError(f"'{value}' is not a valid boolean - '{name}'", param=name)


def parse_request(
    body: bytes,
    content_type: str,
    languages: Sequence[str],
    max_file_bytes: int | None = None,
) -> TranscriptionRequest:
    """The request's form, checked: an ApiError (400, 413) names the first bad parameter."""
    fields: dict[str, list[FormPart]] = {}
    for part in parse_multipart(body, content_type):
        fields.setdefault(part.name.removesuffix("[]"), []).append(part)
    files = fields.get("file")
    if not files:
        raise _missing("file")
    upload = files[0]
    if max_file_bytes is not None and len(upload.data) > max_file_bytes:
        raise ApiError(
            f"Maximum content size limit ({max_file_bytes}) exceeded ({len(upload.data)} bytes "
            "read).",
            param="file",
            code="file_too_large",
            status=413,
        )
    if not upload.data:
        raise ApiError(UNDECODABLE_MESSAGE, param="file")

    def one(name: str, default: str = "") -> str:
        parts = fields.get(name)
        return _text(parts[-1]) if parts else default

    model = one("model")
    if not model:
        raise _missing("model")
    language = one("language").lower() or None
    if language is not None and language not in languages:
        if language in LANGUAGE_NAMES:
            message = (
                f"Language '{language}' is not supported by this model (it transcribes "
                f"{', '.join(sorted(languages))})."
            )
        else:
            message = (
                f"Invalid language '{language}'. Language parameter must be specified in "
                "ISO-639-1 format."
            )
        raise ApiError(message, param="language")
    raw_temperature = one("temperature", "0")
    try:
        temperature = float(raw_temperature)
    except ValueError:
        raise ApiError(
            f"'{raw_temperature}' is not a valid number - 'temperature'", param="temperature"
        ) from None
    if not 0.0 <= temperature <= 1.0:
        raise ApiError(
            f"{raw_temperature} is not between 0 and 1 - 'temperature'", param="temperature"
        )
    response_format = one("response_format", "json") or "json"
    if response_format == "diarized_json":
        raise ApiError(
            "response_format 'diarized_json' needs a diarization model; this Whisper "
            f"deployment answers {', '.join(RESPONSE_FORMATS)}.",
            param="response_format",
        )
    if response_format not in RESPONSE_FORMATS:
        raise ApiError(
            f"'{response_format}' is not one of {list(RESPONSE_FORMATS)} - 'response_format'",
            param="response_format",
        )
    granularities = frozenset(_text(p) for p in fields.get("timestamp_granularities", []))
    unknown = sorted(granularities - set(GRANULARITIES))
    if unknown:
        raise ApiError(
            f"'{unknown[0]}' is not one of {list(GRANULARITIES)} - 'timestamp_granularities'",
            param="timestamp_granularities",
        )
    if "word" in granularities and response_format != "verbose_json":
        raise ApiError(
            "timestamp_granularities=['word'] needs response_format 'verbose_json'.",
            param="timestamp_granularities",
        )
    includes = {_text(p) for p in fields.get("include", [])} - {""}
    if includes:
        raise ApiError(
            f"include {sorted(includes)} is not supported by this model (Whisper returns no "
            "token logprobs).",
            param="include",
        )
    stream = _boolean(one("stream", "false"), "stream")
    if stream and response_format not in ("json", "text"):
        raise ApiError(
            f"stream is not supported with response_format '{response_format}' (json or text).",
            param="stream",
        )
    return TranscriptionRequest(
        file=upload.data,
        filename=upload.filename,
        model=model,
        language=language,
        prompt=one("prompt"),
        temperature=temperature,
        response_format=response_format,
        granularities=granularities,
        stream=stream,
    )


# -- the answer ---------------------------------------------------------------------------------
def format_timestamp(seconds: float, decimal_marker: str) -> str:
    """``HH:MM:SS,mmm`` (srt) or ``HH:MM:SS.mmm`` (vtt): Whisper's writers, hours always."""
    milliseconds = round(max(seconds, 0.0) * 1000.0)
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    secs, milliseconds = divmod(milliseconds, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{milliseconds:03d}"


def _cue_text(text: str) -> str:
    return text.strip().replace("-->", "->")


def to_srt(segments: Sequence[TimedSegment]) -> str:
    return "".join(
        f"{i}\n{format_timestamp(s.start, ',')} --> {format_timestamp(s.end, ',')}\n"
        f"{_cue_text(s.text)}\n\n"
        for i, s in enumerate(segments, start=1)
    )


def to_vtt(segments: Sequence[TimedSegment]) -> str:
    return "WEBVTT\n\n" + "".join(
        f"{format_timestamp(s.start, '.')} --> {format_timestamp(s.end, '.')}\n"
        f"{_cue_text(s.text)}\n\n"
        for s in segments
    )


def _usage(duration_s: float) -> dict[str, Any]:
    return {"type": "duration", "seconds": math.ceil(duration_s)}


def _seconds(value: float) -> float:
    return round(value, 3)


def bare_word(word: str) -> str:
    """A word as OpenAI's ``words`` list writes it: without the punctuation Whisper attaches
    ("Americans," -> "Americans"; an apostrophe inside a word stays)."""
    start, end = 0, len(word)
    while start < end and unicodedata.category(word[start]).startswith("P"):
        start += 1
    while end > start and unicodedata.category(word[end - 1]).startswith("P"):
        end -= 1
    bare = word[start:end]
    return bare if any(c.isalnum() for c in bare) else ""  # "-->", "..." are no words


def words_of(segments: Sequence[TimedSegment]) -> list[TimedWord]:
    out = []
    for segment in segments:
        for w in segment.words:
            bare = bare_word(w.word)
            if bare:
                out.append(TimedWord(bare, w.start, w.end))
    return out


def verbose_json(request: TranscriptionRequest, transcript: FileTranscript) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": LANGUAGE_NAMES.get(transcript.language, transcript.language),
        "duration": _seconds(transcript.duration_s),
        "text": transcript.text,
    }
    if request.segments:
        body["segments"] = [
            {
                "id": i,
                "seek": s.seek,
                "start": _seconds(s.start),
                "end": _seconds(s.end),
                "text": " " + s.text,
                "tokens": s.tokens,
                "temperature": s.temperature,
                "avg_logprob": s.avg_logprob,
                "compression_ratio": s.compression_ratio,
                "no_speech_prob": s.no_speech_prob,
            }
            for i, s in enumerate(transcript.segments)
        ]
    if request.words:
        body["words"] = [
            {"word": w.word, "start": _seconds(w.start), "end": _seconds(w.end)}
            for w in words_of(transcript.segments)
        ]
    body["usage"] = _usage(transcript.duration_s)
    return body


def render(request: TranscriptionRequest, transcript: FileTranscript) -> tuple[bytes, str]:
    """The response body and its media type for the request's response_format."""
    fmt = request.response_format
    if fmt == "json":
        body = {"text": transcript.text, "usage": _usage(transcript.duration_s)}
        return _json(body), JSON_MEDIA_TYPE
    if fmt == "verbose_json":
        return _json(verbose_json(request, transcript)), JSON_MEDIA_TYPE
    if fmt == "text":
        text = transcript.text + "\n"
    elif fmt == "srt":
        text = to_srt(transcript.segments)
    else:
        text = to_vtt(transcript.segments)
    return text.encode(), TEXT_MEDIA_TYPE


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()


def sse(event: dict[str, Any]) -> bytes:
    return b"data: " + _json(event) + b"\n\n"


# -- the endpoint -------------------------------------------------------------------------------
DISCONNECT_POLL_S = 0.5  # how often a non-streamed request looks for its client


async def respond(request: Any, scheduler: Any, settings: Any) -> Any:
    """One OpenAI transcription request on the Truss server: the raw Starlette request in, a
    Starlette response out. Refusals are 4xx in OpenAI's shape, a model failure a 500 in it; a
    client that leaves stops its transcription (its queued chunks are dropped)."""
    from starlette.responses import JSONResponse, Response, StreamingResponse

    from .file_transcription import (
        AudioTooLong,
        AudioTooShort,
        FileOptions,
        FileTranscriber,
        UndecodableAudio,
    )
    from .metrics import FILE_AUDIO_SECONDS, FILE_REQUESTS

    # The scheduler's stream id: one per request, whatever id headers a client sends.
    request_id = f"http-{uuid.uuid4().hex[:12]}"
    chunks = None
    try:
        parsed = parse_request(
            await request.body(),
            request.headers.get("content-type", ""),
            scheduler.engine.supported_languages,
            max_file_bytes=settings.max_file_mb * 1024 * 1024,
        )
        options = FileOptions(
            language=parsed.language,
            prompt=parsed.prompt,
            temperature=parsed.temperature,
            word_timestamps=parsed.words,
            beam_size=settings.whisper_beam_width,
            max_audio_s=settings.max_file_audio_s,
        )
        transcriber = FileTranscriber(
            scheduler, options, request_id, window=2 * settings.whisper_max_batch
        )
        chunks = transcriber.chunks(parsed.file)
        if parsed.stream:
            # The first chunk (or the end) before the status line: what cannot be decoded is a
            # 400, never a stream cut short.
            first = await anext(chunks, None)
            FILE_REQUESTS.labels("ok").inc()
            events = _events(first, chunks, transcriber, request_id)
            chunks = None  # the stream closes them
            return StreamingResponse(events, media_type="text/event-stream")
        segments = await _unless_client_leaves(_collect(chunks), request)
        if segments is None:
            logger.info("request %s: the client left; transcription stopped", request_id)
            FILE_REQUESTS.labels("client_gone").inc()
            return Response(status_code=499)
    except ApiError as exc:
        FILE_REQUESTS.labels("refused").inc()
        return JSONResponse(exc.body(), status_code=exc.status)
    except (UndecodableAudio, AudioTooShort, AudioTooLong) as exc:
        logger.info("request %s refused: %s", request_id, exc)
        FILE_REQUESTS.labels("refused").inc()
        return JSONResponse(_audio_error(exc, settings).body(), status_code=400)
    except Exception:
        logger.exception("request %s failed", request_id)
        FILE_REQUESTS.labels("failed").inc()
        return JSONResponse(_server_error().body(), status_code=500)
    finally:
        if chunks is not None:
            await chunks.aclose()  # queued chunks of a request that ends early are dropped
    FILE_REQUESTS.labels("ok").inc()
    FILE_AUDIO_SECONDS.inc(transcriber.duration_s)
    language = transcriber.language or "en"
    body, media_type = render(parsed, FileTranscript(segments, transcriber.duration_s, language))
    return Response(body, media_type=media_type)


async def _collect(chunks: AsyncIterator[Any]) -> list[TimedSegment]:
    segments: list[TimedSegment] = []
    async for chunk in chunks:
        segments += chunk.segments
    return segments


async def _unless_client_leaves(work: Any, request: Any) -> Any:
    """``work``'s result, or None once the client has disconnected (``work`` is cancelled):
    the Truss server does not cancel a request whose client left, and an hour of audio is
    minutes of the worker's time."""

    async def disconnected() -> None:
        while True:
            if await request.is_disconnected():
                return
            await asyncio.sleep(DISCONNECT_POLL_S)

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return None if task.cancelled() else task.result()


async def _events(
    first: Any, chunks: AsyncIterator[Any], transcriber: Any, request_id: str
) -> AsyncIterator[bytes]:
    """``transcript.text.delta`` per chunk with text, then ``transcript.text.done``; a client
    that leaves ends it (Starlette cancels the stream), and its queued chunks are dropped."""
    from .metrics import FILE_AUDIO_SECONDS

    texts: list[str] = []
    pending = [first] if first is not None else []
    try:
        while True:
            for chunk in pending:
                if chunk.text:
                    delta = (" " if texts else "") + chunk.text
                    texts.append(chunk.text)
                    yield sse({"type": "transcript.text.delta", "delta": delta})
            chunk = await anext(chunks, None)
            if chunk is None:
                break
            pending = [chunk]
        FILE_AUDIO_SECONDS.inc(transcriber.duration_s)
        yield sse({"type": "transcript.text.done", "text": " ".join(texts)})
    except Exception as exc:  # the status line went out already: an error event ends it
        logger.warning("request %s failed mid-stream: %s", request_id, exc)
        yield sse({"type": "error", "error": _server_error().body()["error"]})
    finally:
        await chunks.aclose()


def _audio_error(exc: Exception, settings: Any) -> ApiError:
    from .file_transcription import MIN_AUDIO_S, AudioTooLong, AudioTooShort

    if isinstance(exc, AudioTooShort):
        return ApiError(
            f"Audio file is too short. Minimum audio length is {MIN_AUDIO_S} seconds.",
            param="file",
            code="audio_too_short",
        )
    if isinstance(exc, AudioTooLong):
        return ApiError(
            f"Audio file is too long. Maximum audio length is {settings.max_file_audio_s:g} "
            "seconds.",
            param="file",
            code="audio_too_long",
        )
    return ApiError(UNDECODABLE_MESSAGE, param="file")


def _server_error() -> ApiError:
    return ApiError(
        "The server had an error while processing your request.",
        code=None,
        status=500,
        type="server_error",
    )
